"""Response-loss evaluation time against the batch size (one thread, CPU), and how far the
per-item losses move with it.

Batches are sorted by length but padded to their longest member, so on a CPU, where the
forward is compute-bound, a big batch pays for its padding; on a GPU the opposite holds.

    python benchmarks/loss_bench.py --model results/smollm2_gsm/base \
        --data results/smollm2_gsm/data/test_id.jsonl --batch-sizes 16 8 4 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ordermerge.jsonl import read_jsonl
from ordermerge.models import load_model, load_tokenizer
from ordermerge.text import DEFAULT_PROMPT, encode, per_sample_nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 8, 4, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=torch.float32)
    enc = [encode(tok, r["prompt"], r["response"], DEFAULT_PROMPT, a.max_length) for r in read_jsonl(a.data)]
    tokens = sum(len(ids) for ids, _ in enc)
    print(f"{len(enc)} items, {tokens / len(enc):.0f} tokens on average, {a.threads} thread(s), "
          f"median of {a.repeats} interleaved repeats")
    times: dict[int, list[float]] = {bs: [] for bs in a.batch_sizes}
    losses: dict[int, list[float]] = {}
    for _ in range(a.repeats):  # interleaved, so drift in the machine's speed hits every size
        for bs in a.batch_sizes:
            t0 = time.perf_counter()
            losses[bs], _ = per_sample_nll(model, enc, tok.pad_token_id, bs)
            times[bs].append(time.perf_counter() - t0)
    ref = a.batch_sizes[0]
    print(f"| batch | median s | min s | max s | vs {ref} | max abs loss change vs {ref} |")
    print("|---|---|---|---|---|---|")
    for bs in a.batch_sizes:
        med = statistics.median(times[bs])
        moved = max(abs(x - y) for x, y in zip(losses[bs], losses[ref], strict=True))
        print(f"| {bs} | {med:.1f} | {min(times[bs]):.1f} | {max(times[bs]):.1f} | "
              f"{med / statistics.median(times[ref]):.2f} | {moved:.1e} |")


if __name__ == "__main__":
    main()
