"""The SFT memory plan: its terms on a hand-checked shape, the choice of GPU count, the paper
config on 80 GB GPUs (and the SLURM profile requesting what it picks), the CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from ordermerge import OrdermergeError
from ordermerge.cli import main
from ordermerge.plan import (
    CONTEXT,
    GiB,
    ModelShape,
    choose_gpus,
    gradient_bytes,
    model_shape,
    plan_inference,
    plan_memory,
    sft_defaults,
)
from ordermerge.sft_config import SFTConfig, micro_accum

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
    assert out.strip().endswith("smallest fit: 2 GPU(s) of 80 GiB (70.1 GiB each)")
    assert main(["-q", "plan", "--base", str(LLAMA7B), "--gpu-memory", "16GB", "--config",
                 json.dumps({"batch_size": 64, "max_length": 4096})]) == 2
    assert capsys.readouterr().err.startswith("ordermerge plan: error: SFT does not fit")


# The 2026-12-04 H200 runs (shared/gpu-runs/2026-12-04-h200/README.md, section 2): a random
# 1.17 B Llama, world size 1, batch 32 at max_length 1024, torch's default (foreach) AdamW.
H200_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
              "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 49152,
              "tie_word_embeddings": False}
H200_RUNS = [  # (settings, device memory used by nvidia-smi in GiB, allocated peak in GiB)
    ({"batch_size": 32, "micro_batch_size": 4, "max_length": 1024, "gradient_checkpointing": True}, 34.1, 21.9),
    ({"batch_size": 32, "micro_batch_size": 8, "max_length": 1024}, 51.9, 37.8),
]


@pytest.mark.parametrize(("sft", "used", "allocated"), H200_RUNS)
def test_plan_covers_the_device_memory_the_h200_runs_used(sft, used, allocated):
    shape = model_shape(H200_SHAPE)
    assert shape.params == 1_170_302_976  # the runs' 1.170 B parameters
    plan = plan_memory(shape, sft, 1, 2, optimizer="foreach")
    assert used * GiB <= plan.total <= 1.15 * used * GiB
    held = plan.per_gpu["CUDA context"] + plan.per_gpu["allocator reserve"]
    assert plan.total - held >= allocated * GiB  # the allocation terms alone cover the peak


def test_plan_totals_of_the_h200_settings_and_fused_adamw():
    shape = model_shape(H200_SHAPE)
    totals = [round(plan_memory(shape, sft, 1, 2, "foreach").total / GiB, 2) for sft, _, _ in H200_RUNS]
    assert totals == [34.79, 54.86]
    foreach, fused = (plan_memory(shape, H200_RUNS[0][0], 1, 2, o) for o in ("foreach", "fused"))
    assert foreach.per_gpu["optimizer step temporaries"] == 4 * shape.params
    assert fused.per_gpu["optimizer step temporaries"] == 0
    # the reserve counts what is freed and allocated again every step, not the weights/moments
    assert abs(foreach.per_gpu["allocator reserve"] - fused.per_gpu["allocator reserve"] - 0.55 * 4 * shape.params) <= 1
    assert fused.per_gpu["CUDA context"] == CONTEXT == GiB


def test_gradient_terms_are_the_shard_and_two_layers_at_any_accumulation():
    s = model_shape(LLAMA7B)
    for micro in (1, 4, 16):
        plan = plan_memory(s, {"batch_size": 32, "micro_batch_size": micro, "max_length": 1024}, 2)
        assert gradient_bytes(plan) == 4 * s.params // 2 + (s.root_params + 2 * s.layer_params) * 6


def test_one_micro_batch_formula_and_one_set_of_defaults():
    assert micro_accum(32, None, 1) == (32, 1)
    assert micro_accum(32, None, 3) == (11, 1)
    assert micro_accum(32, 4, 2) == (4, 4)
    assert micro_accum(10, 4, 2) == (4, 2)  # the last micro-step is short
    assert sft_defaults() == SFTConfig().__dict__
    with pytest.raises(OrdermergeError, match=r"^sft config: unknown key 'learning_rate'$"):
        plan_memory(model_shape(LLAMA7B), {"learning_rate": 1}, 1)


def test_planning_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from ordermerge.plan import model_shape, plan_memory; "
            f"plan_memory(model_shape({str(LLAMA7B)!r}), {{}}, 1); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_inference_plan_terms():
    s = ModelShape(134_515_008, 30, 576, 1536, 49152, True, 9, 3)  # SmolLM2-135M
    score = plan_inference(s, 64, 384)
    assert score.per_gpu["weights"] == 2 * s.params
    assert score.per_gpu["KV cache"] == 2 * (2 * 30 * 3 * 64) * 64 * 384
    assert score.per_gpu["logits"] == 64 * 384 * 49152 * 10
    gen = plan_inference(s, 200, 384, 200)
    assert gen.per_gpu["KV cache"] == 2 * (2 * 30 * 3 * 64) * 200 * 584
    assert gen.per_gpu["logits"] == 200 * 49152 * 10  # one position per generation step
    assert (score.mb, gen.mb) == (20560, 7235)  # configs/study.yaml's header arithmetic


def test_study_shaped_dry_run_shows_every_gpu_jobs_declared_memory(tmp_path):
    """configs/study.yaml with the tiny base "prepared" (its config.json): every SFT, sample-loss
    and evaluation job shows gpu_mem_mb in Snakemake's dry run, the plan's value."""
    import re

    from conftest import make_workdir, smk

    cfg = yaml.safe_load((ROOT / "configs/study.yaml").read_text())
    exp = cfg["experiments"]["smollm2_study"]
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True}
    exp["base"] = {"spec": "tiny", "dtype": "bfloat16", "seed": 0,
                   "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                            "num_heads": 4, "num_kv_heads": 2}}
    wd = make_workdir(tmp_path / "wd", cfg)
    base = wd / "results/smollm2_study/base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(tiny))
    out = smk(wd, "-n").stdout
    declared: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        if m and r:
            mb = re.search(r"gpu_mem_mb=([^,]+)", r.group(1))
            declared.setdefault(m.group(1), set()).add(mb.group(1) if mb else "none")
    shape = model_shape(tiny)
    sft = {**sft_defaults(), **exp["sft"]}
    assert declared["sft"] == {str(plan_memory(shape, exp["sft"], 1).mb)}
    assert declared["sample_losses"] == declared["merge_sample_losses"] == {
        str(plan_inference(shape, 16, sft["max_length"]).mb)}
    # an evaluation job declares its largest benchmark: response_loss at batch 64 x 384 tokens
    # for every model; GSM (batch 200, 384 + 200 tokens) only adds itself on the main models
    assert declared["evaluate"] == {str(plan_inference(shape, 64, 384).mb)}
    assert declared["merge"] == {"none"} and declared["prepare_data"] == {"none"}
