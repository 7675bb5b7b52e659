"""SFT step cost on a real model: ordermerge's training path vs a plain PyTorch loop.

Both consume the same batches (first `--steps` global batches of one order file) from the same
fp32 master weights with AdamW; the plain loop is the minimum: forward, masked cross-entropy,
backward, step. Prints seconds/step, tokens/s, overhead, and peak RSS.

    python benchmarks/sft_bench.py --base results/smollm2_gsm/base \
        --data results/smollm2_gsm/data/train.jsonl --steps 4 [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch

from ordermerge.jsonl import read_jsonl
from ordermerge.models import load_model, load_tokenizer
from ordermerge.orders import make_order, write_order
from ordermerge.sft import SFTConfig, train
from ordermerge.text import DEFAULT_PROMPT, IGNORE, collate, encode


def plain_loop(base: str, batches: list[list[tuple[list[int], int]]], pad: int, dtype: str) -> list[float]:
    model = load_model(base, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        batch = collate(b, pad)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE, reduction="sum") / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    rows = read_jsonl(a.data)
    ids = [r["id"] for r in rows]
    order = make_order(ids, 1, 1)
    tok = load_tokenizer(a.base)
    by_id = {r["id"]: r for r in rows}
    enc = [encode(tok, by_id[i]["prompt"], by_id[i]["response"], DEFAULT_PROMPT, a.max_length) for i in order["epochs"][0]]
    batches = [enc[s : s + a.batch_size] for s in range(0, a.steps * a.batch_size, a.batch_size)]
    tokens = [sum(len(x[0]) for x in b) for b in batches]
    with tempfile.TemporaryDirectory() as d:
        write_order(order, Path(d) / "order.json")
        cfg = SFTConfig(batch_size=a.batch_size, max_length=a.max_length, dtype=a.dtype, max_steps=a.steps,
                        warmup_ratio=0.0)
        train(a.base, a.data, Path(d) / "order.json", Path(d) / "out", cfg, progress=False)
        log = [json.loads(x) for x in (Path(d) / "out/train_log.jsonl").read_text().splitlines()]
    ours = [log[0]["seconds"]] + [b["seconds"] - p["seconds"] for p, b in pairwise(log)]
    plain = plain_loop(a.base, batches, tok.pad_token_id, a.dtype)
    # the first step warms up allocators and kernels in both paths: report the rest
    o, p = statistics.median(ours[1:] or ours), statistics.median(plain[1:] or plain)
    tok_per_step = statistics.mean(tokens)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| path | dtype | s/step (median, steps 2..{a.steps}) | tokens/s | overhead |")
    print("|---|---|---|---|---|")
    print(f"| plain PyTorch loop | {a.dtype} | {p:.2f} | {tok_per_step / p:.0f} | - |")
    print(f"| ordermerge sft | {a.dtype} | {o:.2f} | {tok_per_step / o:.0f} | {100 * (o / p - 1):+.1f}% |")
    print(f"batch {a.batch_size} x ≤{a.max_length} tokens, {tok_per_step:.0f} tokens/step; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
