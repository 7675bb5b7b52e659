"""The memory plan of one SFT job: bytes per GPU under FSDP2 over G GPUs, and host memory.

Torch-free (the workflow computes the SFT job's GPU count from it at submission time). The
model's shape comes from its config.json (Llama-family keys) and its parameter count from the
safetensors headers when the folder has them. Every term is an estimate of the allocations the
training loop makes, not a measurement; `benchmarks/gpu_smoke.py` prints the measured peak
beside it.

Per GPU, N parameters sharded over G ranks, compute dtype of c bytes (2 for bf16, 4 for fp32):
  master weights (fp32) 4N/G · gradients (fp32) 4N/G · AdamW moments 8N/G
  optimizer-step temporaries (foreach AdamW) 4N/G
  unsharded compute copies: the root (embeddings, head) + 2 decoder layers (one prefetched), c each
  unsharded fp32 gradients of 2 layers before their reduce-scatter
  activations: per layer 34·T·h·c/2 bytes (T = tokens per micro-batch), all L layers, or with
    checkpointing one layer's plus each layer's input (T·h·c)
  logits: T·V·(c + 8) (the compute-dtype logits, their fp32 copy and its gradient)
  CUDA context and allocator slack: 2 GiB
Host: each rank loads the fp32 model before sharding: 4N per rank on the node, + 4 GiB.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import OrdermergeError

GiB = 2**30
CONTEXT = 2 * GiB


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def layer_params(self) -> int:
        return (self.params - self.root_params) // max(1, self.layers)

    @property
    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


def _header_params(folder: Path) -> int:
    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        n += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return n


def model_shape(source: str | Path | dict[str, Any]) -> ModelShape:
    """The shape of a model folder, its config.json, or a config dict (Llama-family keys)."""
    folder = None
    if isinstance(source, dict):
        cfg = source
    else:
        path = Path(source)
        folder = path if path.is_dir() else None
        cfg_path = path / "config.json" if path.is_dir() else path
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise OrdermergeError(f"{cfg_path}: cannot read a model config ({e})") from None
    try:
        h, i, layers, vocab = (int(cfg[k]) for k in ("hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "vocab_size"))
    except KeyError as e:
        raise OrdermergeError(f"model config: no {e.args[0]!r} (a Llama-family config is needed)") from None
    heads = int(cfg.get("num_attention_heads", 1))
    kv = int(cfg.get("num_key_value_heads", heads))
    tied = bool(cfg.get("tie_word_embeddings", False))
    per_layer = 2 * h * h + 2 * h * (h * kv // heads) + 3 * h * i + 2 * h
    params = (_header_params(folder) if folder else 0) or layers * per_layer + vocab * h * (1 if tied else 2) + h
    return ModelShape(params, layers, h, i, vocab, tied)


@dataclass(frozen=True)
class MemoryPlan:
    gpus: int
    per_gpu: dict[str, int]  # bytes, by component
    host: int  # bytes on the node

    @property
    def total(self) -> int:
        return sum(self.per_gpu.values())

    def fits(self, gpu_memory: int) -> bool:
        return self.total <= gpu_memory


def plan_memory(shape: ModelShape, sft: dict[str, Any], gpus: int, compute_bytes: int = 2) -> MemoryPlan:
    """The memory of training `shape` with the SFT settings `sft` (a config's sft mapping)
    under FSDP2 over `gpus` GPUs of one node."""
    n, g, c = shape.params, gpus, compute_bytes
    lora = sft.get("lora_r", 0) > 0
    micro = sft.get("micro_batch_size") or -(-sft.get("batch_size", 8) // g)
    tokens = micro * sft.get("max_length", 512)
    act_layer = 34 * tokens * shape.hidden * c // 2
    if sft.get("gradient_checkpointing", False):
        activations = act_layer + shape.layers * tokens * shape.hidden * c
    else:
        activations = shape.layers * act_layer
    trained = 0 if lora else n  # LoRA adapters are a rounding error next to the base
    per_gpu = {
        "weights (fp32 shards)": 4 * n // g,
        "gradients (fp32 shards)": 4 * trained // g,
        "AdamW moments": 8 * trained // g,
        "optimizer step temporaries": 4 * trained // g,
        "unsharded compute weights": (shape.root_params + 2 * shape.layer_params) * c,
        "unsharded fp32 gradients": 2 * shape.layer_params * 4 * (not lora),
        "activations": activations,
        "logits": tokens * shape.vocab * (c + 8),
        "CUDA context, allocator": CONTEXT,
    }
    return MemoryPlan(g, per_gpu, 4 * n * g + 4 * GiB)


def choose_gpus(shape: ModelShape, sft: dict[str, Any], gpu_memory: int, max_gpus: int = 8,
                compute_bytes: int = 2) -> MemoryPlan:
    """The smallest power-of-two GPU count (≤ max_gpus) whose plan fits `gpu_memory` bytes per
    GPU; one line naming the shortfall otherwise."""
    g = 1
    while True:
        plan = plan_memory(shape, sft, g, compute_bytes)
        if plan.fits(gpu_memory):
            return plan
        if g * 2 > max_gpus:
            raise OrdermergeError(
                f"SFT does not fit: {plan.total / GiB:.1f} GiB per GPU on {g} GPUs, "
                f"{gpu_memory / GiB:.0f} GiB available (reduce sft.micro_batch_size or "
                "sft.max_length, set sft.gradient_checkpointing, or use larger GPUs)")
        g *= 2


def render(plans: list[MemoryPlan], gpu_memory: int) -> str:
    """A Markdown table: one column per GPU count, one row per component, GiB."""
    head = "| per GPU, GiB | " + " | ".join(f"{p.gpus} GPU" + ("s" if p.gpus > 1 else "") for p in plans) + " |"
    lines = [head, "|---|" + "---|" * len(plans)]
    for key in plans[0].per_gpu:
        lines.append(f"| {key} | " + " | ".join(f"{p.per_gpu[key] / GiB:.1f}" for p in plans) + " |")
    lines.append("| **total** | " + " | ".join(f"**{p.total / GiB:.1f}**" for p in plans) + " |")
    lines.append(f"| fits {gpu_memory / GiB:.0f} GiB | " + " | ".join(
        "yes" if p.fits(gpu_memory) else "no" for p in plans) + " |")
    lines.append("| host memory (node) | " + " | ".join(f"{p.host / GiB:.0f}" for p in plans) + " |")
    return "\n".join(lines) + "\n"
