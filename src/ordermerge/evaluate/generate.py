"""Batched greedy generation: left padding, KV cache, stop strings, tokens/s."""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

# Default prompts per batch. Decoding a small model on a CPU is bound by reading the weights
# once per step, so a batch shares that cost: SmolLM2-135M on 2 cores made 16.6 tokens/s at
# batch 1, 65 at 8 and 87 at 16 (benchmarks/generate_bench.py; README "Measured").
BATCH_SIZE = 16


def cut_at_stop(prompt: str, text: str, stop: tuple[str, ...]) -> str:
    """`text` up to its first stop string. Like transformers' stop criterion, a stop string
    may begin in the prompt's tail and end in the completion; the completion is then cut at
    its start."""
    for st in stop:
        tail = prompt[len(prompt) - len(st) + 1 :] if len(st) > 1 else ""
        k = (tail + text).find(st)
        if k != -1:
            text = text[: max(0, k - len(tail))]
    return text


@torch.no_grad()
def generate(
    model, tok, prompts: list[str], max_new_tokens: int = 256, batch_size: int = BATCH_SIZE,
    stop: tuple[str, ...] = (), progress: bool = True, do_sample: bool = False,
    temperature: float = 1.0, seed: int = 0,
) -> tuple[list[str], dict[str, float]]:
    """Completions for already-formatted prompts, in input order; greedy unless do_sample."""
    model.eval()
    device = next(model.parameters()).device
    tok.padding_side = "left"  # decoder-only batched generation needs left padding
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    outs: list[str] = [""] * len(prompts)
    new_tokens = 0
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    for s in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch",
                  disable=not progress):
        idx = order[s : s + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(device)
        kw = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, use_cache=True,
                             stop_strings=list(stop) or None, tokenizer=tok if stop else None,
                             top_p=None, top_k=None, **kw)
        cont = gen[:, enc["input_ids"].shape[1]:]
        for j, i in enumerate(idx):
            ids = cont[j]
            ids = ids[ids != tok.pad_token_id] if tok.pad_token_id != tok.eos_token_id else ids
            text = tok.decode(ids, skip_special_tokens=True)
            n = int((cont[j] != tok.pad_token_id).sum())
            new_tokens += max(n, 1)
            outs[i] = cut_at_stop(prompts[i], text, stop)
    dt = time.perf_counter() - t0
    return outs, {"new_tokens": new_tokens, "seconds": dt, "tokens_per_s": new_tokens / max(dt, 1e-9)}
