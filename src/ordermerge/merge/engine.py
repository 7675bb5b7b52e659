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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import OrdermergeError, __version__
from ..atomic import atomic_dir, check_output
from ..catalog import DTYPES, METHODS
from ..config import method_params
from ..safetensors_io import (
    CheckpointReader,
    ShardedWriter,
    _numel,
    folder_fingerprint,
    sha256_file,
)
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


def chunk_rng(seed: int, name: str, chunk: int = 0) -> Rng:
    """The random stream of one chunk, seeded from (seed, tensor name, chunk index) by SHA-256:
    independent of tensor order, sharding and threads, and stable across Python processes."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{chunk}".encode()).digest()
    return Rng(int.from_bytes(digest[:16], "little"))


def _weights(method: str, weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        weights = [1.0] * n
    weights = [float(x) for x in weights]
    if len(weights) != n:
        raise OrdermergeError(f"--weights: got {len(weights)} weights for {n} sub-models")
    if not all(x > 0 and x < float("inf") for x in weights):
        raise OrdermergeError(f"--weights: every weight must be positive and finite, got {weights}")
    if METHODS[method].normalise_weights:
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
    # the default: every CPU this process may use (the affinity mask honours SLURM's cpus)
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class MergePlan:
    """What one merge does: the inputs (readers in a Group's row order: θ1..θN, then θ0), the
    method and its settings, and the output layout (one dtype per tensor name)."""

    base: Path
    models: list[Path]
    out: Path
    method: str
    params: dict[str, Any]
    weights: list[float]
    seed: int
    dtype: str | None
    name: str | None
    readers: list[CheckpointReader]  # θ1..θN, θ0
    out_dtype: dict[str, torch.dtype]
    tuning: dict[str, Any] | None = None  # how the parameters were chosen (ordermerge.tuning)

    @property
    def base_reader(self) -> CheckpointReader:
        return self.readers[-1]

    @property
    def names(self) -> list[str]:
        return self.base_reader.names()

    def numel(self, name: str) -> int:
        return _numel(self.base_reader.infos[name].shape)

    def chunks(self, name: str) -> int:
        return max(1, -(-self.numel(name) // CHUNK))

    def specs(self) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        return [(n, self.out_dtype[n], self.base_reader.infos[n].shape) for n in self.names]


def merge(
    base: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    method: str,
    params: dict[str, Any] | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    dtype: str | None = None,
    max_shard_size: int = 5 * 2**30,
    progress: bool = True,
    name: str | None = None,
    threads: int | None = None,
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge `models` (fine-tuned from `base`) with `method` into the HF folder `out`; returns
    merge.json. `name` (the config's merge name) and `tuning` (how `params` were chosen on the
    validation split, from ordermerge.tuning) are recorded in it.

    Streams chunks of one tensor name at a time through a pool of `threads` workers; writes into
    a hidden sibling folder and renames it at the end, so an interrupted merge never leaves a
    folder that looks complete.
    """
    t0 = time.perf_counter()
    if len(models) < 2:
        raise OrdermergeError(f"need at least 2 sub-models to merge, got {len(models)}")
    params = method_params(method, params, "--config")
    w = _weights(method, weights, len(models))
    if dtype is not None and dtype not in DTYPES:
        raise OrdermergeError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
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
        out_dtype = {n: getattr(torch, dtype) if dtype and base_r.infos[n].dtype.is_floating_point
                     else base_r.infos[n].dtype for n in base_r.names()}
        plan = MergePlan(base, models, out, method, params, w, seed, dtype, name,
                         [*model_rs, base_r], out_dtype, tuning)
        meta = run_plan(plan, max_shard_size, threads or _workers(), progress)
    meta["summary"]["seconds"] = round(time.perf_counter() - t0, 3)
    return meta


def merge_chunk(plan: MergePlan, name: str, chunk: int, stats: list[list[Any]] | None,
                writer: ShardedWriter) -> tuple[list[int], Any]:
    """Merge elements [chunk·CHUNK, …) of one tensor and write them at their offset; returns
    the zero task-vector count per sub-model and, for selection, the picks per sub-model."""
    info = plan.base_reader.infos[name]
    first = chunk * CHUNK
    count = min(CHUNK, plan.numel(name) - first)
    buf = torch.empty((len(plan.readers), count * info.dtype.itemsize), dtype=torch.uint8)
    for row, r in enumerate(plan.readers):
        r.read_into(name, first, buf[row])
    g = Group(name, buf.view(info.dtype))
    n = len(plan.models)
    if not info.dtype.is_floating_point or count == 0:
        # integer buffers (e.g. position ids) are not parameters: keep the base's
        writer.write(name, g.base, first)
        return [count] * n, None
    if not g.all_finite():
        bad = next(i for i in range(len(plan.readers)) if not bool(torch.isfinite(g.stack[i]).all()))
        raise OrdermergeError(f"{plan.readers[bad].infos[name].shard}: tensor {name} contains NaN or Inf")
    zeros = [count - int(np.count_nonzero(ch)) for ch in g.changed.numpy()]
    extra = {} if stats is None else {"stats": [s[chunk] for s in stats]}
    res = REGISTRY[plan.method].fn(g, plan.weights, chunk_rng(plan.seed, name, chunk),
                                   **plan.params, **extra)
    writer.write(name, res.tensor.to(plan.out_dtype[name]), first)
    return zeros, res.picks


def tensor_stats(plan: MergePlan, name: str, pool: ThreadPoolExecutor) -> list[list[Any]] | None:
    """A method's whole-tensor statistics, one list per sub-model (TIES's trim plan), computed
    one sub-model per worker."""
    prepare = REGISTRY[plan.method].prepare
    if prepare is None or not plan.base_reader.infos[name].dtype.is_floating_point:
        return None
    b = plan.base_reader.get(name)
    models = plan.readers[:-1]
    return list(pool.map(lambda r: prepare(b, r.get(name), chunk=CHUNK, **plan.params), models))


@dataclass
class _Tally:
    """Zero task-vector entries per sub-model and tensor, and selection picks per sub-model."""

    zero: dict[int, dict[str, int]]
    picks: torch.Tensor

    def add(self, name: str, zeros: list[int], picks: Any) -> None:
        for i, z in enumerate(zeros):
            self.zero[i][name] += z
        if picks is not None:
            self.picks += picks


def run_plan(plan: MergePlan, max_shard_size: int, workers: int, progress: bool) -> dict[str, Any]:
    """Schedule every chunk of every tensor on `workers` threads (at most 2 chunks per worker in
    flight, so memory stays a few chunks), then write merge.json; the folder is published only
    when all of it is written."""
    tally = _Tally({i: dict.fromkeys(plan.names, 0) for i in range(len(plan.models))},
                   torch.zeros(len(plan.models), dtype=torch.long))
    intra_op = torch.get_num_threads()
    try:
        # a merge killed by kill -9 or the OOM killer leaves only a hidden partial folder,
        # removed by the next merge into `out`
        with atomic_dir(plan.out, MERGE_META, [plan.base, *plan.models]) as tmp, \
                ShardedWriter(tmp, plan.specs(), max_shard_size) as writer:
            torch.set_num_threads(1)  # chunks run on the pool (torch and pread release the GIL)
            bar = tqdm(total=len(plan.names), desc=f"merge {plan.name or plan.method}",
                       unit="tensor", disable=not progress)
            inflight: deque[tuple[str, bool, Future]] = deque()

            def collect() -> None:
                name, last, job = inflight.popleft()
                tally.add(name, *job.result())  # re-raises a worker's error here, in order
                bar.update(int(last))

            with ThreadPoolExecutor(workers, thread_name_prefix="merge") as pool:
                try:
                    for name in plan.names:
                        stats = tensor_stats(plan, name, pool)
                        n_chunks = plan.chunks(name)
                        for c in range(n_chunks):
                            job = pool.submit(merge_chunk, plan, name, c, stats, writer)
                            inflight.append((name, c == n_chunks - 1, job))
                            while len(inflight) > 2 * workers:
                                collect()
                    while inflight:
                        collect()
                finally:
                    for _, _, job in inflight:
                        job.cancel()
            bar.close()
            writer.close()
            meta = merge_metadata(plan, tally)
            copy_side_files(plan, tmp)
            (tmp / MERGE_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except OSError as e:  # disk full, quota, I/O error: one line, and nothing left behind
        where = f" ({e.filename})" if e.filename else ""
        raise OrdermergeError(
            f"{plan.out}: merge failed: {e.strerror or e}{where}; no output was left behind"
        ) from None
    finally:
        torch.set_num_threads(intra_op)
    # merge.json stays byte-identical across reruns: wall-clock figures are returned, not written
    bytes_in = sum(plan.base_reader.infos[n].nbytes for n in plan.names) * len(plan.readers)
    meta["summary"] = {"tensors": len(plan.names), "bytes_read": bytes_in,
                       "bytes_written": writer.bytes_written}
    return meta


def copy_side_files(plan: MergePlan, tmp: Path) -> None:
    """config.json (with the output dtype) and the tokenizer files, from the base (else the
    first sub-model)."""
    src = plan.base if (plan.base / "config.json").exists() else plan.models[0]
    cfg_path = src / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        if plan.dtype:
            cfg["dtype"] = plan.dtype
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = plan.dtype
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for fname in COPIED_FILES:
        for folder in (plan.base, plan.models[0]):
            if (folder / fname).exists():
                shutil.copyfile(folder / fname, tmp / fname)
                break


def merge_metadata(plan: MergePlan, tally: _Tally) -> dict[str, Any]:
    """merge.json: what was merged, how, from which inputs, and the zero task-vector shares."""
    numel = {n: plan.numel(n) for n in plan.names}
    total = sum(numel.values())
    floats = [plan.base_reader.infos[n].dtype for n in plan.names
              if plan.base_reader.infos[n].dtype.is_floating_point]
    per_model = [
        {
            "path": str(m),
            "zero_fraction": sum(tally.zero[i].values()) / total,
            "zero_fraction_per_tensor": {n: tally.zero[i][n] / max(1, numel[n]) for n in sorted(numel)},
        }
        for i, m in enumerate(plan.models)
    ]
    meta: dict[str, Any] = {
        "ordermerge_version": __version__,
        "method": plan.method,
        "name": plan.name,
        "parameters": plan.params,
        "weights": plan.weights,
        "seed": plan.seed,
        "dtype": plan.dtype,
        "input_dtype": str(floats[0]).removeprefix("torch.") if floats else "none",
        "base": folder_fingerprint(plan.base),
        "models": [folder_fingerprint(m) for m in plan.models],
        "task_vector_zero": per_model,
        "elements": total,
    }
    if plan.tuning is not None:
        meta["tuning"] = plan.tuning
    if METHODS[plan.method].reports_picks:
        n = int(tally.picks.sum())
        meta["selection_share"] = [int(c) / n if n else 0.0 for c in tally.picks]
        meta["selection_counts"] = [int(c) for c in tally.picks]
    return meta
