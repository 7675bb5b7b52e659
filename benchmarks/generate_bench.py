"""Greedy generation: the old path (transformers generate() with stop_strings, batches sorted
by characters) against generate() (static KV cache, batches bucketed by tokens, stop strings
checked every CHECK_EVERY steps), on the same prompts; tokens/s and whether they agree.

    python benchmarks/generate_bench.py --model /tmp/gen_smol --n 64 --batch-sizes 16 64
    # on a GPU (bf16 there, fp32 on a CPU), as a gsm evaluation job runs it, compiled or not:
    python benchmarks/generate_bench.py --model /tmp/gen_smol --n 200 --batch-sizes 200 \
        --max-new-tokens 200 [--compile reduce-overhead]

Without --data, prompts are gsm_symbolic questions (reasoning-gym, offline) in the chat
template, as the gsm evaluation formats them. --overhead also reports host work per decode
step on a model of SmolLM2's depth but almost no width (so compute is negligible, as for a
135M model on a GPU): wall ms/step, ops launched per step and host<-device syncs per step.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ordermerge.evaluate.generate import BATCH_SIZE, cut_at_stop, generate
from ordermerge.evaluate.gsm8k import STOP
from ordermerge.models import inference_placement, load_model, load_tokenizer
from ordermerge.text import format_prompt


@torch.no_grad()
def old_generate(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int,
                 stop: tuple[str, ...] = ()) -> tuple[list[str], dict[str, float]]:
    """generate() as it was before the static-cache loop (kept here to compare against)."""
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    outs: list[str] = [""] * len(prompts)
    new_tokens = 0
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, use_cache=True,
                             stop_strings=list(stop) or None, tokenizer=tok if stop else None,
                             top_p=None, top_k=None, do_sample=False)
        cont = gen[:, enc["input_ids"].shape[1]:]
        for j, i in enumerate(idx):
            ids = cont[j]
            ids = ids[ids != tok.pad_token_id] if tok.pad_token_id != tok.eos_token_id else ids
            outs[i] = cut_at_stop(prompts[i], tok.decode(ids, skip_special_tokens=True), stop)
            new_tokens += max(int((cont[j] != tok.pad_token_id).sum()), 1)
    dt = time.perf_counter() - t0
    return outs, {"new_tokens": new_tokens, "seconds": dt, "tokens_per_s": new_tokens / dt}


def gsm_prompts(tok, n: int, data: str | None) -> list[str]:
    if data:
        from ordermerge.jsonl import read_jsonl

        return [format_prompt(tok, r["prompt"]) for r in read_jsonl(data)[:n]]
    import reasoning_gym as rg

    return [format_prompt(tok, d["question"]) for d in rg.create_dataset("gsm_symbolic", size=n, seed=1)]


def padding_share(tok, prompts: list[str], batch_size: int, by_tokens: bool) -> float:
    """Share of prefill positions that are padding when batches are sorted by characters
    (old) or tokens (new)."""
    lens = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    key = (lambda i: -lens[i]) if by_tokens else (lambda i: -len(prompts[i]))
    order = sorted(range(len(prompts)), key=key)
    total = pad = 0
    for s in range(0, len(order), batch_size):
        b = [lens[i] for i in order[s : s + batch_size]]
        total += max(b) * len(b)
        pad += max(b) * len(b) - sum(b)
    return pad / total


def per_step_host_work(tok, prompts: list[str], batch_size: int, steps: int) -> None:
    """Old vs new decode-step cost on SmolLM2's depth (30 layers) at width 32, where compute
    is small: ms per step, aten calls per step (each a dispatch on the host; on a GPU, most
    are a kernel launch) and host<-device syncs per step. Each is the difference between
    runs of steps + 1 and 1 new tokens, which removes tokenizing, prefill and decoding."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=30, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval().to(inference_placement()[0])
    ps = (prompts * batch_size)[:batch_size]
    never = ("@@never@@",)  # a stop string the old path still checks at every step
    print(f"\nhost work per decode step: 30 layers x width 32, batch {batch_size}, no EOS/stop")
    print("| path | ms/step | aten calls/step | syncs/step |")
    print("|---|---|---|---|")

    def measure(run, n: int) -> tuple[float, int, int]:
        t = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t
        with profile(activities=[ProfilerActivity.CPU]) as p:
            run(n)
        ev = p.key_averages()
        calls = sum(e.count for e in ev if e.key.startswith("aten::"))
        syncs = sum(e.count for e in ev if e.key == "aten::_local_scalar_dense")
        return dt, calls, syncs

    for name in ("old", "new"):
        def run(n: int, name: str = name) -> None:
            if name == "old":
                old_generate(model, tok, ps, n, batch_size, never)
            else:
                generate(model, tok, ps, n, batch_size, stop=never, progress=False)

        run(4)  # warm-up
        (t1, c1, s1), (t2, c2, s2) = measure(run, 1), measure(run, steps + 1)
        print(f"| {name} | {1000 * (t2 - t1) / steps:.1f} | {(c2 - c1) / steps:.0f} | "
              f"{(s2 - s1) / steps:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF folder, e.g. from ordermerge prepare-base")
    ap.add_argument("--data", help="jsonl with a 'prompt' field (default: gsm_symbolic)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[BATCH_SIZE, 64],
                    help="none: only --overhead")
    ap.add_argument("--compile", default="0", metavar="MODE",
                    help="ORDERMERGE_GENERATE_COMPILE for the new path (reduce-overhead on CUDA)")
    ap.add_argument("--overhead", action="store_true", help="also measure host work per step")
    ap.add_argument("--overhead-batch", type=int, default=200)
    a = ap.parse_args()
    os.environ["ORDERMERGE_GENERATE_COMPILE"] = a.compile
    device, dtype = inference_placement()
    tok = load_tokenizer(a.model)
    model = load_model(a.model, dtype=dtype, device=device)
    prompts = gsm_prompts(tok, a.n, a.data)
    lens = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
    print(f"{len(prompts)} prompts, {min(lens)}-{max(lens)} tokens, stop={STOP}, "
          f"max_new_tokens={a.max_new_tokens}, {device} {dtype}, threads={torch.get_num_threads()}, "
          f"compile={a.compile}")
    if a.batch_sizes:
        print("| batch | path | padding | new tokens | seconds | tokens/s | same text as old |")
        print("|---|---|---|---|---|---|---|")
        generate(model, tok, prompts[:2], 2, 2, stop=STOP, progress=False)  # warm-up
    for bs in a.batch_sizes:
        old, so = old_generate(model, tok, prompts, a.max_new_tokens, bs, STOP)
        if a.compile != "0":  # compile (and record) first: a job pays that once per shape
            generate(model, tok, prompts, a.max_new_tokens, bs, stop=STOP, progress=False)
        new, sn = generate(model, tok, prompts, a.max_new_tokens, bs, stop=STOP, progress=False)
        for name, s, pad, same in (("old", so, padding_share(tok, prompts, bs, False), ""),
                                   ("new", sn, padding_share(tok, prompts, bs, True),
                                    f"{sum(x == y for x, y in zip(old, new, strict=True))}"
                                    f"/{len(new)}")):
            print(f"| {bs} | {name} | {pad:.0%} | {s['new_tokens']} | {s['seconds']:.1f} | "
                  f"{s['tokens_per_s']:.1f} | {same} |")
    if a.overhead:
        per_step_host_work(tok, prompts, a.overhead_batch, 32)


if __name__ == "__main__":
    main()
