"""Batched generation: prompts bucketed by token length, greedy decoding over a static KV cache
with no per-token host work, stop strings checked every few steps and cut exactly, tokens/s."""

from __future__ import annotations

import inspect
import os
import time

import torch
from tqdm import tqdm

# Default prompts per batch. Decoding a small model on a CPU is bound by reading the weights
# once per step, so a batch shares that cost: SmolLM2-135M on 2 cores made 16.6 tokens/s at
# batch 1, 65 at 8 and 87 at 16 (benchmarks/generate_bench.py; README "Measured").
BATCH_SIZE = 16

# Greedy decode steps between host checks (EOS, stop strings, all rows ended). A check is the
# loop's only wait on the device; between checks the host just queues kernels. Results do not
# depend on it: a row that ran past its end is cut back to it afterwards, so it only trades
# syncs against at most CHECK_EVERY - 1 wasted steps once every row has ended.
CHECK_EVERY = 16


def _tail(prompt: str, st: str) -> str:
    """The prompt's last len(st) - 1 characters: where a stop string may begin before the
    completion and still end in it."""
    return prompt[len(prompt) - len(st) + 1 :] if len(st) > 1 else ""


def cut_at_stop(prompt: str, text: str, stop: tuple[str, ...]) -> str:
    """`text` up to its first stop string. Like transformers' stop criterion, a stop string
    may begin in the prompt's tail and end in the completion; the completion is then cut at
    its start."""
    for st in stop:
        tail = _tail(prompt, st)
        k = (tail + text).find(st)
        if k != -1:
            text = text[: max(0, k - len(tail))]
    return text


def _has_stop(prompt: str, text: str, stop: tuple[str, ...], from_start: bool = True) -> bool:
    return any(st in ((_tail(prompt, st) if from_start else "") + text) for st in stop)


def stop_end(tok, prompt: str, ids: list[int], stop: tuple[str, ...]) -> int | None:
    """How many of `ids` generation keeps when it ends at a stop string: the fewest whose
    text (special tokens included, after the prompt's tail) contains one, which is the token
    at which transformers' StopStringCriteria fires; None if none occurs."""

    def hit(m: int) -> bool:
        return _has_stop(prompt, tok.decode(ids[:m], skip_special_tokens=False), stop)

    if not stop or not ids or not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)  # a longer prefix's text extends a shorter one's, so hit() is monotone
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hit(mid) else (mid + 1, hi)
    return lo


def finish(tok, prompt: str, ids: list[int], eos: int | None,
           stop: tuple[str, ...]) -> tuple[str, int]:
    """A row's completion and its honest length: the tokens up to and including the first
    EOS or the token completing the first stop string (whichever comes first), or all of
    them; whatever was generated past that end is dropped, as generate() would never have
    made it."""
    n = ids.index(eos) + 1 if eos is not None and eos in ids else len(ids)
    n = stop_end(tok, prompt, ids[:n], stop) or n
    text = tok.decode(ids[:n], skip_special_tokens=True)
    return cut_at_stop(prompt, text, stop), n


def _left_pad(rows: list[list[int]], pad: int, extra: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and a mask `extra` slots longer, those slots 1: causal masking hides
    slots not yet written, so one fixed mask serves every decode step."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width + extra), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[j, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _forward_names(model) -> tuple[str, bool]:
    """The model's keyword for the KV cache (transformers 5 renamed past_key_values to
    cache) and whether its forward still takes cache_position."""
    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "cache_position" in params


class _Watch:
    """Host-side view of a batch being decoded: which rows have ended (EOS or a stop string),
    from tokens fetched every CHECK_EVERY steps. Only a window of recent tokens is decoded per
    check; a hit there is confirmed on the whole row, so a window can only miss (costing
    steps), never end a row early."""

    def __init__(self, tok, prompts: list[str], eos: int | None, stop: tuple[str, ...]):
        self.tok, self.prompts, self.eos, self.stop = tok, prompts, eos, stop
        self.rows: list[list[int]] = [[] for _ in prompts]
        self.ended = [False] * len(prompts)
        # a stop string of k characters spans at most 4k tokens (each token holds >= 1 byte)
        self.back = 4 * max((len(s) for s in stop), default=0)

    def take(self, new: list[list[int]]) -> bool:
        """Append the latest tokens of every row; True when every row has ended."""
        start = len(self.rows[0])
        live = []
        for j, toks in enumerate(new):
            self.rows[j].extend(toks)
            if self.ended[j]:
                continue
            if self.eos is not None and self.eos in toks:
                self.ended[j] = True
            elif self.stop:
                live.append(j)
        if live:
            lo = max(0, start - self.back)
            texts = self.tok.batch_decode([self.rows[j][lo:] for j in live],
                                          skip_special_tokens=False)
            for j, text in zip(live, texts, strict=True):
                if (_has_stop(self.prompts[j], text, self.stop, from_start=lo == 0)
                        and stop_end(self.tok, self.prompts[j], self.rows[j], self.stop)):
                    self.ended[j] = True
        return all(self.ended)


def _step(model, ids: torch.Tensor, pos: torch.Tensor, kw: dict) -> torch.Tensor:
    """One forward and the greedy pick (argmax: the first of tied logits, as generate())."""
    return model(input_ids=ids, position_ids=pos, **kw).logits[:, -1].argmax(-1)


def compile_mode(device: torch.device) -> str | None:
    """How the greedy decode step is compiled, from ORDERMERGE_GENERATE_COMPILE: unset or 0:
    not (eager); reduce-overhead: CUDA graphs, one replay per step instead of an eager
    step's ~6,500 operator dispatches (SmolLM2-135M's 30 layers: 30 ms of host time per step
    on our CPU, whatever the batch), which is what bounds a small model on a GPU (CUDA only;
    not yet measured on one); default: inductor without graphs; eager or aot_eager: dynamo
    capture only, which checks on a CPU that the step compiles as one graph."""
    mode = os.environ.get("ORDERMERGE_GENERATE_COMPILE", "0")
    if mode in ("", "0"):
        return None
    if mode == "reduce-overhead" and device.type != "cuda":
        return None
    return mode


def _compiled_step(mode: str | None):
    if mode is None:
        return _step
    how = {"backend": mode} if mode in ("eager", "aot_eager") else {"mode": mode}
    # fullgraph: a graph break would put a host round trip back into every step
    return torch.compile(_step, fullgraph=True, dynamic=False, **how)


class _Caches:
    """The StaticCache of a generate() call, reused (reset) while the batch shape stays: a
    compiled step then sees the same tensors again and is not re-recorded. Lengths are
    rounded up so that batches of similar prompt lengths share a shape; as batches come
    longest first, a shape never returns once left, so only the last cache is kept."""

    ROUND = 128

    def __init__(self, model):
        self.model, self.key, self.cache = model, None, None
        self.step = _compiled_step(compile_mode(next(model.parameters()).device))

    def get(self, batch: int, length: int) -> tuple[object, int]:
        """An empty cache for `batch` rows of at least `length` slots, and its length."""
        from transformers import StaticCache

        length = -(-length // self.ROUND) * self.ROUND
        if self.key == (batch, length):
            self.cache.reset()
        else:
            self.cache = None  # free the old one first
            self.key = (batch, length)
            self.cache = StaticCache(config=self.model.config, max_cache_len=length)
        return self.cache, length


def _greedy_batch(model, tok, prompts: list[str], rows: list[list[int]], max_new_tokens: int,
                  stop: tuple[str, ...], check_every: int, caches: _Caches) -> list[list[int]]:
    """Greedy continuations of one batch (token ids; each runs at least to its end).

    The loop only queues work on the device: the cache is a StaticCache (written in place,
    no per-step torch.cat of the whole KV), the attention mask is allocated once, the next
    token stays on the device, and the host reads tokens back once per `check_every` steps.
    Rows that have ended keep decoding until the batch stops; their extra tokens are dropped
    by finish(), and rows never influence one another."""
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    width = max(map(len, rows))
    cache, length = caches.get(len(rows), width + max_new_tokens)
    ids, mask = _left_pad(rows, pad, length - width, device)
    cache_kw, takes_cache_position = _forward_names(model)
    # as transformers' generate: positions count real tokens only (padding sits at 0)
    pos = (mask[:, :width].cumsum(-1) - 1).masked_fill(mask[:, :width] == 0, 0)
    kw = {cache_kw: cache, "attention_mask": mask, "use_cache": True}
    if takes_cache_position:
        kw["cache_position"] = torch.arange(width, device=device)
    out = torch.empty((len(rows), max_new_tokens), dtype=torch.long, device=device)
    out[:, 0] = _step(model, ids, pos, {**kw, "logits_to_keep": 1})  # prefill: never compiled
    pos = pos[:, -1:] + 1
    if takes_cache_position:
        kw["cache_position"] = kw["cache_position"][-1:] + 1
    watch = _Watch(tok, prompts, eos, stop)
    done = 0  # columns of `out` the watch has seen
    for t in range(1, max_new_tokens):
        if t % check_every == 0:
            if watch.take(out[:, done:t].tolist()):
                return watch.rows
            done = t
        # the input is our own buffer, never the (CUDA-graph-owned) output of the last step
        out[:, t] = caches.step(model, out[:, t - 1 : t], pos, kw)
        pos += 1
        if takes_cache_position:
            kw["cache_position"] += 1
    watch.take(out[:, done:].tolist())
    return watch.rows


@torch.no_grad()
def generate(
    model, tok, prompts: list[str], max_new_tokens: int = 256, batch_size: int = BATCH_SIZE,
    stop: tuple[str, ...] = (), progress: bool = True, do_sample: bool = False,
    temperature: float = 1.0, seed: int = 0,
) -> tuple[list[str], dict[str, float]]:
    """Completions for already-formatted prompts, in input order; greedy unless do_sample.

    Each completion ends at EOS or at the first stop string, which is cut off (cut_at_stop);
    new_tokens counts every row's tokens up to and including the one that ended it. Greedy
    output is that of model.generate(do_sample=False) with the same stop strings, whatever
    the batch size (up to float noise between batched and single-row kernels)."""
    model.eval()
    device = next(model.parameters()).device
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    stop = tuple(stop)
    t0 = time.perf_counter()
    rows = tok(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    # longest first, by tokens: a batch of similar lengths wastes little on padding
    order = sorted(range(len(prompts)), key=lambda i: (-len(rows[i]), i))
    outs: list[str] = [""] * len(prompts)
    new_tokens = 0
    torch.manual_seed(seed)
    caches = _Caches(model)
    for s in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch",
                  disable=not progress or not order):
        idx = order[s : s + batch_size]
        if max_new_tokens <= 0:
            continue
        if do_sample:
            gen = _sample_batch(model, tok, [rows[i] for i in idx], max_new_tokens, stop,
                                temperature, device)
        else:
            gen = _greedy_batch(model, tok, [prompts[i] for i in idx], [rows[i] for i in idx],
                                max_new_tokens, stop, CHECK_EVERY, caches)
        for i, ids in zip(idx, gen, strict=True):
            outs[i], n = finish(tok, prompts[i], ids, tok.eos_token_id, stop)
            new_tokens += n
    dt = time.perf_counter() - t0
    return outs, {"new_tokens": new_tokens, "seconds": dt, "tokens_per_s": new_tokens / max(dt, 1e-9)}


def _sample_batch(model, tok, rows: list[list[int]], max_new_tokens: int, stop: tuple[str, ...],
                  temperature: float, device: torch.device) -> list[list[int]]:
    """Sampled continuations (humaneval's n_samples > 1) through model.generate, which draws
    from the same random stream it always has; finish() then ends and cuts them as greedy."""
    ids, mask = _left_pad(rows, tok.pad_token_id, 0, device)
    gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         use_cache=True, stop_strings=list(stop) or None,
                         tokenizer=tok if stop else None, top_p=None, top_k=None,
                         do_sample=True, temperature=temperature)
    return gen[:, ids.shape[1] :].tolist()
