"""Record files, torch-free: JSONL read and written, and the local dataset files (JSONL, JSON,
CSV, TSV, Parquet) read with the line of every record.

Torch-free because the report rules (envs/report.yaml has no torch) read evaluation items,
and config validation reads local dataset files at every Snakemake start-up.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import OrdermergeError
from .catalog import DATA_EXTENSIONS

Row = dict[str, Any]


def decode(path: str | Path, raw: bytes) -> str:
    """`raw` as UTF-8; a bad byte is reported by its line and its place in that line, which
    an editor can go to (a byte offset into the file it cannot)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise OrdermergeError(f"{path}:{line}: not UTF-8 (byte {col} of the line)") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OrdermergeError(f"{path}: cannot read ({e.strerror})") from None


def _jsonl_lines(path: Path) -> tuple[list[Row], list[int]]:
    rows, lines = [], []
    for i, line in enumerate(decode(path, _read_bytes(path)).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise OrdermergeError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            lines.append(i)
    return rows, lines


def read_jsonl(path: str | Path) -> list[Row]:
    """The records of a JSONL file (blank lines skipped); errors name the line."""
    return _jsonl_lines(Path(path))[0]


def write_jsonl(path: str | Path, rows: Iterable[Row]) -> None:
    """One sorted-key JSON object per line, written atomically."""
    from .atomic import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


@dataclass
class Records:
    """The records of one dataset file, each with where it came from: `lines[i]` is the line
    of record i in a line-based file (JSONL, CSV, TSV), None where records have no line (a JSON
    list, Parquet, a hub dataset): those are named by their 1-based position."""

    source: str
    rows: list[Row]
    lines: list[int] | None = None

    def where(self, i: int) -> str:
        return f"{self.source}:{self.lines[i]}" if self.lines else f"{self.source} record {i + 1}"


def _table(path: Path, delimiter: str) -> Records:
    text = decode(path, _read_bytes(path))
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return Records(str(path), [], [])
        rows, lines, start = [], [], reader.line_num + 1
        for values in reader:
            if values:  # a blank line
                if len(values) != len(header):
                    raise OrdermergeError(f"{path}:{start}: {len(values)} fields, expected "
                                          f"{len(header)} (the header's)")
                # values stay strings, as written: ids like 007 keep their zeros
                rows.append(dict(zip(header, values, strict=True)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise OrdermergeError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
    return Records(str(path), rows, lines)


def read_records(path: str | Path) -> Records:
    """A local dataset file (one of catalog.DATA_EXTENSIONS) as Records."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows, lines = _jsonl_lines(p)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise OrdermergeError(f"{p}:{lines[bad]}: expected a JSON object (a record)")
        return Records(str(p), rows, lines)
    if suffix in (".csv", ".tsv"):
        return _table(p, "," if suffix == ".csv" else "\t")
    if suffix == ".json":
        try:
            data = json.loads(decode(p, _read_bytes(p)))
        except json.JSONDecodeError as e:
            raise OrdermergeError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise OrdermergeError(f"{p}: expected a JSON list of records")
        return Records(str(p), data)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except OSError as e:
            raise OrdermergeError(f"{p}: cannot read as Parquet ({str(e).splitlines()[0]})") from None
        return Records(str(p), table.to_pylist())
    raise OrdermergeError(f"{p}: unsupported dataset file (expected {', '.join(DATA_EXTENSIONS)})")


def _looks_local(p: str) -> str | None:
    """Why `p` (a path that does not exist) is a local path and not a hub dataset name, or None."""
    if p.startswith("/"):
        return "it is absolute"
    if p.startswith(("./", "../", "~")):
        return f"it starts with {p.split('/')[0]}/"
    if Path(p).suffix.lower() in DATA_EXTENSIONS:
        return None  # the caller's message names the missing file already
    first = Path(p).parts[0] if Path(p).parts else ""
    if len(Path(p).parts) > 1 and Path(first).is_dir():
        return f"{first}/ is a local folder"
    return None


def local_dataset(p: str) -> bool:
    """True if `p` names a local dataset file, False for a hub dataset name. A path that is
    local but unusable (missing, a folder, an unsupported extension) raises, naming the
    supported extensions where they are the problem; messages start with the path."""
    path = Path(p).expanduser()
    supported = ", ".join(DATA_EXTENSIONS)
    if path.exists():
        if path.is_dir():
            raise OrdermergeError(f"{p} is a folder; expected a dataset file ({supported}) "
                                  "or a hub dataset name")
        if path.suffix.lower() not in DATA_EXTENSIONS:
            what = f"unsupported extension {path.suffix!r}" if path.suffix else "no extension"
            raise OrdermergeError(f"{p}: {what}; expected a dataset file ({supported})")
        return True
    if path.suffix.lower() in DATA_EXTENSIONS:
        raise OrdermergeError(f"file {p} does not exist")
    why = _looks_local(p)
    if why:
        raise OrdermergeError(f"file {p} does not exist (a local path, not a hub dataset "
                              f"name: {why})")
    return False
