"""Minimal, streaming safetensors I/O.

Reading fetches one tensor at a time with pread, so a merge holds at most the tensors it is
working on. Writing lays out every shard's header before any tensor is computed (names,
dtypes and shapes are known up front), then appends tensor bytes in header order: the output is
never held in memory as a whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import OrdermergeError
from .safetensors_header import INDEX_NAME, SINGLE_NAME, read_header, weight_files

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    shard: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the shard file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _read_header(path: Path) -> dict[str, TensorInfo]:
    header, base, size = read_header(path)
    infos: dict[str, TensorInfo] = {}
    for name, h in header.items():
        dtype = DTYPES.get(h.get("dtype"))
        if dtype is None:
            raise OrdermergeError(f"{path}: tensor {name}: unsupported dtype {h.get('dtype')!r}")
        start, end = h["data_offsets"]
        shape = tuple(h["shape"])
        n = 1
        for d in shape:
            n *= d
        if end - start != n * dtype.itemsize:
            raise OrdermergeError(f"{path}: tensor {name}: byte size does not match its shape")
        if base + end > size:
            raise OrdermergeError(
                f"{path}: truncated: tensor {name} ends at byte {base + end}, file has {size}"
            )
        infos[name] = TensorInfo(path, dtype, shape, base + start, base + end)
    return infos


class CheckpointReader:
    """Name-addressed reader of all tensors of one model folder (single file or sharded)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.infos: dict[str, TensorInfo] = {}
        for shard in weight_files(self.folder):
            for name, info in _read_header(shard).items():
                if name in self.infos:
                    raise OrdermergeError(f"{shard}: tensor {name} appears in two shards")
                self.infos[name] = info
        # opened up front: merge worker threads read concurrently (pread has no shared offset)
        self._fds: dict[Path, int] = {}
        for shard in sorted({i.shard for i in self.infos.values()}):
            try:
                self._fds[shard] = os.open(shard, os.O_RDONLY)
            except OSError as e:
                self.close()
                raise OrdermergeError(f"{shard}: cannot read ({e.strerror})") from None

    def names(self) -> list[str]:
        return sorted(self.infos)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, read with one pread into fresh memory.

        Reading instead of memory-mapping keeps peak RSS at the tensors in flight: mapped file
        pages stay counted in a process's RSS until unmapped, so a mapped 7B merge would show the
        whole model as resident even though it only ever works on one tensor name.
        """
        info = self.infos[name]
        out = torch.empty(info.nbytes, dtype=torch.uint8)
        self.read_into(name, 0, out)
        return out.view(info.dtype).view(info.shape)

    def read_into(self, name: str, first: int, out: torch.Tensor) -> None:
        """Fill the uint8 tensor `out` with the bytes of elements first, first+1, … of tensor
        `name` (flattened), with pread: no mapping, no copy beyond the one into `out`."""
        info = self.infos[name]
        fd = self._fds[info.shard]
        start = info.start + first * info.dtype.itemsize
        view = memoryview(out.numpy())
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], start + done)
            if n <= 0:
                raise OrdermergeError(f"{info.shard}: truncated while reading tensor {name}")
            done += n

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_shards(
    specs: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int
) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Split (name, dtype, shape) specs, in the given order, into shards of at most max bytes."""
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = spec[1].itemsize * _numel(spec[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _header_bytes(specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in specs:
        n = dtype.itemsize * _numel(shape)
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format asks for 8-byte alignment of the data
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes HF-style shards (plus an index if > 1) whose layout is fixed up front: every
    shard's header is written at construction, so tensors, or chunks of them, can then be
    written in any order and from several threads (pwrite at known offsets)."""

    def __init__(
        self,
        folder: Path,
        specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
        max_shard_bytes: int,
    ):
        self.folder = Path(folder)
        self.shards = plan_shards(specs, max_shard_bytes)
        n = len(self.shards)
        self.files = (
            [SINGLE_NAME]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._fds: list[int] = []
        self._where: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        for i, shard in enumerate(self.shards):
            header = _header_bytes(shard)
            fd = os.open(self.folder / self.files[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.write(fd, header)
            offset = len(header)
            for name, dtype, shape in shard:
                self._where[name] = (i, offset, dtype, shape)
                offset += dtype.itemsize * _numel(shape)
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor, first: int = 0) -> None:
        """Write `tensor`'s elements as elements first, first+1, … of tensor `name`."""
        i, offset, dtype, shape = self._where[name]
        if tensor.dtype != dtype or first + tensor.numel() > _numel(shape):
            raise RuntimeError(f"writer: {name} is {dtype} {shape}, got {tensor.dtype} at {first}")
        data = memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy())
        pos = offset + first * dtype.itemsize
        done = 0
        while done < len(data):
            done += os.pwrite(self._fds[i], data[done:], pos + done)
        self.bytes_written += len(data)

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds:  # only after an error: close() has emptied the list
            os.close(fd)
        self._fds = []

    def close(self) -> None:
        """fsync and close every shard, then write the index: the files are complete."""
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        if len(self.files) > 1:
            total = sum(
                dtype.itemsize * _numel(shape) for shard in self.shards for _, dtype, shape in shard
            )
            weight_map = {
                name: self.files[i] for i, shard in enumerate(self.shards) for name, _, _ in shard
            }
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> dict[str, str | None]:
    """Path plus sha256 of config.json and of the weight index (for a single file: its header,
    which names every tensor with dtype, shape and offsets)."""
    folder = Path(folder)
    cfg = folder / "config.json"
    index = folder / INDEX_NAME
    if index.exists():
        idx = sha256_file(index)
    else:
        with open(folder / SINGLE_NAME, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            idx = hashlib.sha256(f.read(n)).hexdigest()
    return {
        "path": str(folder),
        "config_sha256": sha256_file(cfg) if cfg.exists() else None,
        "index_sha256": idx,
    }
