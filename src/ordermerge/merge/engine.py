"""The streaming merge engine: chunks of one tensor name at a time, from pread inputs to shards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import OrdermergeError, __version__
from ..atomic import atomic_dir, check_output
from ..safetensors_io import (
    CheckpointReader,
    ShardedWriter,
    _numel,
    folder_fingerprint,
    sha256_file,
)
from .params import parse_params
from .strategies import CHUNK, REGISTRY, Group, Rng

# Files copied next to the merged weights, from the base (else from the first sub-model).
COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
MERGE_META = "merge.json"  # marks a folder as a merge's output (atomic.check_output)
DTYPE_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def chunk_rng(seed: int, name: str, chunk: int = 0) -> Rng:
    """The random stream of one chunk, seeded from (seed, tensor name, chunk index) by SHA-256:
    independent of tensor order, sharding and threads, and stable across Python processes."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{chunk}".encode()).digest()
    return Rng(int.from_bytes(digest[:16], "little"))


def _weights(strategy: str, weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        weights = [1.0] * n
    weights = [float(x) for x in weights]
    if len(weights) != n:
        raise OrdermergeError(f"--weights: got {len(weights)} weights for {n} sub-models")
    if not all(x > 0 and x < float("inf") for x in weights):
        raise OrdermergeError(f"--weights: every weight must be positive and finite, got {weights}")
    if REGISTRY[strategy].normalise_weights:
        s = sum(weights)
        weights = [x / s for x in weights]
    return weights


def _check_same_layout(base: CheckpointReader, models: list[CheckpointReader]) -> None:
    names = set(base.infos)
    for r in models:
        other = set(r.infos)
        if other != names:
            diff = sorted(names ^ other)[0]
            where = "missing from" if diff in names else "not in the base but in"
            raise OrdermergeError(f"{r.folder}: tensor {diff} is {where} this model")
        for name in base.names():
            a, b = base.infos[name], r.infos[name]
            if a.shape != b.shape:
                raise OrdermergeError(
                    f"{b.shard}: tensor {name} has shape {list(b.shape)}, base has {list(a.shape)}"
                )
            if a.dtype != b.dtype:
                raise OrdermergeError(
                    f"{b.shard}: tensor {name} has dtype {b.dtype}, base has {a.dtype}"
                )


def _check_provenance(base: Path, models: list[Path]) -> None:
    """Refuse sub-models fine-tuned from another base (shapes can match while values are
    unrelated) or carrying another tokenizer, using the fingerprints prepare-base and sft write."""
    fp = base / "ordermerge_base.json"
    if fp.exists():
        want = json.loads(fp.read_text()).get("weights_sha256")
        for m in models:
            meta = m / "ordermerge_sft.json"
            if meta.exists():
                got = json.loads(meta.read_text()).get("base_weights_sha256")
                if got and want and got != want:
                    raise OrdermergeError(
                        f"{m}: was fine-tuned from another base (base fingerprint {got[:12]}…, "
                        f"{base} has {want[:12]}…)"
                    )
    tokenizers = [(p, p / "tokenizer.json") for p in (base, *models)]
    digests = {p: sha256_file(t) for p, t in tokenizers if t.exists()}
    if len(set(digests.values())) > 1:
        ref = next(iter(digests))
        odd = next(p for p in digests if digests[p] != digests[ref])
        raise OrdermergeError(f"{odd}: tokenizer.json differs from {ref}'s (tokenizer mismatch)")


def _workers() -> int:
    # torch's thread count honours OMP_NUM_THREADS; the affinity mask honours SLURM's cpus
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))


def merge(
    base: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    strategy: str,
    params: dict[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    dtype: str | None = None,
    max_shard_size: int = 5 * 2**30,
    progress: bool = True,
) -> dict[str, Any]:
    """Merge `models` (fine-tuned from `base`) into the HF folder `out`; returns merge.json.

    Streams chunks of one tensor name at a time through a thread pool; writes into a hidden
    sibling folder and renames it at the end, so an interrupted merge never leaves a folder
    that looks complete.
    """
    t0 = time.perf_counter()
    if len(models) < 2:
        raise OrdermergeError(f"need at least 2 sub-models to merge, got {len(models)}")
    params = parse_params(strategy, params)
    w = _weights(strategy, weights, len(models))
    if dtype is not None and dtype not in DTYPE_BY_NAME:
        raise OrdermergeError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPE_BY_NAME)}")
    base, out = Path(base), Path(out)
    models = [Path(m) for m in models]
    real = [os.path.realpath(m) for m in models]
    for i, m in enumerate(models):
        if real[i] in real[:i]:
            raise OrdermergeError(f"--models: {m} is given twice (it would count twice in the merge)")
    check_output(out, MERGE_META, [base, *models])
    with ExitStack() as opened:  # every reader is closed, whatever happens
        base_r = opened.enter_context(CheckpointReader(base))
        model_rs = [opened.enter_context(CheckpointReader(m)) for m in models]
        _check_same_layout(base_r, model_rs)
        _check_provenance(base, models)
        return _merge(base, models, out, strategy, params, w, seed, dtype, max_shard_size,
                      progress, base_r, model_rs, t0)


def _merge(
    base: Path,
    models: list[Path],
    out: Path,
    strategy: str,
    params: dict[str, Any],
    w: list[float],
    seed: int,
    dtype: str | None,
    max_shard_size: int,
    progress: bool,
    base_r: CheckpointReader,
    model_rs: list[CheckpointReader],
    t0: float,
) -> dict[str, Any]:
    strat = REGISTRY[strategy]

    names = base_r.names()
    out_dtype = {}
    for n in names:
        d = base_r.infos[n].dtype
        out_dtype[n] = DTYPE_BY_NAME[dtype] if dtype and d.is_floating_point else d
    specs = [(n, out_dtype[n], base_r.infos[n].shape) for n in names]
    readers = [*model_rs, base_r]  # the row order of a Group's stack: θ1..θN, then θ0

    def merge_chunk(name: str, chunk: int, stats: list[list[Any]] | None) -> tuple[list[int], Any]:
        """Merge elements [chunk·CHUNK, …) of one tensor; returns the zero task-vector count
        per sub-model and, for selection, the picks per sub-model."""
        info = base_r.infos[name]
        first = chunk * CHUNK
        count = min(CHUNK, _numel(info.shape) - first)
        buf = torch.empty((len(readers), count * info.dtype.itemsize), dtype=torch.uint8)
        for row, r in enumerate(readers):
            r.read_into(name, first, buf[row])
        g = Group(name, buf.view(info.dtype))
        if not info.dtype.is_floating_point or count == 0:
            # integer buffers (e.g. position ids) are not parameters: keep the base's
            writer.write(name, g.base, first)
            return [count] * len(models), None
        if not g.all_finite():
            bad = next(i for i in range(len(readers)) if not bool(torch.isfinite(g.stack[i]).all()))
            raise OrdermergeError(f"{readers[bad].infos[name].shard}: tensor {name} contains NaN or Inf")
        zeros = [count - int(np.count_nonzero(ch)) for ch in g.changed.numpy()]
        extra = {} if stats is None else {"stats": [s[chunk] for s in stats]}
        res = strat.fn(g, w, chunk_rng(seed, name, chunk), **params, **extra)
        writer.write(name, res.tensor.to(out_dtype[name]), first)
        return zeros, res.picks

    def prepare(name: str, pool: ThreadPoolExecutor) -> list[list[Any]] | None:
        # whole-tensor statistics, one per chunk (TIES's trim plan), one sub-model per worker
        if strat.prepare is None or not base_r.infos[name].dtype.is_floating_point:
            return None
        b = base_r.get(name)
        return list(pool.map(lambda r: strat.prepare(b, r.get(name), chunk=CHUNK, **params), model_rs))

    zero = {i: dict.fromkeys(names, 0) for i in range(len(models))}
    picks = torch.zeros(len(models), dtype=torch.long)
    total_elems = sum(_numel(base_r.infos[n].shape) for n in names)
    bytes_in = sum(base_r.infos[n].nbytes for n in names) * (1 + len(models))
    threads = _workers()
    intra_op = torch.get_num_threads()
    try:
        # a merge killed by kill -9 or the OOM killer leaves only a hidden partial folder,
        # removed by the next merge into `out`
        with atomic_dir(out, MERGE_META, [base, *models]) as tmp, \
                ShardedWriter(tmp, specs, max_shard_size) as writer:
            # chunks run on a thread pool (torch and pread release the GIL), one torch thread
            # each; at most 2 chunks per worker are in flight, so memory stays a few chunks
            torch.set_num_threads(1)
            bar = tqdm(total=len(names), desc=f"merge {strategy}", unit="tensor", disable=not progress)
            inflight: deque[tuple[str, bool, Future]] = deque()
            with ThreadPoolExecutor(threads, thread_name_prefix="merge") as pool:
                try:
                    for name in names:
                        stats = prepare(name, pool)
                        n_chunks = max(1, -(-_numel(base_r.infos[name].shape) // CHUNK))
                        for c in range(n_chunks):
                            job = pool.submit(merge_chunk, name, c, stats)
                            inflight.append((name, c == n_chunks - 1, job))
                            while len(inflight) > 2 * threads:
                                _collect(inflight.popleft(), zero, picks, bar)
                    while inflight:
                        _collect(inflight.popleft(), zero, picks, bar)
                finally:
                    for _, _, job in inflight:
                        job.cancel()
            bar.close()
            writer.close()
            shapes = {n: base_r.infos[n].shape for n in names}
            floats = [base_r.infos[n].dtype for n in names if base_r.infos[n].dtype.is_floating_point]
            input_dtype = str(floats[0]).removeprefix("torch.") if floats else "none"
            meta = _finish(
                tmp, base, models, strategy, params, w, seed, dtype, zero, picks, shapes, input_dtype
            )
            meta["elements"] = total_elems
            elapsed = time.perf_counter() - t0
            meta["summary"] = {
                "tensors": len(names),
                "bytes_read": bytes_in,
                "bytes_written": writer.bytes_written,
                "seconds": round(elapsed, 3),
            }
            (tmp / MERGE_META).write_text(json.dumps(_stable(meta), indent=2, sort_keys=True) + "\n")
    except OSError as e:  # disk full, quota, I/O error: one line, and nothing left behind
        where = f" ({e.filename})" if e.filename else ""
        raise OrdermergeError(
            f"{out}: merge failed: {e.strerror or e}{where}; no output was left behind"
        ) from None
    finally:
        torch.set_num_threads(intra_op)
    return meta


def _collect(
    item: tuple[str, bool, Future], zero: dict[int, dict[str, int]], picks: torch.Tensor, bar: tqdm
) -> None:
    name, last, job = item
    zeros, chunk_picks = job.result()  # re-raises a worker's error here, in tensor order
    for i, z in enumerate(zeros):
        zero[i][name] += z
    if chunk_picks is not None:
        picks += chunk_picks
    if last:
        bar.update(1)


def _stable(meta: dict[str, Any]) -> dict[str, Any]:
    # merge.json must be byte-identical across reruns, so wall-clock seconds are kept out of it.
    return {k: v for k, v in meta.items() if k != "summary"}


def _finish(
    tmp: Path,
    base: Path,
    models: list[Path],
    strategy: str,
    params: dict[str, Any],
    w: list[float],
    seed: int,
    dtype: str | None,
    zero: dict[int, dict[str, int]],
    picks: torch.Tensor,
    names: dict[str, tuple[int, ...]],
    input_dtype: str,
) -> dict[str, Any]:
    src = base if (base / "config.json").exists() else models[0]
    cfg_path = src / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if dtype:
            cfg["dtype"] = dtype
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for fname in COPIED_FILES:
        for folder in (base, models[0]):
            if (folder / fname).exists():
                shutil.copyfile(folder / fname, tmp / fname)
                break
    numel = {n: int(torch.Size(shape).numel()) for n, shape in names.items()}
    total = sum(numel.values())
    per_model = [
        {
            "path": str(m),
            "zero_fraction": sum(zero[i].values()) / total,
            "zero_fraction_per_tensor": {n: zero[i][n] / max(1, numel[n]) for n in sorted(zero[i])},
        }
        for i, m in enumerate(models)
    ]
    meta: dict[str, Any] = {
        "ordermerge_version": __version__,
        "strategy": strategy,
        "parameters": params,
        "weights": w,
        "seed": seed,
        "dtype": dtype,
        "input_dtype": input_dtype,
        "base": folder_fingerprint(base),
        "models": [folder_fingerprint(m) for m in models],
        "task_vector_zero": per_model,
    }
    if strategy == "parameter_selection":
        n = int(picks.sum())
        meta["selection_share"] = [int(c) / n if n else 0.0 for c in picks]
        meta["selection_counts"] = [int(c) for c in picks]
    return meta

