"""SLURM: the profile's sbatch lines (no cluster needed), and the tiny pipeline on a real
one-node SLURM cluster (tests/slurm/cluster.sh), with an SFT job cancelled mid-training."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, make_workdir


class _Resources(dict):
    """What the plugin reads from job.resources: .get() and attribute access."""

    __getattr__ = dict.__getitem__


def _value(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def dry_run_resources(workdir: Path, *args: str) -> dict[str, tuple[int, _Resources]]:
    """rule -> (threads, resources) of its first job whose resources are all known (else of its
    first job), as Snakemake's dry run evaluates them."""
    env = {**os.environ, "SLURM_ACCOUNT": "proj42", "SLURM_PARTITION": "gpu"}
    res = subprocess.run([*SNAKEMAKE, "-n", "--workflow-profile", "profiles/slurm", *args],
                         cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", res.stdout + res.stderr):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        r = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not m or not r:
            continue
        t = re.search(r"^\s+threads: (\d+)$", block, re.M)
        pairs = (kv.split("=", 1) for kv in r.group(1).split(", "))
        job = (int(t.group(1)) if t else 1, _Resources({k: _value(v) for k, v in pairs}))
        known = "<TBD>" not in job[1].values()
        if m.group(1) not in out or (known and "<TBD>" in out[m.group(1)][1].values()):
            out[m.group(1)] = job
    return out


def sbatch_line(rule: str, threads: int, resources: _Resources) -> str:
    """The plugin's own submit string (account/partition args as the plugin formats them)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=resources, threads=threads, name=rule)
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": f"rule_{rule}",
              "account": f" -A {resources['slurm_account']}",
              "partition": f" -p {resources['slurm_partition']}", "workdir": "WD"}
    return re.sub(r"\s+", " ", get_submit_command(job, params) + set_gres_string(job)).strip()


PREFIX = "sbatch --parsable --job-name RUN --output LOG --export=ALL --comment rule_{} -A proj42 -p gpu"
EXPECTED = {
    # the memory plan's: 2 GPUs of 80 GB, 2 ranks x 4 B x 6.74 B parameters + 4 GiB on the host
    "sft": " -t 360 --mem 55507 --cpus-per-task=8 -D WD --gpus=2",
    "evaluate": " -t 120 --mem 32000 --cpus-per-task=8 -D WD --gpus=1",
    "sample_losses": " -t 60 --mem 32000 --cpus-per-task=4 -D WD --gpus=1",
    "merge": " -t 30 --mem <TBD> --ntasks=1 --cpus-per-task=4 -D WD",
    "prepare_base": " -t 60 --mem 64000 --ntasks=1 --cpus-per-task=2 -D WD",
    "prepare_data": " -t 60 --mem 8000 --ntasks=1 --cpus-per-task=2 -D WD",
    "make_order": " -t 60 --mem 8000 --ntasks=1 --cpus-per-task=2 -D WD",
}


def paper_workdir(path: Path, **overrides) -> Path:
    """configs/paper.yaml with two of its bases "prepared" as Llama-2-7b's config.json alone: enough
    for the memory plan, which sets the SFT jobs' GPUs (before a base exists they are <TBD>)."""
    cfg = {**yaml.safe_load((ROOT / "configs/paper.yaml").read_text()), **overrides}
    wd = make_workdir(path, cfg)
    for exp in list(cfg["experiments"])[:2]:  # the third keeps its prepare_base job
        (wd / "results" / exp / "base").mkdir(parents=True)
        shutil.copy(ROOT / "configs/shapes/llama-2-7b.json", wd / "results" / exp / "base/config.json")
    return wd


def test_sbatch_command_lines_of_the_paper_profile(tmp_path):
    wd = paper_workdir(tmp_path / "wd")
    jobs = dry_run_resources(wd)
    for rule, tail in EXPECTED.items():
        assert sbatch_line(rule, *jobs[rule]) == PREFIX.format(rule) + tail, rule
    # aggregate and figures are local rules: never submitted
    assert {"aggregate", "figures"} <= set(jobs)


def test_sft_gpus_follow_the_memory_plan(tmp_path):
    h200 = dry_run_resources(paper_workdir(tmp_path / "h200", gpu_memory_gb=141))
    assert h200["sft"][1]["gpu"] == 1 and h200["sft"][1]["mem_mb"] == 29802  # 4096 MiB + 4 B x 6.74 B
    wd = paper_workdir(tmp_path / "small", gpu_memory_gb=8)
    res = subprocess.run([*SNAKEMAKE, "-n", "--workflow-profile", "profiles/slurm"], cwd=wd,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SLURM_ACCOUNT": "a", "SLURM_PARTITION": "p"})
    assert res.returncode == 1
    assert ("experiment llama2_gsm8k, gpu_memory_gb 8: SFT does not fit: 27.2 GiB per GPU on 8 GPUs, "
            "8 GiB available") in res.stdout + res.stderr
    # without gpu_memory_gb (every CPU config), SFT asks for no GPU
    cpu = dry_run_resources(make_workdir(tmp_path / "cpu"))
    assert cpu["sft"][1]["gpu"] == 0


def test_gpu_model_and_gres_variants_reach_sbatch(tmp_path):
    wd = paper_workdir(tmp_path / "wd")
    model = dry_run_resources(wd, "--set-resources", "sft:gpu=4", "sft:gpu_model=a100")
    assert sbatch_line("sft", *model["sft"]).endswith("-D WD --gpus=a100:4")
    gres = dry_run_resources(wd, "--set-resources", "sft:gres=gpu:h100:4", "sft:gpu=0")
    line = sbatch_line("sft", *gres["sft"])
    assert line.endswith("-D WD --gres=gpu:h100:4") and "--gpus" not in line
    # the GPU count is also the number of torchrun ranks the SFT job starts
    dry = subprocess.run([*SNAKEMAKE, "-n", "-p", "--workflow-profile", "profiles/slurm",
                          "--set-resources", "sft:gpu=4"], cwd=wd, capture_output=True, text=True,
                         env={**os.environ, "SLURM_ACCOUNT": "a", "SLURM_PARTITION": "p"}, timeout=300)
    assert "--nproc 4 --out" in dry.stdout
    dry = subprocess.run([*SNAKEMAKE, "-n", "-p", "--workflow-profile", "profiles/slurm",
                          "--set-resources", "sft:gres=gpu:h100:4", "sft:gpu=0"], cwd=wd,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SLURM_ACCOUNT": "a", "SLURM_PARTITION": "p"})
    assert "--nproc 4 --out" in dry.stdout


# ---------------------------------------------------------------------------------------------
# A real cluster


# The cluster itself: the session fixture `slurm_cluster` in conftest.py.


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def paper_shaped_config(folder: Path) -> dict:
    """configs/paper.yaml with what this machine cannot run replaced, every other key kept: the
    tiny base for Llama-2-7b; small local files in each experiment's format for the hub
    datasets; CPU sizes: 2 orders x 2 epochs, two of the paper's merges (weighted average and
    selection with resampling) with one seed and no ablation, a few test items per benchmark
    (each SLURM job costs about 8 s of start-up here; the local DAG tests run every method and
    the ablation); SFT in fp32 (bf16 autocast is slow on CPU)."""
    cfg = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())["experiments"]["tiny"]
    del cfg["gpu_memory_gb"]  # no GPUs: SFT runs on the CPU, its ranks set by sft:ranks
    n = 30
    files = {
        "llama2_gsm8k": _jsonl(folder / "gsm8k.jsonl", [
            {"question": f"Tom has {i} apples and buys {i + 2}. How many now?",
             "answer": f"{i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}"}
            for i in range(n)]),
        "llama2_alpaca": _jsonl(folder / "alpaca.jsonl", [
            {"instruction": f"Give a word that rhymes with number {i}.", "input": "" if i % 3 else "please",
             "output": f"Word {i} rhymes with {i + 10}."} for i in range(n)]),
        "llama2_code": _jsonl(folder / "code.jsonl", [
            {"instruction": f"Write a function that returns {i}.", "input": "",
             "output": f"def f():\n    return {i}\n"} for i in range(n)]),
    }
    assert set(files) == set(cfg["experiments"])
    for name, exp in cfg["experiments"].items():
        exp["base"] = tiny["base"]
        exp["data"] = {**exp["data"], "path": files[name], "train_size": 16, "test_size": 6,
                       "max_tokens": 320, "val_size": 0}  # no tuned merge below
        exp["orders"] = {**exp["orders"], "n": 2, "epochs": 2}
        exp["sft"] = {**exp["sft"], "lr": 1e-3, "batch_size": 4, "micro_batch_size": 1,
                      "max_length": 320, "dtype": "auto", "checkpoint_every": 2}
    cfg["merges"] = {k: cfg["merges"][k] for k in ("average", "selection_resample")}
    cfg["merge_seeds"] = [0]
    cfg["ablation"] = {"sizes": []}
    cfg["benchmarks"]["loss"]["settings"] = {"batch_size": 8}
    cfg["benchmarks"]["gsm8k"]["settings"] = {"limit": 4, "max_new_tokens": 8, "batch_size": 4}
    cfg["benchmarks"]["humaneval"]["settings"] = {"limit": 3, "max_new_tokens": 16, "batch_size": 3}
    return cfg


# CPU overrides of the profile's GPU requests: one CPU and at most 3 GB per job, so two jobs
# share this 2-core machine; each SFT job runs 2 FSDP ranks (gloo) on its one CPU. The
# command-line lists replace the profile's.
CPU_OVERRIDES = [
    "--default-resources", "slurm_account=ordermerge-ci", "slurm_partition=debug", "mem_mb=2000",
    "runtime=30", "cpus_per_task=1",
    "--set-resources", "sft:ranks=2", "sft:mem_mb=3000",
    "sample_losses:gpu=0", "evaluate:gpu=0", "evaluate:mem_mb=3000", "prepare_base:mem_mb=3000",
    "--set-threads", "sft=1", "sample_losses=1", "evaluate=1", "merge=1",
    "--slurm-init-seconds-before-status-checks", "5",
]


def _squeue(env: dict[str, str]) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=30).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]


@pytest.mark.slow
def test_paper_shaped_dag_on_slurm_with_2_rank_sft_and_a_cancelled_job(slurm_cluster, tmp_path):
    """The DAG of configs/paper.yaml (three experiments in the gsm8k and alpaca formats, every
    merge of the paper, per-experiment benchmarks) through a real SLURM cluster, every SFT job at 2
    gloo FSDP ranks, one of them scancelled after its first checkpoint and resumed."""
    env = {**os.environ, **slurm_cluster}
    (tmp_path / "data").mkdir()
    cfg = paper_shaped_config(tmp_path / "data")
    wd = make_workdir(tmp_path / "wd", cfg)
    cmd = [*SNAKEMAKE, "--workflow-profile", "profiles/slurm", *CPU_OVERRIDES]
    log = open(tmp_path / "snakemake.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=wd, stdout=log, stderr=subprocess.STDOUT, env=env)
    top = wd / "results/llama2_gsm8k"
    res = top / "rep1"  # the experiment's one training replicate
    cancelled = None
    try:
        while proc.poll() is None and cancelled is None and time.monotonic() - t0 < 1500:
            if any((res / "scratch/order1").glob("step-*")):  # a published checkpoint
                ids = [i for i, _, c in _squeue(slurm_cluster) if c == "rule_sft_wildcards_llama2_gsm8k_1_1"]
                subprocess.run(["scancel", ids[-1]], env=env, check=True, timeout=30)
                cancelled = ids[-1]
            time.sleep(0.2)
        rc = proc.wait(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    seconds = time.monotonic() - t0
    text = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, text[-6000:]
    assert cancelled, "order 1's SFT finished before its first checkpoint could be cancelled"

    # Every job except the local rules went through SLURM, order 1's SFT twice.
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", text)
    local = len(re.findall(r"^localrule (aggregate|figures|front_page):", text, re.M))
    done = re.search(r"(\d+) of (\d+) steps \(100%\) done", text)
    assert done and local == 7, text[-3000:]  # aggregate, figures per experiment; front page
    assert len(submitted) == int(done.group(2)) - local - 1 + 1  # - rule all, + the retry
    states = {i: s for i, s, _ in _squeue(slurm_cluster)}
    assert states[cancelled] == "CANCELLED"
    assert all(states[i] == "COMPLETED" for i in submitted if i != cancelled), states

    # Every SFT job ran 2 ranks; the resumed one equals an uninterrupted 2-rank run.
    for exp in cfg["experiments"]:
        for k in (1, 2):
            sft_log = (wd / f"results/{exp}/rep1/logs/sft_order{k}.log").read_text()
            assert "--nproc_per_node=2 -m ordermerge -q sft" in sft_log, (exp, k)
    sft_log = (res / "logs/sft_order1.log").read_text()
    assert re.search(r"resuming from checkpoint at step [24] ", sft_log), sft_log[-2000:]
    ref = tmp_path / "ref"
    sft = subprocess.run(
        [sys.executable, "-m", "ordermerge", "-q", "sft", "--base", str(top / "base"), "--data",
         str(top / "data/train.jsonl"), "--order", str(res / "orders/order1.json"), "--config",
         json.dumps(cfg["experiments"]["llama2_gsm8k"]["sft"]), "--nproc", "2", "--out", str(ref)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert (ref / "model.safetensors").read_bytes() == (res / "sft/order1/model/model.safetensors").read_bytes()

    # Each experiment ran its own benchmarks and produced its tables and figures.
    want = {"llama2_gsm8k": {"loss", "gsm8k"}, "llama2_alpaca": {"loss"}, "llama2_code": {"loss", "humaneval"}}
    for exp, benches in want.items():
        r = wd / "results" / exp
        ran = {p.name.removesuffix(".json") for p in r.glob("rep1/eval/*/*.json")
               if not p.name.endswith(".items.jsonl") and p.name != "ordermerge_eval.json"}
        assert ran == benches, (exp, ran)
        assert len(list(r.glob("rep1/eval/*/loss.json"))) == 5  # base, 2 orders, 2 merges
        for f in ("tables/main.md", "tables/paired.md", "tables/claims.md", "figures/main.png",
                  "figures/imbalance.png", "figures/ablation.png"):
            assert (r / f).stat().st_size > 0, (exp, f)
    assert len(list((wd / "results/llama2_code").glob("rep1/eval/*/humaneval.json"))) == 5
    (front_page,) = (wd / "results/report").glob("front_page-*.rst")
    front = front_page.read_text()
    assert all(f"Experiment {exp}" in front for exp in cfg["experiments"])

    # The merge jobs asked SLURM for the memory the rule computed from the base's largest tensor.
    numel = max(128 * 49152, 256 * 128)  # tied embedding (vocab x hidden) is the largest tensor
    for m in (2,):
        want_mb = 1024 + -(-(m + 1) * 12 * numel // 2**20)
        ids = [i for i, _, c in _squeue(slurm_cluster)
               if c.startswith("rule_merge_wildcards_llama2_gsm8k_") and f"_n{m}_" in c]
        assert len(ids) == 2
        assert ids
        for i in ids:
            show = subprocess.run(["scontrol", "show", "job", i], capture_output=True, text=True,
                                  env=env, timeout=30).stdout
            assert f"MinMemoryNode={want_mb}M" in show, show

    again = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert "submitted with SLURM jobid" not in again.stdout + again.stderr
    print(f"paper-shaped DAG through SLURM: {seconds:.0f} s, {len(submitted)} SLURM jobs")
