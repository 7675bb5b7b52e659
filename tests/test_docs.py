"""The documentation runs as written and names only what exists.

- the README's CLI block runs as written, from an empty folder (slow: it trains three tiny
  sub-models);
- the README's report command names the config it reports on (`--configfile`);
- every file, `module.name`, test and `ordermerge` subcommand that README.md and docs/*.md
  name in backticks exists in the repository;
- the `ordermerge` module docstring lists every subcommand.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SRC = ROOT / "src" / "ordermerge"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
TICK = re.compile(r"`([^`\n]+)`")
CLI_HEADING = "## The CLI"

# top-level folders of this repository: a backticked path under one of them must exist
REPO_DIRS = (".ci", "src", "tests", "workflow", "configs", "docs", "benchmarks", "profiles", "envs")
# file kinds that are code of this repository when named bare (`catalog.py`); other bare
# names (`merge.json`, `claims.csv`, `model.safetensors`) are outputs of a run
CODE_SUFFIXES = (".py", ".smk", ".sh")
# dotted names that are neither modules of ordermerge nor config keys (libraries, outputs)
NOT_OURS = {"torch", "numpy", "np", "os", "scipy", "transformers", "peft", "snakemake", "json",
            "summary", "merge_json"}
# bare `name()` that are not ordermerge's functions
CALL_ALLOW = {"fully_shard", "set_requires_gradient_sync", "median"}
SKIP_CHARS = set("{}*<>…|$=")
# `test_*` words that are splits and config keys, not tests
NOT_TESTS = {"test_id", "test_ood", "test_size", "test_path", "test_sizes"}
# a word ending in one of these is a file name (an output, a data file), not `module.name`
FILE_SUFFIXES = tuple(f".{s}" for s in (
    "json", "jsonl", "csv", "md", "png", "pdf", "safetensors", "parquet", "tsv", "tex", "rst",
    "yaml", "yml", "txt", "gguf", "log", "html", "toml", "pt", "tgz"))


def _doc_texts() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in DOCS]


def _inline_code(text: str) -> list[str]:
    """Backticked spans outside fenced blocks."""
    return TICK.findall(FENCE.sub("", text))


@cache
def _commands() -> set[str]:
    src = (SRC / "cli.py").read_text()
    return set(re.findall(r'@command\("([a-z-]+)"', src))


@cache
def _definitions(module: Path) -> set[str]:
    """Names a module defines or imports at any level (functions, classes, assignments,
    dataclass fields, imports)."""
    tree = ast.parse(module.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@cache
def _all_src_definitions() -> set[str]:
    return set().union(*(_definitions(p) for p in SRC.rglob("*.py")))


@cache
def _test_functions() -> set[str]:
    return set().union(*(_definitions(p) for p in (ROOT / "tests").glob("*.py")))


@cache
def _schema_paths() -> set[tuple[str, ...]]:
    """Every config key path of the schema, `*` for a name the user chooses."""
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    out: set[tuple[str, ...]] = set()

    def walk(node: object, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        for k, v in (node.get("properties") or {}).items():
            out.add((*path, k))
            walk(v, (*path, k))
        for key in ("additionalProperties", "patternProperties"):
            sub = node.get(key)
            if isinstance(sub, dict):
                subs = sub.values() if key == "patternProperties" else [sub]
                for s in subs:
                    walk(s, (*path, "*"))
        for key in ("items", "allOf", "anyOf", "oneOf"):
            sub = node.get(key)
            for s in sub if isinstance(sub, list) else [sub]:
                walk(s, path)

    walk(schema, ())
    return out


def _is_config_key(parts: list[str]) -> bool:
    n = len(parts)
    for path in _schema_paths():
        for i in range(len(path) - n + 1):
            if all(p in ("*", q) for p, q in zip(path[i : i + n], parts, strict=True)):
                return True
    return False


def _module_path(parts: list[str]) -> tuple[Path | None, list[str]]:
    """The deepest ordermerge module that `parts` starts with, and the rest."""
    if parts and parts[0] == "ordermerge":
        parts = parts[1:]
    here, found, rest = SRC, None, parts
    for i, p in enumerate(parts):
        if (here / f"{p}.py").is_file():
            found, rest = here / f"{p}.py", parts[i + 1 :]
            break
        if (here / p / "__init__.py").is_file():
            here = here / p
            found, rest = here / "__init__.py", parts[i + 1 :]
            continue
        break
    return found, rest


def _check_word(word: str, problems: list[str]) -> None:
    word = word.strip(",;:()[]'\".").removesuffix("()")
    if not word or SKIP_CHARS & set(word) or word.startswith(("-", "http", "../", "/")):
        return
    if "::" in word:
        file, _, name = word.partition("::")
        if file and not (ROOT / file).is_file():
            problems.append(f"{word}: no file {file}")
        elif name and name not in (_definitions(ROOT / file) if file else _test_functions()):
            problems.append(f"{word}: no test {name}")
        return
    if re.fullmatch(r"test_\w+", word) and word not in NOT_TESTS:
        if word not in _test_functions():
            problems.append(f"{word}: no such test")
        return
    if "/" in word:
        if word.split("/")[0] in REPO_DIRS and not (ROOT / word).exists():
            problems.append(f"{word}: no such file or folder")
        return
    if word.endswith(CODE_SUFFIXES):
        if not [p for d in REPO_DIRS for p in (ROOT / d).rglob(word)] and not (ROOT / word).exists():
            problems.append(f"{word}: no such file")
        return
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", word) and not word.endswith(FILE_SUFFIXES):
        parts = word.split(".")
        if parts[0] in NOT_OURS:
            return
        module, rest = _module_path(parts)
        if module is None:
            return  # not a module of ordermerge: a config key, an output, a library
        if not rest or rest[0] in _definitions(module) or _is_config_key(parts):
            return
        problems.append(f"{word}: {module.relative_to(ROOT)} defines no {rest[0]}")


def _check_span(span: str, problems: list[str]) -> None:
    words = span.split()
    # `ordermerge <subcommand> ...`
    for i, w in enumerate(words[:-1]):
        if w == "ordermerge":
            sub = next((x for x in words[i + 1 :] if not x.startswith("-")), "")
            if re.fullmatch(r"[a-z][a-z-]*", sub) and sub not in _commands():
                problems.append(f"{span}: ordermerge has no subcommand {sub}")
    if len(words) == 1 and re.fullmatch(r"[a-z_]\w*\(\)", span):
        name = span[:-2]
        if name not in _all_src_definitions() and name not in CALL_ALLOW:
            problems.append(f"{span}: no function {name} in src/ordermerge")
        return
    for w in words:
        _check_word(w, problems)


def test_docs_name_only_what_exists() -> None:
    problems = []
    for path, text in _doc_texts():
        found: list[str] = []
        for span in _inline_code(text):
            _check_span(span, found)
        # the subcommands of the fenced command blocks
        for block in FENCE.findall(text):
            for line in block.splitlines():
                m = re.match(r"\s*ordermerge(?:\s+-q)?\s+([a-z][a-z-]*)", line)
                if m and m.group(1) not in _commands():
                    found.append(f"{line.strip()}: ordermerge has no subcommand {m.group(1)}")
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in found]
    assert problems == []


def test_the_checker_finds_stale_names() -> None:
    """The checker itself: names that once were in the docs and no longer exist."""
    for stale in ["safetensors_io.publish_dir", "docs/NOWHERE.md", "tests/test_merge.py::test_gone",
                  "::test_gone_too", "ordermerge frobnicate", "no_such_function()",
                  "scratch_helpers.py"]:
        problems: list[str] = []
        _check_span(stale, problems)
        assert problems, stale
    for fine in ["atomic.publish_dir", "ordermerge.atomic.atomic_file", "sft.save_dtype",
                 "orders.replicates", "merges.selection.tune", "catalog.METHODS",
                 "tests/test_config.py::test_schema_and_code_agree", "ordermerge tune --grid",
                 "results/smollm2_gsm/base", "merge.json", "torch.distributed.checkpoint"]:
        problems = []
        _check_span(fine, problems)
        assert problems == [], fine


def test_cli_docstring_lists_every_subcommand() -> None:
    import ordermerge.cli

    doc = " ".join((ordermerge.cli.__doc__ or "").split())
    missing = [c for c in sorted(_commands()) if not re.search(rf"(?<![\w-]){c}(?![\w-])", doc)]
    assert missing == []


def test_report_command_names_its_config() -> None:
    """`snakemake --report` reports on the config it is given: without --configfile it would
    report config.yaml's run whatever one ran."""
    lines = [ln for ln in README.read_text().splitlines() if "snakemake" in ln and "--report" in ln]
    assert lines, "the README shows no report command"
    assert [ln for ln in lines if "--configfile" not in ln] == []


def cli_block() -> str:
    text = README.read_text()
    start = text.index(CLI_HEADING)
    m = FENCE.search(text, start)
    assert m is not None and m.group(0).startswith("```bash"), "no ```bash block under the CLI heading"
    return m.group(1)


def test_cli_block_is_self_contained() -> None:
    """Fast: every folder the block reads is one an earlier command of the block wrote."""
    block = cli_block()
    written: set[str] = set()
    for line in " ".join(block.replace("\\\n", " ").split("\n")).split("ordermerge ")[1:]:
        for path in re.findall(r"--(?:base|models|model|data|order)\s+(\S+)", line):
            assert path.split("/")[0] in written, f"{path} is read before a command writes it"
        for path in re.findall(r"--(?:out|out-dir)\s+(\S+)", line):
            written.add(path.split("/")[0])


@pytest.mark.slow
def test_cli_block_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cli_block()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "merged" / "merge.json").is_file()
    assert (tmp_path / "eval" / "response_loss.json").is_file()
