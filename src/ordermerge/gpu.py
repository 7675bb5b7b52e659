"""Each GPU job holds to the GPU memory it declared to Snakemake (resource gpu_mem_mb).

Jobs that share one GPU (`--resources gpu_mem_mb=<card>`) are admitted by their declarations;
a job that grew past its own would take the memory of another job, which would then fail in
its place. So the job caps its caching allocator at its declaration (the rule passes it in
ORDERMERGE_GPU_MEM_MB) and, if it needs more, fails alone, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from . import OrdermergeError
from .plan import CONTEXT, MiB

ENV = "ORDERMERGE_GPU_MEM_MB"
# set before the first CUDA allocation: variable-shaped steps (each batch is padded to its own
# longest sample) fragment fixed segments; expandable ones are remapped instead
ALLOC_CONF = ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def use_expandable_segments() -> None:
    """Ask for expandable allocator segments unless the user configured the allocator."""
    if not any(os.environ.get(k) for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        os.environ[ALLOC_CONF[0]] = ALLOC_CONF[1]


def declared_mb() -> int:
    """The job's declared GPU memory in MB; 0 when it declared none (a CPU or unshared run)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise OrdermergeError(f"{ENV}={raw!r}: expected a whole number of MB")
    return int(raw)


def cap_memory(device: torch.device, at_least: int = 0) -> None:
    """Limit this process's allocations on `device` to its share of the job's declaration (a
    job of W ranks has one GPU per rank), less the CUDA context, which the caching allocator
    does not count. `at_least` (bytes; the job's own memory plan for its actual rank count)
    keeps the cap from starving a job whose declaration was made for another GPU count (e.g.
    `--set-resources sft:gpu=2` without gpu_memory_gb declares the one-GPU plan)."""
    mb = declared_mb() / int(os.environ.get("WORLD_SIZE", "1"))
    if device.type != "cuda" or not mb:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    cap = max(mb * MiB, at_least) - CONTEXT
    torch.cuda.set_per_process_memory_fraction(min(1.0, max(0.0, cap / total)), device)


@contextmanager
def within_declared_memory(job: str) -> Iterator[None]:
    """A CUDA out-of-memory error inside becomes one line naming the declaration."""
    try:
        yield
    except torch.OutOfMemoryError:
        mb = declared_mb()
        said = f"beyond its declared {mb} MB ({ENV}, resource gpu_mem_mb)" if mb else "out of GPU memory"
        raise OrdermergeError(f"{job}: ran {said}; raise the declaration with "
                              f"--set-resources {job}:gpu_mem_mb=<MB> or lower its batch") from None
