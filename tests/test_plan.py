"""The SFT memory plan: its terms on a hand-checked shape, the choice of GPU count, the paper
config on 80 GB GPUs (and the SLURM profile requesting what it picks), the CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from ordermerge import OrdermergeError
from ordermerge.cli import main
from ordermerge.plan import GiB, choose_gpus, model_shape, plan_memory

LLAMA7B = ROOT / "configs/shapes/llama-2-7b.json"


def paper_sft() -> dict:
    cfg = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    return cfg["experiments"]["llama2_gsm8k"]["sft"]


def test_llama_2_7b_shape_from_its_config():
    s = model_shape(LLAMA7B)
    assert s.params == 6_738_415_616  # the published Llama-2-7b parameter count
    assert (s.layers, s.hidden, s.vocab, s.tied) == (32, 4096, 32000, False)


def test_shape_counts_the_parameters_of_a_real_folder(tiny_base):
    from safetensors.torch import load_file

    stored = sum(t.numel() for t in load_file(str(tiny_base / "model.safetensors")).values())
    assert model_shape(tiny_base).params == stored


def test_sharded_terms_scale_with_the_gpu_count_and_static_ones_do_not():
    s = model_shape(LLAMA7B)
    one, four = plan_memory(s, paper_sft(), 1), plan_memory(s, paper_sft(), 4)
    assert one.per_gpu["weights (fp32 shards)"] == 4 * s.params
    assert one.per_gpu["AdamW moments"] == 8 * s.params
    assert four.per_gpu["AdamW moments"] == 2 * s.params
    assert one.per_gpu["activations"] == four.per_gpu["activations"]  # the same micro-batch
    assert four.host == 4 * one.host - 12 * GiB  # each rank loads the fp32 model


def test_checkpointing_and_micro_batch_shrink_activations():
    s = model_shape(LLAMA7B)
    base = {"batch_size": 32, "micro_batch_size": 8, "max_length": 1024}
    full = plan_memory(s, base, 2).per_gpu["activations"]
    ckpt = plan_memory(s, {**base, "gradient_checkpointing": True}, 2).per_gpu["activations"]
    half = plan_memory(s, {**base, "micro_batch_size": 4}, 2).per_gpu["activations"]
    assert ckpt < full / 10 and half * 2 == full


def test_the_paper_config_plans_to_fit_80_gb_gpus_and_the_profile_leaves_it_to_the_plan():
    plan = choose_gpus(model_shape(LLAMA7B), paper_sft(), 80 * GiB)
    assert plan.gpus == 2 and plan.total <= 80 * GiB
    assert plan_memory(model_shape(LLAMA7B), paper_sft(), 1).total > 80 * GiB  # one GPU does not
    assert yaml.safe_load((ROOT / "configs/paper.yaml").read_text())["gpu_memory_gb"] == 80
    # the SFT jobs' GPUs and host memory come from the plan (tests/test_slurm.py checks the
    # sbatch line), so the profile must not pin them
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert not {"gpu", "mem_mb"} & set(profile["set-resources"]["sft"])


def test_no_gpu_count_fits_is_one_line():
    with pytest.raises(OrdermergeError, match=r"^SFT does not fit: .* GiB per GPU on 8 GPUs, 16 GiB available"):
        choose_gpus(model_shape(LLAMA7B), {"batch_size": 64, "max_length": 4096}, 16 * GiB)


def test_plan_cli(capsys):
    assert main(["-q", "plan", "--base", str(LLAMA7B), "--config", json.dumps(paper_sft())]) == 0
    out = capsys.readouterr().out
    assert "6.74 B parameters" in out and "| fits 80 GiB | no | yes | yes | yes |" in out
    assert out.strip().endswith("smallest fit: 2 GPU(s) of 80 GiB (70.3 GiB each)")
    assert main(["-q", "plan", "--base", str(LLAMA7B), "--gpu-memory", "16GB", "--config",
                 json.dumps({"batch_size": 64, "max_length": 4096})]) == 2
    assert capsys.readouterr().err.startswith("ordermerge plan: error: SFT does not fit")
