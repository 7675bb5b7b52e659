"""The safetensors header, read and checked in one place, without torch.

ordermerge.safetensors_io builds its tensor reader on it; the memory plan (ordermerge.plan) and
the workflow's resource functions read parameter counts and tensor sizes from it when Snakemake
starts, where importing torch would cost seconds per parse.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from . import OrdermergeError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100_000_000  # bytes; a longer length field is a corrupt file, not a header


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], int, int]:
    """(tensor name -> {"dtype", "shape", "data_offsets"}, byte offset of the data, file size)
    of one safetensors file; the `__metadata__` entry is dropped."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise OrdermergeError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > size - 8 or hlen > MAX_HEADER:
                raise OrdermergeError(f"{path}: corrupt safetensors header (length {hlen})")
            header = json.loads(f.read(hlen))
    except OSError as e:
        raise OrdermergeError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OrdermergeError(f"{path}: corrupt safetensors header (not JSON)") from None
    header.pop("__metadata__", None)
    return header, 8 + hlen, size


def has_weights(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / INDEX_NAME).exists() or (folder / SINGLE_NAME).exists()


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of an HF model folder (sharded with an index, or single file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OrdermergeError(f"{folder}: model folder does not exist")
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise OrdermergeError(
                f"{index}: not a valid safetensors index (no weight_map)"
            ) from None
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if not (folder / s).exists():
                raise OrdermergeError(f"{index}: names shard {s}, which does not exist")
        return [folder / s for s in shards]
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME]
    raise OrdermergeError(f"{folder}: no model.safetensors or {INDEX_NAME} (no weights)")


def tensor_numels(folder: Path) -> dict[str, int]:
    """Elements of every tensor of a model folder, from its headers alone."""
    return {name: math.prod(spec["shape"]) for f in weight_files(folder)
            for name, spec in read_header(f)[0].items()}
