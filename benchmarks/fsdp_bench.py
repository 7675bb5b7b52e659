"""FSDP2 SFT on CPU: the cost at one rank against the previous replicated loop, the sharding
at two ranks (peak RSS per rank, checkpoint size per rank) and the weight difference between
two ranks and one.

    python benchmarks/fsdp_bench.py --old-src <checkout of the replicated loop>/src [--steps 6]

Runs every SFT as its own process (`ordermerge sft`, one thread per rank); the old loop is
imported from --old-src (PYTHONPATH), the new one from this checkout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from workdir import work_dir

from ordermerge.data import prepare_data
from ordermerge.jsonl import read_jsonl
from ordermerge.models import load_tokenizer, prepare_base
from ordermerge.orders import make_order, write_order

SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4}


def sft(w: Path, out: str, cfg: dict, nproc: int = 1, src: str | None = None,
        kill_after_checkpoint: bool = False) -> tuple[list[dict], int]:
    """(train log, peak RSS in KiB of the largest process) of one `ordermerge sft` run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if src:
        env["PYTHONPATH"] = src
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "ordermerge", "-q", "sft", "--base",
           str(w / "base"), "--data", str(w / "data/train.jsonl"), "--order", str(w / "order.json"),
           "--config", json.dumps(cfg), "--out", str(w / out), "--scratch", str(w / f"{out}.scratch")]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    if kill_after_checkpoint:
        p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
        scratch = w / f"{out}.scratch"
        while not (scratch.is_dir() and any(x.name.startswith("step-") for x in scratch.iterdir())):
            time.sleep(0.2)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return [], 0
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    log = [json.loads(x) for x in (w / out / "train_log.jsonl").read_text().splitlines()]
    return log, int(res.stderr.strip().splitlines()[-1])


def step_seconds(log: list[dict]) -> float:
    """Median seconds per step, the first step (warm-up) left out."""
    times = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(log)]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", required=True, help="src/ of a checkout with the replicated loop")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    a = ap.parse_args()
    w = work_dir(a.work, "fsdp-bench")
    prepare_base("tiny", w / "base", "bfloat16", 0, SHAPE)
    prepare_data({"format": "gsm_symbolic", "train_size": 8 * a.steps, "test_size": 4, "max_tokens": 256},
                 load_tokenizer(str(w / "base")), w / "data")
    write_order(make_order([r["id"] for r in read_jsonl(w / "data/train.jsonl")], 1, 1), w / "order.json")
    cfg = {"batch_size": 8, "max_length": 256, "lr": 1e-4, "max_steps": a.steps}
    old_cfg = dict(cfg)
    rows = []
    old_s, new_s = [], []
    for r in range(a.repeats):  # interleaved, so drift hits both alike
        old_s.append(step_seconds(sft(w, f"old{r}", old_cfg, src=a.old_src)[0]))
        new_s.append(step_seconds(sft(w, f"new{r}", {**cfg, "max_grad_norm": None})[0]))
    ratio = statistics.median(new_s) / statistics.median(old_s)
    rows.append(("s/step, 1 process: replicated loop -> FSDP2", f"{statistics.median(old_s):.3f} -> "
                 f"{statistics.median(new_s):.3f} ({ratio - 1:+.1%})"))
    one_log, one_rss = sft(w, "one", cfg)
    two_log, two_rss = sft(w, "two", cfg, nproc=2)
    rows.append(("peak RSS per rank, 1 rank -> 2 ranks", f"{one_rss / 2**20:.2f} -> {two_rss / 2**20:.2f} GiB"))
    rows.append(("s/step, 2 ranks (1 thread each)", f"{step_seconds(two_log):.3f}"))
    from safetensors.torch import load_file

    x, y = load_file(str(w / "one/model.safetensors")), load_file(str(w / "two/model.safetensors"))
    diff = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
    same = sum(int((x[k] == y[k]).sum()) for k in x) / sum(x[k].numel() for k in x)
    rows.append(("weights, 2 ranks vs 1 (bf16)", f"max |diff| {diff:.2e}, {same:.2%} of elements identical"))
    loss = max(abs(p["loss"] - q["loss"]) for p, q in zip(one_log, two_log, strict=True))
    rows.append(("loss per step, 2 ranks vs 1", f"max |diff| {loss:.1e}"))
    sft(w, "ckpt", {**cfg, "checkpoint_every": 2}, nproc=2, kill_after_checkpoint=True)
    step = next((w / "ckpt.scratch").glob("step-*"))
    shards = {p.name: p.stat().st_size for p in step.iterdir()}
    rows.append(("checkpoint files per rank (model + AdamW shard)", ", ".join(
        f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(shards.items()) if k.endswith(".distcp"))))
    params = sum(t.numel() for t in load_file(str(w / "base/model.safetensors")).values())
    rows.append(("model", f"{params / 1e6:.1f} M parameters; fp32 weights + AdamW = {12 * params / 2**20:.0f} MiB"))
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
