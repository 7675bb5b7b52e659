"""Greedy generation throughput at batch 1 vs batched (left padding, KV cache).

    python benchmarks/generate_bench.py --model results/smollm2_gsm/base \
        --data results/smollm2_gsm/data/test_id.jsonl --n 16 --max-new-tokens 96
"""

from __future__ import annotations

import argparse

import torch

from ordermerge.evaluate.generate import BATCH_SIZE, generate
from ordermerge.models import load_model, load_tokenizer
from ordermerge.text import format_prompt, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, BATCH_SIZE])
    a = ap.parse_args()
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=torch.float32)
    prompts = [format_prompt(tok, r["prompt"]) for r in read_jsonl(a.data)[: a.n]]
    print("| batch | new tokens | seconds | tokens/s |")
    print("|---|---|---|---|")
    base = None
    outs = {}
    for bs in a.batch_sizes:
        out, s = generate(model, tok, prompts, a.max_new_tokens, bs, progress=False)
        outs[bs] = out
        base = base or s["tokens_per_s"]
        print(f"| {bs} | {s['new_tokens']} | {s['seconds']:.1f} | {s['tokens_per_s']:.1f} ({s['tokens_per_s'] / base:.1f}x) |")
    same = all(outs[b] == outs[a.batch_sizes[0]] for b in a.batch_sizes)
    print(f"greedy completions identical across batch sizes: {same}")


if __name__ == "__main__":
    main()
