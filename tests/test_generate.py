"""generate(): batched greedy decoding over a static cache gives exactly what plain
transformers generate() gives one prompt at a time, ends rows at EOS and stop strings,
and counts new tokens exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from ordermerge.evaluate import generate as gen_mod
from ordermerge.evaluate.generate import cut_at_stop, finish, generate, stop_end

N = 40  # new tokens: several CHECK_EVERY intervals and a partial one

PROMPTS = [
    "Hi",
    "Question: what is 2 + 3?\nAnswer\n",
    "Question: " + "a long few-shot style prompt with many words in it, " * 12 + "\nAnswer:",
    "Name a colour.",
    "12345 " * 30,
]


@pytest.fixture(scope="module")
def loaded(tiny_base):
    from ordermerge.models import load_model, load_tokenizer

    # fp32, as evaluation runs on a CPU: bf16 logits tie too often for exact comparisons
    return load_model(str(tiny_base), dtype=torch.float32), load_tokenizer(str(tiny_base))


def plain(model, tok, prompts, stop=(), max_new=N):
    """Reference: transformers generate() one prompt at a time (no padding), with the same stop
    strings, then the same cut; its length is the number of new tokens it made."""
    outs, ns = [], []
    for p in prompts:
        enc = tok(p, add_special_tokens=False, return_tensors="pt")
        g = model.generate(**enc, max_new_tokens=max_new, do_sample=False, top_p=None, top_k=None,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           stop_strings=list(stop) or None, tokenizer=tok if stop else None)
        row = g[0, enc["input_ids"].shape[1]:].tolist()
        outs.append(cut_at_stop(p, tok.decode(row, skip_special_tokens=True), stop))
        ns.append(len(row))
    return outs, ns


def with_eos(tok, token_id):
    """A copy of the tokenizer whose EOS is an ordinary token the random model does emit."""
    t = copy.deepcopy(tok)
    t.eos_token = tok.convert_ids_to_tokens(token_id)
    assert t.eos_token_id == token_id and t.pad_token_id != token_id
    return t


def greedy_ids(model, tok, prompt, max_new=N):
    enc = tok(prompt, add_special_tokens=False, return_tensors="pt")
    g = model.generate(**enc, max_new_tokens=max_new, do_sample=False, top_p=None, top_k=None,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return g[0, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("batch_size", [1, 3, len(PROMPTS)])
def test_greedy_equals_plain_generate(loaded, batch_size):
    model, tok = loaded
    ref, ns = plain(model, tok, PROMPTS)
    assert ns == [N] * len(PROMPTS)  # the random model never says EOS here: see the next tests
    outs, sp = generate(model, tok, PROMPTS, N, batch_size, progress=False)
    assert outs == ref
    assert sp["new_tokens"] == N * len(PROMPTS)
    assert sp["tokens_per_s"] == sp["new_tokens"] / sp["seconds"]


@pytest.mark.parametrize("batch_size", [1, 3, len(PROMPTS)])
def test_stop_strings_and_eos_equal_plain_generate(loaded, batch_size):
    """Rows end at different steps (a stop string in one, EOS in another, neither in the
    rest); texts and token counts are those of transformers' own stop criteria at batch 1."""
    model, tok = loaded
    free, _ = plain(model, tok, PROMPTS)
    word = free[1][len(free[1]) // 2 :][:2]  # a random model repeats itself: any piece will do
    row = greedy_ids(model, tok, PROMPTS[3])
    t = with_eos(tok, row[10])
    stop = (word, "never said")
    ref, ns = plain(model, t, PROMPTS, stop)
    assert ns[1] < N and ns[3] == row.index(row[10]) + 1 <= 11 and ns.count(N) >= 1
    outs, sp = generate(model, t, PROMPTS, N, batch_size, stop=stop, progress=False)
    assert outs == ref
    assert sp["new_tokens"] == sum(ns)
    assert word not in outs[1] and outs[1] == cut_at_stop(PROMPTS[1], free[1], stop)


def test_stop_string_starting_in_the_prompt(loaded):
    """A stop string that begins in the prompt's tail ends generation at its first new token
    and leaves an empty completion, as transformers' criterion does."""
    model, tok = loaded
    first = tok.decode(greedy_ids(model, tok, PROMPTS[1], 1))
    stop = ("\n" + first[:1],)  # PROMPTS[1] ends with "\n"
    assert plain(model, tok, PROMPTS[1:2], stop) == ([""], [1])
    ref, ns = plain(model, tok, PROMPTS, stop)
    outs, sp = generate(model, tok, PROMPTS, N, 2, stop=stop, progress=False)
    assert outs == ref and outs[1] == "" and sp["new_tokens"] == sum(ns)


@pytest.mark.parametrize("every", [1, 2, 7, 64])
def test_check_interval_changes_nothing_but_speed(loaded, monkeypatch, every):
    model, tok = loaded
    free, _ = plain(model, tok, PROMPTS)
    stop = (free[0][5:7],)
    want = generate(model, tok, PROMPTS, N, 2, stop=stop, progress=False)
    monkeypatch.setattr(gen_mod, "CHECK_EVERY", every)
    got = generate(model, tok, PROMPTS, N, 2, stop=stop, progress=False)
    assert got[0] == want[0] and got[1]["new_tokens"] == want[1]["new_tokens"]


def test_decoding_stops_at_the_first_check_after_every_row_ended(loaded):
    """No per-token host work: ended rows are noticed at the next check, and the batch
    stops there instead of running to max_new_tokens."""
    model, tok = loaded
    row = greedy_ids(model, tok, PROMPTS[0], 64)
    t = with_eos(tok, row[2])
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        outs, sp = generate(model, t, PROMPTS[:1], 64, 1, progress=False)
    finally:
        hook.remove()
    end = row.index(row[2]) + 1
    assert sp["new_tokens"] == end and outs == [t.decode(row[:end], skip_special_tokens=True)]
    # one prefill, then decode steps 1 .. CHECK_EVERY - 1; the check at CHECK_EVERY stops it
    assert len(calls) == gen_mod.CHECK_EVERY < 64


def test_decode_step_compiles_as_one_graph(loaded, monkeypatch):
    """The step that CUDA graphs would replay (ORDERMERGE_GENERATE_COMPILE=reduce-overhead on
    a GPU) is captured by dynamo whole (fullgraph: no break, so no host round trip inside),
    once per batch shape, and gives the same completions. The "eager" backend only captures,
    so this runs in seconds on a CPU."""
    from torch._dynamo.utils import counters

    model, tok = loaded
    free, _ = plain(model, tok, PROMPTS)
    stop = (free[2][4:6],)
    want = generate(model, tok, PROMPTS, N, 2, stop=stop, progress=False)
    monkeypatch.setenv("ORDERMERGE_GENERATE_COMPILE", "eager")
    torch._dynamo.reset()
    counters.clear()
    got = generate(model, tok, PROMPTS, N, 2, stop=stop, progress=False)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert got[0] == want[0] and got[1]["new_tokens"] == want[1]["new_tokens"]
    # batch shapes (rows, cache slots): (2, 256) for 180 and 162 prompt tokens, (2, 128) for
    # 13 and 4, (1, 128) for 1
    assert graphs == 3
    assert not counters["graph_break"]


def test_finish_and_stop_end_exact(loaded):
    _, tok = loaded
    ids = tok("The answer is 5. Question: 7 and more", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids)
    stop = ("Question:",)
    m = stop_end(tok, "x", ids, stop)
    assert "Question:" in tok.decode(ids[:m]) and "Question:" not in tok.decode(ids[: m - 1])
    assert finish(tok, "x", ids, None, stop) == ("The answer is 5. ", m)
    assert finish(tok, "x", ids, ids[2], stop) == (tok.decode(ids[:3]), 3)  # EOS first
    assert finish(tok, "x", ids, None, ()) == (text, len(ids))
    assert stop_end(tok, "x", ids, ("absent",)) is None
    # "<|im_end|>" is special: it ends a row (as transformers' criterion matches it) though
    # skip_special_tokens leaves it out of the text
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert finish(tok, "x", [*ids[:3], im_end, *ids[3:]], None, ("<|im_end|>",)) == (
        tok.decode(ids[:3]), 4)


def test_identical_across_batch_sizes_and_order(loaded):
    model, tok = loaded
    a = generate(model, tok, PROMPTS, 24, 1, progress=False)
    b = generate(model, tok, PROMPTS, 24, 4, progress=False)
    c = generate(model, tok, PROMPTS[::-1], 24, 2, progress=False)
    assert a[0] == b[0] == c[0][::-1]
    assert a[1]["new_tokens"] == b[1]["new_tokens"] == c[1]["new_tokens"]
    assert generate(model, tok, [], 24, 4, progress=False)[0] == []


def test_sampling_is_seeded_and_cut(loaded):
    model, tok = loaded
    free, _ = plain(model, tok, PROMPTS)
    stop = (free[1][3:5],)
    a = generate(model, tok, PROMPTS, 16, 2, stop=stop, do_sample=True, seed=1, progress=False)
    b = generate(model, tok, PROMPTS, 16, 2, stop=stop, do_sample=True, seed=1, progress=False)
    c = generate(model, tok, PROMPTS, 16, 2, stop=stop, do_sample=True, seed=2, progress=False)
    assert a[0] == b[0] != c[0] and a[1]["new_tokens"] == b[1]["new_tokens"]
    assert a[1]["new_tokens"] <= 16 * len(PROMPTS)
    assert all(cut_at_stop(p, o, stop) == o for p, o in zip(PROMPTS, a[0], strict=True))


def test_generation_stops_at_a_stop_string(tiny_base):
    """A stop string cuts the completion where it first occurs and ends generation early;
    gsm8k passes lm-eval's (a raw model goes on to write the next few-shot question)."""
    from ordermerge.evaluate import gsm8k
    from ordermerge.models import load_model, load_tokenizer

    model, tok = load_model(str(tiny_base)), load_tokenizer(str(tiny_base))
    prompts = ["Question: what is 2 + 3?\nAnswer\n", "Question: name a colour.\nAnswer\n"]
    full, sp_full = generate(model, tok, prompts, 24, 2, progress=False)
    word = full[0][len(full[0]) // 2 :][:2]  # a random model repeats itself: any piece will do
    assert len(word) == 2
    cut, sp_cut = generate(model, tok, prompts, 24, 2, stop=(word,), progress=False)
    assert cut == [cut_at_stop(p, f, (word,)) for p, f in zip(prompts, full, strict=True)]
    assert len(cut[0]) < len(full[0]) and sp_cut["new_tokens"] < sp_full["new_tokens"]
    assert gsm8k.STOP[0] == "Question:"
    # a stop string that begins in the prompt (as transformers matches it) cuts at its start
    assert cut_at_stop("Answer:\n", "\nQuestion: 2", ("\n\nQuestion:",)) == ""
    assert cut_at_stop("Answer: 5", "\n\nQuestion: 2", ("\n\nQuestion:",)) == ""
    assert cut_at_stop("x", "The answer is 5. Question: 7", gsm8k.STOP) == "The answer is 5. "
