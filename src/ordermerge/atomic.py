"""Outputs that are, at every moment, absent or complete: write beside, then rename.

A killed writer leaves only a hidden sibling named `.NAME.partial-PID` (or `.NAME.old-PID` from
publish_dir), never a truncated NAME; the next writer of NAME removes the siblings whose
process is gone, so `kill -9` leaves no litter behind a rerun. `atomic_file` does this for a
file, `atomic_dir` for a folder (model weights, an evaluation folder).

A folder is only ever replaced when this tool wrote it: every command that publishes one
leaves its own metadata file inside (its `marker`), and `check_output` refuses, before any
work, an output that is one of the command's inputs, contains one, or is a non-empty folder
without that marker.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import OrdermergeError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A killed writer whose parent has not reaped it yet (a zombie) still answers kill(0):
    # it is dead all the same, and so is its partial output.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def clear_stale_partials(path: str | Path) -> list[Path]:
    """Remove `.NAME.partial-PID` / `.NAME.old-PID` siblings of `path` whose PID is dead."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:partial|old)-(\d+)$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# each publishing command's metadata file, for the line that says what an output replaces
WRITERS = {"ordermerge_base.json": "ordermerge prepare-base", "stats.json": "ordermerge prepare-data",
           "ordermerge_sft.json": "ordermerge sft", "merge.json": "ordermerge merge",
           "ordermerge_eval.json": "ordermerge evaluate"}


def say_replacing(path: Path, marker: Path, what: str | None = None) -> None:
    """One line on stderr before an earlier output of this tool is replaced: replacing is
    allowed (same command, same output), but never silent. `marker` dates it; `what` names
    the command (default: the one whose metadata file `marker` is)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.stat().st_mtime))
    what = what or WRITERS.get(marker.name, "ordermerge")
    sys.stderr.write(f"ordermerge: replacing {path}, written by {what} at {when}\n")


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.partial-{os.getpid()}"


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a completed folder into place: the old output (if any) is renamed aside first, so
    `out` is at every moment either absent, the old complete folder, or the new one."""
    clear_stale_partials(out)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def check_output(out: str | Path, marker: str, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse (OrdermergeError, nothing changed) to publish `out` where that would destroy
    something this tool did not write: `out` is an input or holds one, or is a non-empty
    folder (or a file) without `marker`, the metadata file the publishing command writes."""
    out = Path(out)
    real = Path(os.path.realpath(out))
    for item in inputs:
        src = Path(os.path.realpath(item))
        if src == real:
            raise OrdermergeError(f"{out}: is one of the inputs; refusing to replace it")
        if real in src.parents:
            raise OrdermergeError(f"{out}: contains the input {item}; refusing to replace it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OrdermergeError(f"{out}: exists and is not a folder this tool wrote; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise OrdermergeError(
            f"{out}: is a non-empty folder that ordermerge did not write (no {marker}); "
            "refusing to replace it (choose another output or empty it yourself)")


@contextmanager
def atomic_dir(path: str | Path, marker: str, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty hidden sibling folder to fill (it must receive `marker`); on success it
    replaces `path` (publish_dir), on any exception it is removed. Checked first with
    check_output, so a folder this tool did not write is never touched."""
    path = Path(path)
    check_output(path, marker, inputs)
    if (path / marker).is_file():
        say_replacing(path, path / marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_partials(path)
    tmp = partial_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"atomic_dir({path}): the writer left no {marker}")
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_partials(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
