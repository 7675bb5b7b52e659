"""Order-exact supervised fine-tuning.

The loop is written out (no Trainer sampler, no DataLoader workers, no DistributedSampler) so
that the model provably sees the samples in the order file's sequence: step s of epoch e takes
the next `global_batch` ids of `order["epochs"][e]`; with W processes, rank r trains on slice r
of every micro-batch and gradients are summed across ranks, so the global step is the
single-process step (up to float summation order).

Loss = Σ NLL(response tokens of the global batch) / #response tokens of the global batch,
so gradient accumulation and the number of processes do not change the objective.
Checkpoints (fp32 master weights, optimizer, scheduler, step, log) go to a scratch folder every
`checkpoint_every` steps; a restarted job resumes from there and, on CPU, ends with bit-identical
weights to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import OrdermergeError
from .atomic import atomic_dir, atomic_file, check_output, clear_stale_partials
from .catalog import DTYPES
from .models import FINGERPRINT, load_tokenizer
from .orders import read_order
from .text import DEFAULT_PROMPT, IGNORE, PromptFormat, collate, encode, read_jsonl, response_logits

SFT_META = "ordermerge_sft.json"


@dataclass
class SFTConfig:
    lr: float = 5e-5
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.03
    epochs: int | None = None  # default: every epoch in the order file
    batch_size: int = 8  # per device
    grad_accum: int = 1
    max_length: int = 512
    # Compute dtype: "auto" = bf16 autocast on CUDA, float32 on CPU (bf16 matmul backward on a
    # small CPU is pathologically slower than fp32: docs/MEASUREMENTS.md).
    dtype: str = "auto"
    save_dtype: str | None = None  # default: the base model's dtype
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0 = never
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


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _schedule(name: str, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    frac = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return max(0.0, 1.0 - frac)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    raise OrdermergeError(f"sft config: schedule {name!r}: expected linear, cosine or constant")


def _clear_scratch(scratch: Path) -> None:
    """Remove the checkpoint this loop wrote, and the folder only if nothing else is in it:
    --scratch may name a folder that holds other things."""
    (scratch / "ckpt.pt").unlink(missing_ok=True)
    clear_stale_partials(scratch / "ckpt.pt")
    try:
        scratch.rmdir()
    except OSError:
        pass


def _save_ckpt(scratch: Path, state: dict[str, Any]) -> None:
    with atomic_file(scratch / "ckpt.pt") as tmp:  # a kill leaves the previous checkpoint intact
        torch.save(state, tmp)


@dataclass
class SFTPlan:
    """The order-exact schedule: optimizer step s of epoch e takes the next `global_batch` ids
    of `order["epochs"][e]`; each id's tokens are encoded once, in the experiment's prompt
    format."""

    steps: list[tuple[int, list[str]]]  # (epoch, ids) per optimizer step
    total: int  # steps to run (max_steps may cut the schedule)
    warmup: int
    encoded: dict[str, tuple[list[int], int]]  # id -> (token ids, prompt length)


def make_plan(rows: list[dict[str, Any]], order: dict[str, Any], cfg: SFTConfig, tok,
              prompt: PromptFormat, world: int) -> SFTPlan:
    epochs = order["epochs"][: cfg.epochs or len(order["epochs"])]
    encoded = {r["id"]: encode(tok, r["prompt"], r["response"], prompt, cfg.max_length) for r in rows}
    gb = cfg.batch_size * cfg.grad_accum * world  # samples per optimizer step
    steps = [(e, ep[s : s + gb]) for e, ep in enumerate(epochs) for s in range(0, len(ep), gb)]
    total = len(steps) if cfg.max_steps is None else min(cfg.max_steps, len(steps))
    warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    return SFTPlan(steps, total, warmup, encoded)


def build_model(base: Path, cfg: SFTConfig, plan: SFTPlan, device: torch.device):
    """fp32 master weights (LoRA adapters if lora_r > 0), AdamW and the LR schedule."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 target_modules="all-linear", lora_dropout=0.0))
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _schedule(cfg.schedule, s, plan.total, plan.warmup))
    return model, params, opt, sched


def restore(scratch: Path, model, opt, sched, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """(first step, log so far): from the checkpoint in `scratch` if there is one."""
    ckpt = scratch / "ckpt.pt"
    if not ckpt.exists():
        return 0, []
    state = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["log"]


def train_step(model, params, plan: SFTPlan, step: int, cfg: SFTConfig, tok, device: torch.device,
               amp: torch.dtype | None, rank: int, world: int) -> tuple[float, int, list[str]]:
    """Forward and backward over one optimizer step's samples (this rank's slice of every
    micro-batch), gradients summed across ranks. Loss = Σ NLL(response tokens of the global
    batch) / #those tokens, so accumulation and world size leave the objective unchanged.
    Returns (summed NLL, response tokens, ids in global order)."""
    ids = plan.steps[step][1]
    n_tokens = sum(len(plan.encoded[i][0]) - plan.encoded[i][1] for i in ids)
    loss_sum = 0.0
    seen = []
    for a in range(cfg.grad_accum):
        micro = ids[a * cfg.batch_size * world : (a + 1) * cfg.batch_size * world]
        mine = micro[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
        seen.append(mine)
        if not mine:
            continue
        batch = {k: v.to(device) for k, v in collate([plan.encoded[i] for i in mine], tok.pad_token_id).items()}
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits, labels = response_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE, reduction="sum")
        (nll / n_tokens).backward()
        loss_sum += float(nll.detach())
    if world == 1:
        return loss_sum, n_tokens, [i for m in seen for i in m]
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    t = torch.tensor([loss_sum], device=device)
    dist.all_reduce(t)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, seen)
    return float(t), n_tokens, [i for a in range(cfg.grad_accum) for r in range(world) for i in gathered[r][a]]


def _amp_dtype(cfg: SFTConfig, device: torch.device) -> torch.dtype | None:
    compute = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    if compute not in DTYPES:
        raise OrdermergeError(f"sft config: dtype {cfg.dtype!r}: expected auto, bfloat16, float16 or float32")
    return None if compute == "float32" else getattr(torch, compute)


def train(
    base: str | Path,
    data: str | Path,
    order_path: str | Path,
    out: str | Path,
    cfg: SFTConfig,
    scratch: str | Path | None = None,
    progress: bool = True,
    prompt: PromptFormat = DEFAULT_PROMPT,
) -> dict[str, Any]:
    """Fine-tune `base` on `data` in the order of `order_path`; write an HF folder at `out`.
    Samples are formatted with `prompt`, the experiment's one prompt format."""
    from tqdm import tqdm

    base, out = Path(base), Path(out)
    check_output(out, SFT_META, [base, data, order_path])  # before training, not after
    scratch = Path(scratch) if scratch else out.parent / f".{out.name}.scratch"
    rank, world = _dist()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    rows = read_jsonl(data)
    if not rows:
        raise OrdermergeError(f"{data}: empty dataset")
    order = read_order(order_path, [r["id"] for r in rows])
    tok = load_tokenizer(str(base))
    plan = make_plan(rows, order, cfg, tok, prompt, world)
    model, params, opt, sched = build_model(base, cfg, plan, device)
    start, log = restore(scratch, model, opt, sched, device)
    if start and rank == 0:
        print(f"resuming from checkpoint at step {start} ({scratch / 'ckpt.pt'})", flush=True)
    amp = _amp_dtype(cfg, device)
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)
    bar = tqdm(total=plan.total, initial=start, desc=f"sft {out.parent.name}", unit="step",
               disable=not progress or rank != 0)
    for step in range(start, plan.total):
        opt.zero_grad(set_to_none=True)
        loss_sum, n_tokens, ids = train_step(model, params, plan, step, cfg, tok, device, amp, rank, world)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        log.append({"step": step + 1, "epoch": plan.steps[step][0] + 1, "loss": loss_sum / n_tokens,
                    "lr": lr, "tokens": n_tokens, "seconds": round(time.perf_counter() - t0, 3),
                    "ids": ids})
        bar.update(1)
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < plan.total \
                and rank == 0:
            _save_ckpt(scratch, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
                                 "step": step + 1, "log": log})
    bar.close()
    if rank == 0:
        if cfg.lora_r > 0:
            model = model.merge_and_unload()  # merging always sees full weights
        _save(model, tok, base, out, _save_dtype(base, cfg), log, cfg, order_path, data, prompt)
        _clear_scratch(scratch)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {"steps": plan.total, "log": log}


def _save_dtype(base: Path, cfg: SFTConfig) -> torch.dtype:
    """save_dtype, else the base's stored dtype (so that bf16 rounding zeros survive)."""
    name = cfg.save_dtype or json.loads((base / "config.json").read_text()).get("dtype", "float32")
    return getattr(torch, name) if name in DTYPES else torch.float32


def _save(model, tok, base: Path, out: Path, save_dtype, log, cfg, order_path, data, prompt) -> None:
    model = model.to("cpu", save_dtype)
    model.config.dtype = str(save_dtype).removeprefix("torch.")
    with atomic_dir(out, SFT_META, [base, data, order_path]) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(tmp / "train_log.jsonl", "w") as f:
            for rec in log:
                f.write(json.dumps(rec) + "\n")
        fp = base / FINGERPRINT
        meta = {
            "base": str(base),
            "base_weights_sha256": json.loads(fp.read_text())["weights_sha256"] if fp.exists() else None,
            "order_file": str(order_path),
            "data": str(data),
            "config": asdict(cfg),
            "prompt": asdict(prompt),
        }
        (tmp / SFT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def sample_losses(model_dir: str | Path, data: str | Path, order_path: str | Path,
                  batch_size: int = 16, prompt: PromptFormat = DEFAULT_PROMPT, max_length: int = 512,
                  progress: bool = True):
    """Each training sample's final loss (mean response NLL, fp32) and its position per epoch."""
    import pandas as pd

    from .models import load_model
    from .text import per_sample_nll

    rows = read_jsonl(data)
    order = read_order(order_path, [r["id"] for r in rows])
    tok = load_tokenizer(str(model_dir))
    model = load_model(model_dir, dtype=torch.float32)
    enc = [encode(tok, r["prompt"], r["response"], prompt, max_length) for r in rows]
    loss, n = per_sample_nll(model, enc, tok.pad_token_id, batch_size, progress, "sample losses")
    df = pd.DataFrame({"id": [r["id"] for r in rows], "loss": loss, "n_tokens": n})
    for e, perm in enumerate(order["epochs"]):
        pos = {i: p for p, i in enumerate(perm)}
        df[f"pos_epoch{e + 1}"] = [pos[i] for i in df["id"]]
    df["order"] = order["order"]
    return df
