"""Order-exact supervised fine-tuning on PyTorch FSDP2, one code path for any number of ranks.

The loop is written out (no Trainer sampler, no DataLoader workers, no DistributedSampler) so
that the model provably sees the samples in the order file's sequence: optimizer step s of
epoch e takes the next `batch_size` ids of `order["epochs"][e]` (the global batch, whatever
the number of processes). With W ranks, every micro-step covers `micro_batch_size · W` of them
and rank r takes slice r; gradients are summed across ranks (FSDP2 reduce-scatter, forced to a
sum on every sharded module) on every micro-step. Within a step the samples are sorted by
length before they are cut into micro-batches (less padding); the step's samples, the loss and
the ids the log records (in the order file's order) are unchanged.

Why reduce-scatter on every micro-step (FSDP2's default; torchtitan's choice) and not only on
the last: skipping it (`set_requires_gradient_sync(False)`) makes every rank accumulate
unsharded fp32 gradients of the whole model (4N bytes) until the step's last micro-step, which
at 2+ ranks with accumulation is more than the whole sharded state the memory plan counts
(configs/paper.yaml: ~25 GiB more per GPU). Reduce-scattering each micro-step keeps a rank at
its 4N/G gradient shard plus the unsharded gradients of the layers in flight, the plan's two
gradient terms (tests/test_sft.py measures them at 2 ranks with accumulation 4), for one more
collective per micro-step that overlaps the next layer's backward.

Loss = Σ NLL(response tokens of the global batch) / #response tokens of the global batch,
so accumulation and the number of processes do not change the objective: 1 and W ranks take
the same steps on the same ids and end with the same weights up to float summation order.

Parameters, gradients and AdamW state are sharded across ranks (`fully_shard` on every decoder
layer and the root); with a 16-bit compute dtype, FSDP2 keeps bf16/fp16 parameters for compute
and reduces gradients in fp32 against fp32 master weights. Checkpoints are
torch.distributed.checkpoint step folders (each rank writes its own shard), published
atomically; a restarted job resumes in place from the newest and, on CPU, ends bit-identical to
an uninterrupted run with the same number of processes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import OrdermergeError
from .atomic import atomic_dir, check_output
from .catalog import DTYPES
from .gpu import cap_memory, use_expandable_segments, within_declared_memory
from .jsonl import read_jsonl
from .models import FINGERPRINT, load_tokenizer
from .orders import read_order
from .sft_config import SFTConfig, compute_bytes, micro_accum
from .text import DEFAULT_PROMPT, IGNORE, PromptFormat, collate, encode, response_logits

SFT_META = "ordermerge_sft.json"
STEP_DIR = re.compile(r"^step-(\d{7})$")


def _dist() -> tuple[int, int, torch.device]:
    """(rank, world size, device): one process group for every run, a one-rank one included,
    so that FSDP2 and the distributed checkpoint run the same code at any size."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        kw: dict[str, Any] = {"backend": "nccl" if cuda else "gloo"}
        if cuda:
            torch.cuda.set_device(device)  # every rank on its own GPU, collectives included
            kw["device_id"] = device
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            kw.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(**kw)
    return dist.get_rank(), dist.get_world_size(), device


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


@dataclass
class SFTPlan:
    """The order-exact schedule: optimizer step s of epoch e takes the next `batch_size` ids
    of `order["epochs"][e]`, in `accum` micro-steps of `micro · world` samples; each id's tokens
    are encoded once, in the experiment's prompt format."""

    steps: list[tuple[int, list[str]]]  # (epoch, ids) per optimizer step
    total: int  # steps to run (max_steps may cut the schedule)
    warmup: int
    micro: int  # samples per rank per forward
    accum: int  # micro-steps per optimizer step
    encoded: dict[str, tuple[list[int], int]]  # id -> (token ids, prompt length)
    truncated: list[str]  # ids whose tokens max_length cut, in data order


def encode_counting_cuts(tok, rows: list[dict[str, Any]], prompt: PromptFormat,
                         max_length: int) -> tuple[dict[str, tuple[list[int], int]], list[str]]:
    """Every row's (token ids cut at max_length, prompt length) by id, and the ids whose
    tokens were cut."""
    encoded, cut = {}, []
    for r in rows:
        ids, n_prompt = encode(tok, r["prompt"], r["response"], prompt)
        if len(ids) > max_length:
            cut.append(r["id"])
        encoded[r["id"]] = (ids[:max_length], n_prompt)
    return encoded, cut


def make_plan(rows: list[dict[str, Any]], order: dict[str, Any], cfg: SFTConfig, tok,
              prompt: PromptFormat, world: int) -> SFTPlan:
    epochs = order["epochs"][: cfg.epochs or len(order["epochs"])]
    encoded, truncated = encode_counting_cuts(tok, rows, prompt, cfg.max_length)
    gb = cfg.batch_size
    steps = [(e, ep[s : s + gb]) for e, ep in enumerate(epochs) for s in range(0, len(ep), gb)]
    total = len(steps) if cfg.max_steps is None else min(cfg.max_steps, len(steps))
    warmup = max(1, int(cfg.warmup_ratio * total)) if cfg.warmup_ratio > 0 else 0
    micro, accum = micro_accum(gb, cfg.micro_batch_size, world)
    return SFTPlan(steps, total, warmup, micro, accum, encoded, truncated)


def _decoder_layers(model) -> list[torch.nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names or type(m).__name__.endswith("DecoderLayer")]


def _lora(model, cfg: SFTConfig):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                            target_modules="all-linear", lora_dropout=0.0))


def _load_base(base: Path):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # fp32 master


def build_model(base: Path, cfg: SFTConfig, plan: SFTPlan, device: torch.device,
                amp: torch.dtype | None, world: int):
    """fp32 master weights (LoRA adapters if lora_r > 0) sharded by FSDP2 over every rank,
    AdamW on the shards and the LR schedule."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    torch.manual_seed(cfg.seed)
    model = _load_base(base)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        model = _lora(model, cfg)
    model.to(device).train()
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # the loss is already normalised by the global batch's tokens: sum the ranks'
            # gradients, don't average them (divide factor 1), with plain SUM collectives (gloo
            # has no PREMUL_SUM); set on every sharded module (neither setting recurses)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused on CUDA: one kernel over all shards and no 4N/G temporaries (ordermerge.plan counts
    # none); torch's CPU default (one tensor at a time) keeps CPU runs bit-identical
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _schedule(cfg.schedule, s, plan.total, plan.warmup))
    return model, params, opt, sched


def _checkpoints(scratch: Path) -> list[Path]:
    """Complete step folders, oldest first (a folder is renamed into place when complete)."""
    if not scratch.is_dir():
        return []
    return sorted(p for p in scratch.iterdir() if STEP_DIR.match(p.name) and (p / "trainer.pt").exists())


def save_checkpoint(scratch: Path, step: int, model, opt, sched, log: list[dict[str, Any]],
                    keep: int, rank: int) -> None:
    """Every rank writes its shard of model and optimizer (torch.distributed.checkpoint) and its
    RNG state into a hidden step folder, which rank 0 publishes by one rename; the newest
    `keep` checkpoints are kept."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = scratch / f".step-{step:07d}.partial"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: a killed earlier save of this step
        tmp.mkdir(parents=True)
    dist.barrier()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    torch.save(torch.get_rng_state(), tmp / f"rng-{rank}.pt")
    dist.barrier()
    if rank == 0:
        torch.save({"step": step, "log": log, "scheduler": sched.state_dict()}, tmp / "trainer.pt")
        tmp.rename(scratch / f"step-{step:07d}")
        for old in _checkpoints(scratch)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()


def restore(scratch: Path, model, opt, sched, rank: int) -> tuple[int, list[dict[str, Any]]]:
    """(first step, log so far): from the newest checkpoint in `scratch`, loaded in place into
    the sharded model and optimizer; the RNG state per rank, on the CPU."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    found = _checkpoints(scratch)
    if not found:
        return 0, []
    latest = found[-1]
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(latest))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = latest / f"rng-{rank}.pt"
    if not rng.exists():
        raise OrdermergeError(f"{latest}: written by another number of processes (no {rng.name}); "
                              "resume with the same --nproc or remove the scratch folder")
    torch.set_rng_state(torch.load(rng, map_location="cpu"))
    trainer = torch.load(latest / "trainer.pt", map_location="cpu", weights_only=False)
    sched.load_state_dict(trainer["scheduler"])
    return trainer["step"], trainer["log"]


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # summed NLL of the global batch, float64, on the device
    tokens: int  # response tokens of the global batch
    ids: list[str]  # the global batch, in the order file's order
    input_tokens: int  # non-padding tokens forwarded, prompts included, over all ranks
    padded_tokens: int  # tokens forwarded with padding, over all ranks


def micro_batches(plan: SFTPlan, step: int, world: int) -> list[list[list[str]]]:
    """[micro-step][rank] -> ids: the step's samples sorted by length (longest first, ties in
    order-file order) when they take more than one forward, so each forward pads less; cut
    into `accum` micro-steps of `micro` samples per rank."""
    ids = plan.steps[step][1]
    if plan.accum * world > 1:
        ids = sorted(ids, key=lambda i: -len(plan.encoded[i][0]))  # stable: ties keep the order
    width = plan.micro * world
    return [[ids[a * width : (a + 1) * width][r * plan.micro : (r + 1) * plan.micro]
             for r in range(world)] for a in range(plan.accum)]


def train_step(model, plan: SFTPlan, step: int, tok, device: torch.device, rank: int,
               world: int) -> StepResult:
    """Forward and backward over one optimizer step's samples (this rank's slice of every
    micro-batch), gradients reduce-scattered (summed across ranks) on every micro-step. The
    loss stays on the device until the step is logged; the one host exchange is the gather of
    the ids each rank trained on (the log's witness), after the last backward."""
    ids = plan.steps[step][1]
    n_tokens = sum(len(plan.encoded[i][0]) - plan.encoded[i][1] for i in ids)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    parts = micro_batches(plan, step, world)
    for per_rank in parts:
        mine = per_rank[rank]
        # every rank joins every micro-step's collectives: one with no sample left runs the
        # step's first sample with weight 0 (no gradient, no loss)
        weight = 1.0 if mine else 0.0
        batch = collate([plan.encoded[i] for i in (mine or ids[:1])], tok.pad_token_id)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        logits, labels = response_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE, reduction="sum") * weight
        (nll / n_tokens).backward()
        loss_sum += nll.detach().double()
    dist.all_reduce(loss_sum)
    gathered: list[Any] = [None] * world  # what each rank trained on: the log's witness
    dist.all_gather_object(gathered, [per_rank[rank] for per_rank in parts])
    seen = [i for g in gathered for part in g for i in part]
    if sorted(seen) != sorted(ids):
        raise OrdermergeError(f"step {step + 1}: the ranks trained on other samples than the order file's")
    lengths = [[len(plan.encoded[i][0]) for i in mine] for per_rank in parts for mine in per_rank]
    return StepResult(loss_sum, n_tokens, list(ids), sum(map(sum, lengths)),
                      sum(len(x) * max(x, default=0) for x in lengths))


def _check_memory_plan(base: Path, cfg: SFTConfig, world: int, device: torch.device) -> int:
    """Fail in one line before loading the model, not at the first optimizer step, when the
    memory plan (ordermerge.plan) does not fit this job's GPUs; else the plan's bytes per GPU."""
    from .plan import GiB, model_shape, plan_memory

    plan = plan_memory(model_shape(base), asdict(cfg), world, compute_bytes(cfg.dtype))
    have = torch.cuda.get_device_properties(device).total_memory
    if not plan.fits(have):
        raise OrdermergeError(
            f"SFT does not fit: the memory plan needs {plan.total / GiB:.1f} GiB per GPU on {world} "
            f"GPU(s), this GPU has {have / GiB:.1f} GiB (`ordermerge plan --base {base}` shows "
            "the smallest GPU count that fits)")
    return plan.total


def _amp_dtype(cfg: SFTConfig, device: torch.device) -> torch.dtype | None:
    compute = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    if compute not in DTYPES:
        raise OrdermergeError(f"sft config: dtype {cfg.dtype!r}: expected auto, bfloat16, float16 or float32")
    return None if compute == "float32" else getattr(torch, compute)


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm (over every rank's shards) to max_norm; returns the norm,
    on the device (read with the step's loss, in one synchronisation)."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _memory_record(device: torch.device) -> dict[str, float]:
    """GiB: the allocated and the reserved peak since the step began, and the device memory
    in use now (every process on the GPU, as nvidia-smi counts it: context included)."""
    free, total = torch.cuda.mem_get_info(device)
    return {"gpu_allocated_peak_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "gpu_reserved_peak_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
            "gpu_used_gb": round((total - free) / 2**30, 3)}


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
    base, out = Path(base), Path(out)
    check_output(out, SFT_META, [base, data, order_path])  # before training, not after
    scratch = Path(scratch) if scratch else out.parent / f".{out.name}.scratch"
    use_expandable_segments()
    rank, world, device = _dist()
    with within_declared_memory("sft"):
        return _train(base, data, order_path, out, cfg, scratch, progress, prompt, rank, world, device)


def _train(base: Path, data: str | Path, order_path: str | Path, out: Path, cfg: SFTConfig,
           scratch: Path, progress: bool, prompt: PromptFormat, rank: int, world: int,
           device: torch.device) -> dict[str, Any]:
    from tqdm import tqdm

    rows = read_jsonl(data)
    if not rows:
        raise OrdermergeError(f"{data}: empty dataset")
    order = read_order(order_path, [r["id"] for r in rows])
    tok = load_tokenizer(str(base))
    plan = make_plan(rows, order, cfg, tok, prompt, world)
    if plan.truncated and rank == 0:
        sys.stderr.write(f"ordermerge: warning: {len(plan.truncated)} of {len(rows)} samples are longer "
                         f"than sft.max_length {cfg.max_length} tokens and were cut to it (ids in "
                         f"{SFT_META})\n")
    amp = _amp_dtype(cfg, device)
    if device.type == "cuda":
        cap_memory(device, at_least=_check_memory_plan(base, cfg, world, device))
    model, params, opt, sched = build_model(base, cfg, plan, device, amp, world)
    start, log = restore(scratch, model, opt, sched, rank)
    if start and rank == 0:
        print(f"resuming from checkpoint at step {start} ({scratch})", flush=True)
    t0 = time.perf_counter() - (log[-1]["seconds"] if log else 0.0)
    bar = tqdm(total=plan.total, initial=start, desc=f"sft {out.parent.name}", unit="step",
               disable=not progress or rank != 0)
    for step in range(start, plan.total):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # each step's peaks, not setup's
        opt.zero_grad(set_to_none=True)
        res = train_step(model, plan, step, tok, device, rank, world)
        norm = _grad_norm(params, cfg.max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        loss_sum, grad_norm = torch.stack([res.loss_sum, norm.double()]).tolist()  # the one sync
        log.append({"step": step + 1, "epoch": plan.steps[step][0] + 1, "loss": loss_sum / res.tokens,
                    "grad_norm": grad_norm, "lr": lr, "tokens": res.tokens,
                    "input_tokens": res.input_tokens, "padded_tokens": res.padded_tokens,
                    "seconds": round(time.perf_counter() - t0, 3), "ids": res.ids})
        if device.type == "cuda":
            log[-1].update(_memory_record(device))
        bar.update(1)
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < plan.total:
            save_checkpoint(scratch, step + 1, model, opt, sched, log, cfg.checkpoint_keep, rank)
    bar.close()
    full = _full_state_dict(model)  # a collective: every rank takes part, rank 0 gets the weights
    if rank == 0:
        _save(_unsharded(base, cfg, full), tok, base, out, _save_dtype(base, cfg), log, cfg,
              order_path, data, prompt, plan.truncated)
        _clear_scratch(scratch)
    dist.barrier()
    return {"steps": plan.total, "log": log}


def _full_state_dict(model) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _unsharded(base: Path, cfg: SFTConfig, full: dict[str, torch.Tensor]):
    """A plain CPU model holding the trained weights (LoRA adapters merged into them)."""
    model = _load_base(base)
    if cfg.lora_r > 0:
        model = _lora(model, cfg)
    model.load_state_dict(full)
    return model.merge_and_unload() if cfg.lora_r > 0 else model


def _clear_scratch(scratch: Path) -> None:
    """Remove the checkpoints this loop wrote, and the folder only if nothing else is in it:
    --scratch may name a folder that holds other things."""
    if not scratch.is_dir():
        return
    for p in scratch.iterdir():
        if STEP_DIR.match(p.name) or re.fullmatch(r"\.step-\d{7}\.partial", p.name):
            shutil.rmtree(p)
    try:
        scratch.rmdir()
    except OSError:
        pass


def _save_dtype(base: Path, cfg: SFTConfig) -> torch.dtype:
    """save_dtype, else the base's stored dtype (so that bf16 rounding zeros survive)."""
    name = cfg.save_dtype or json.loads((base / "config.json").read_text()).get("dtype", "float32")
    return getattr(torch, name) if name in DTYPES else torch.float32


def _save(model, tok, base: Path, out: Path, save_dtype, log, cfg, order_path, data, prompt,
          truncated: list[str]) -> None:
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
            # samples whose tokens sft.max_length cut: trained on their first max_length tokens
            "truncated": {"count": len(truncated), "ids": truncated},
        }
        (tmp / SFT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def sample_losses(model_dir: str | Path, data: str | Path, order_path: str | Path,
                  batch_size: int = 16, prompt: PromptFormat = DEFAULT_PROMPT, max_length: int = 512,
                  progress: bool = True):
    """Each training sample's final loss (mean response NLL, fp32) and its position per epoch."""
    import pandas as pd

    from .models import inference_placement, load_model
    from .text import per_sample_nll

    rows = read_jsonl(data)
    order = read_order(order_path, [r["id"] for r in rows])
    tok = load_tokenizer(str(model_dir))
    device, dtype = inference_placement()
    cap_memory(torch.device(device))
    encoded, cut = encode_counting_cuts(tok, rows, prompt, max_length)
    with within_declared_memory("sample_losses"):
        model = load_model(model_dir, dtype=dtype, device=device)
        loss, n = per_sample_nll(model, [encoded[r["id"]] for r in rows], tok.pad_token_id,
                                 batch_size, progress, "sample losses")
    df = pd.DataFrame({"id": [r["id"] for r in rows], "loss": loss, "n_tokens": n})
    df["truncated"] = df["id"].isin(set(cut))  # scored on its first max_length tokens only
    for e, perm in enumerate(order["epochs"]):
        pos = {i: p for p, i in enumerate(perm)}
        df[f"pos_epoch{e + 1}"] = [pos[i] for i in df["id"]]
    df["order"] = order["order"]
    return df
