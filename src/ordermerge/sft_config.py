"""The SFT settings and the batch arithmetic every SFT consumer shares.

Torch-free: the workflow plans each SFT job's GPUs and memory (ordermerge.plan) when Snakemake
starts, and `ordermerge plan` runs where torch may not be installed; the training loop
(ordermerge.sft, which re-exports SFTConfig) imports the same dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from . import OrdermergeError


@dataclass
class SFTConfig:
    lr: float = 5e-5
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.03
    epochs: int | None = None  # default: every epoch in the order file
    batch_size: int = 8  # samples per optimizer step (the global batch, for any number of ranks)
    micro_batch_size: int | None = None  # samples per rank per forward; None = the whole share
    max_length: int = 512
    # Compute dtype: "auto" = bf16 on CUDA, float32 on CPU (bf16 matmul backward on a small CPU
    # is pathologically slower than fp32: docs/MEASUREMENTS.md).
    dtype: str = "auto"
    save_dtype: str | None = None  # default: the base model's dtype
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; None = no clipping
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = never
    checkpoint_keep: int = 2  # newest checkpoints kept in the scratch folder
    lora_r: int = 0  # > 0: train LoRA adapters, merged into full weights before saving
    lora_alpha: int = 16
    max_steps: int | None = None  # stop early (for tests and smoke runs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SFTConfig:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise OrdermergeError(f"sft config: unknown key {bad[0]!r}")
        return cls(**d)


def micro_accum(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(samples per rank per forward, micro-steps per optimizer step) of a global batch of
    `batch_size` over `world` ranks: the micro-batch defaults to each rank's whole share, and
    the accumulation covers the batch (the last micro-step may be short)."""
    micro = micro_batch_size or -(-batch_size // world)
    return micro, -(-batch_size // (micro * world))


def compute_bytes(dtype: str, cuda: bool = True) -> int:
    """Bytes per element of SFT's compute copies for `sft.dtype` (auto: bf16 on CUDA, fp32 on
    CPU): what every memory plan of the job counts, in the workflow and in the job alike."""
    name = dtype if dtype != "auto" else ("bfloat16" if cuda else "float32")
    return 4 if name == "float32" else 2
