"""Answer and code extraction rules (documented, unit-tested).

GSM8K final number:
  1. If the text contains `####`, take the first number after the last `####`.
  2. Otherwise take the last number in the text.
  Numbers may carry a sign, thousands separators (`1,234`), decimals and surrounding units or
  currency (`$12.50`, `45 cm`); commas are removed, a trailing `.0…` is dropped, so `12.0` == `12`.
  No number → None (scored wrong).
HumanEval completion:
  1. If the output has a fenced code block, take the first block (```python or ```).
  2. Cut at the first stop sequence at line start: `\\ndef `, `\\nclass `, `\\nif __name__`,
     `\\nprint(`, `\\n#` (top-level code after the function body).
  A fenced block that redefines the whole function is kept as the program; otherwise the
  completion is appended to the prompt.
"""

from __future__ import annotations

import re

_NUM = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def normalise_number(text: str) -> str | None:
    text = text.replace(",", "").strip().lstrip("+")
    try:
        value = float(text)
    except ValueError:
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_number(text: str) -> str | None:
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = _NUM.search(tail)
        if m:
            return normalise_number(m.group(0))
    nums = _NUM.findall(text)
    return normalise_number(nums[-1]) if nums else None


def extract_code(prompt: str, output: str, entry_point: str) -> str:
    """The program to test: prompt + completion, or a fenced block that defines entry_point
    (after the prompt's imports, which a chat answer usually leaves out: `List` in a
    signature would otherwise fail before any test runs)."""
    fence = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", output, re.DOTALL)
    if fence:
        block = fence.group(1)
        if re.search(rf"^def {re.escape(entry_point)}\s*\(", block, re.MULTILINE):
            imports = [x for x in prompt.splitlines() if x.startswith(("import ", "from "))]
            return "".join(f"{x}\n" for x in imports) + block
        output = block
    cut = len(output)
    for s in STOP:
        i = output.find(s)
        if i != -1:
            cut = min(cut, i)
    return prompt + output[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 − C(n−c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
