"""The benchmarks' scratch folder: a fresh `mktemp -d` folder by default (no fixed path in a
world-writable /tmp, where anyone could plant a symlink first), or the user's --work when it is
absent or empty. A benchmark writes only there and deletes only what it wrote."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def work_dir(given: Path | None, prefix: str) -> Path:
    if given is None:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        print(f"work folder: {path}", file=sys.stderr)
        return path
    if given.exists() and (not given.is_dir() or any(given.iterdir())):
        sys.exit(f"--work {given}: exists and is not an empty folder; give a new or empty one")
    given.mkdir(parents=True, exist_ok=True)
    return given
