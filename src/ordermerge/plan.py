"""GPU memory plans: an SFT job under FSDP2 over G GPUs, and an inference job on one GPU.

Torch-free (the workflow computes every GPU job's GPUs and declared GPU memory from it when
Snakemake starts). The model's shape comes from its config.json (Llama-family keys) and its
parameter count from the safetensors headers when the folder has them. Each allocation term
is an estimate of what the code allocates; the last two terms are what the process holds
beyond its allocations, so that the total is comparable with the device memory nvidia-smi
shows for the job, which is what GPUs shared by several jobs run out of.

SFT, per GPU: N parameters sharded over G ranks, compute dtype of c bytes (2 bf16, 4 fp32):
  weights (fp32 shards)             4N/G, the master copy AdamW updates
  gradients (fp32 shards)           4N/G: gradients are reduce-scattered on every micro-step
                                    (ordermerge.sft), so no rank holds unsharded gradients
                                    beyond those of the next term
  AdamW moments                     8N/G
  optimizer step temporaries        foreach AdamW (torch's default): 4N/G (its denominator
                                    list); fused AdamW (ordermerge.sft on CUDA): 0
  unsharded compute weights         c × (root: embeddings, head, final norm + 2 decoder layers,
                                    the one computing and the one prefetched)
  unsharded gradients               (c + 4) × (root + 2 layers): the compute-dtype gradient
                                    and its fp32 reduce-scatter copy, of the layer whose
                                    reduce-scatter runs and the next one's, and of the root,
                                    whose head gradient lives from the first backward op to
                                    the root's reduce-scatter at the end
  activations                       per layer 34·T·h·c/2 bytes (T tokens per micro-batch;
                                    Korthikanti et al. 2022 without the attention-score term,
                                    which SDPA does not materialise), all L layers; with
                                    gradient checkpointing one layer's plus each layer's
                                    input (T·h·c)
  logits                            T·V·(c + 8): the compute-dtype logits, their fp32 copy and
                                    its gradient
  CUDA context                      1 GiB: the context, cuBLAS workspaces and NCCL buffers; a
                                    typical size, not measured on its own
  allocator reserve                 RESERVE × the terms that are freed and allocated again
                                    every step (all but the weight shards and the moments,
                                    which live from the first step to the last): the caching
                                    allocator keeps freed blocks that a request of another
                                    size cannot use (fragmentation). FITTED: on one H200
                                    (shared/gpu-runs/2026-12-04-h200) a 1.17 B Llama held
                                    (nvidia-smi) 34.1 GiB and 51.9 GiB in two settings, i.e.
                                    50% and 44% of those terms above the rest of this plan;
                                    RESERVE = 0.55 covers both within 6%. Those runs used the
                                    allocator's fixed segments; SFT now asks for expandable
                                    ones, which fragment less: an upper bound there.
Host: each rank loads the fp32 model before sharding: 4N per rank on the node, + 4 GiB.

Inference (evaluation, per-sample losses), bf16 weights on one GPU, B sequences of T tokens:
  weights c·N · KV cache 2·L·kv_heads·head_dim·c per token of B·(T + new tokens) (HF keeps the
  cache in scoring forwards too) · one layer's activations (6h + 3i)·c per token · logits: a
  scoring forward B·T·V·(c + 8) (the fp32 copy and log-softmax), a generation step B·V·(c + 8)
  · the same context and reserve.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import OrdermergeError
from .safetensors_header import has_weights, tensor_numels
from .sft_config import SFTConfig, micro_accum

GiB = 2**30
MiB = 2**20
CONTEXT = 1 * GiB
RESERVE = 0.55  # fitted: see the module docstring
# allocated once and kept for the whole job: no fragmentation reserve on them
PERSISTENT = ("weights (fp32 shards)", "AdamW moments", "weights")
OPTIMIZERS = ("fused", "foreach")


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    tied: bool
    heads: int = 1
    kv_heads: int = 1

    @property
    def layer_params(self) -> int:
        return (self.params - self.root_params) // max(1, self.layers)

    @property
    def root_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        """Elements of the K and V cache per token, over all layers."""
        return 2 * self.layers * self.kv_heads * (self.hidden // self.heads)


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
    stored = sum(tensor_numels(folder).values()) if folder and has_weights(folder) else 0
    params = stored or layers * per_layer + vocab * h * (1 if tied else 2) + h
    return ModelShape(params, layers, h, i, vocab, tied, heads, kv)


@dataclass(frozen=True)
class MemoryPlan:
    gpus: int
    per_gpu: dict[str, int]  # bytes, by component
    host: int  # bytes on the node

    @property
    def total(self) -> int:
        return sum(self.per_gpu.values())

    @property
    def mb(self) -> int:
        """The total in MB (2^20 bytes), as a Snakemake resource declares it."""
        return math.ceil(self.total / MiB)

    def fits(self, gpu_memory: int) -> bool:
        return self.total <= gpu_memory


def _held(allocations: dict[str, int]) -> dict[str, int]:
    """The allocation terms plus what the process holds beyond them."""
    per_step = sum(v for k, v in allocations.items() if k not in PERSISTENT)
    return {**allocations, "CUDA context": CONTEXT, "allocator reserve": math.ceil(RESERVE * per_step)}


def plan_memory(shape: ModelShape, sft: dict[str, Any], gpus: int, compute_bytes: int = 2,
                optimizer: str = "fused") -> MemoryPlan:
    """The memory of training `shape` with the SFT settings `sft` (a config's sft mapping)
    under FSDP2 over `gpus` GPUs of one node, with `optimizer` AdamW (fused: what ordermerge.sft
    runs on CUDA; foreach: torch's default, which the 2026-12-04 measurements ran)."""
    if optimizer not in OPTIMIZERS:
        raise OrdermergeError(f"optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    cfg = SFTConfig.from_dict(sft)
    n, g, c = shape.params, gpus, compute_bytes
    lora = cfg.lora_r > 0
    micro, _ = micro_accum(cfg.batch_size, cfg.micro_batch_size, g)
    tokens = micro * cfg.max_length
    act_layer = 34 * tokens * shape.hidden * c // 2
    if cfg.gradient_checkpointing:
        activations = act_layer + shape.layers * tokens * shape.hidden * c
    else:
        activations = shape.layers * act_layer
    trained = 0 if lora else n  # LoRA adapters are a rounding error next to the base
    per_gpu = {
        "weights (fp32 shards)": 4 * n // g,
        "gradients (fp32 shards)": 4 * trained // g,
        "AdamW moments": 8 * trained // g,
        "optimizer step temporaries": 4 * trained // g if optimizer == "foreach" else 0,
        "unsharded compute weights": (shape.root_params + 2 * shape.layer_params) * c,
        "unsharded gradients": (shape.root_params + 2 * shape.layer_params) * (c + 4) * (not lora),
        "activations": activations,
        "logits": tokens * shape.vocab * (c + 8),
    }
    return MemoryPlan(g, _held(per_gpu), 4 * n * g + 4 * GiB)


def gradient_bytes(plan: MemoryPlan) -> int:
    """The plan's bound on the gradient bytes a rank holds at any moment of a step."""
    return plan.per_gpu["gradients (fp32 shards)"] + plan.per_gpu["unsharded gradients"]


def plan_inference(shape: ModelShape, batch: int, tokens: int, new_tokens: int = 0,
                   compute_bytes: int = 2) -> MemoryPlan:
    """One GPU running `shape` on batches of `batch` sequences of up to `tokens` tokens:
    scoring them (new_tokens 0) or generating `new_tokens` more after them."""
    c, seq = compute_bytes, batch * (tokens + new_tokens)
    logit_rows = batch if new_tokens else batch * tokens
    allocations = {
        "weights": c * shape.params,
        "KV cache": c * shape.kv_bytes_per_token * seq,
        "activations (one layer)": (6 * shape.hidden + 3 * shape.intermediate) * c * batch * tokens,
        "logits": logit_rows * shape.vocab * (c + 8),
    }
    return MemoryPlan(1, _held(allocations), 4 * shape.params + 4 * GiB)


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


def sft_defaults() -> dict[str, Any]:
    """Every SFT setting at its default (the one copy: ordermerge.sft_config.SFTConfig)."""
    return asdict(SFTConfig())


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
