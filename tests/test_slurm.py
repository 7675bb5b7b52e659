"""SLURM: the profile's sbatch lines (no cluster needed), and the tiny pipeline on a real
one-node SLURM cluster (tests/slurm/cluster.sh), with an SFT job cancelled mid-training."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
    assert ("experiment llama2_gsm8k, gpu_memory_gb 8: SFT does not fit: 23.2 GiB per GPU on 8 GPUs, "
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


# CPU overrides of the profile's GPU requests: one CPU and at most 3 GB per job, so two jobs
# share this 2-core machine. The command-line lists replace the profile's.
CPU_OVERRIDES = [
    "--default-resources", "slurm_account=ordermerge-ci", "slurm_partition=debug", "mem_mb=2000",
    "runtime=30", "cpus_per_task=1",
    "--set-resources", "sft:gpu=0", "sft:mem_mb=3000", "sample_losses:gpu=0",
    "evaluate:gpu=0", "evaluate:mem_mb=3000", "prepare_base:mem_mb=3000",
    "--set-threads", "sft=1", "sample_losses=1", "evaluate=1", "merge=1",
    "--slurm-init-seconds-before-status-checks", "5",
]


def _squeue(env: dict[str, str]) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=30).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.count("|") == 2]


@pytest.mark.slow
def test_tiny_pipeline_on_slurm_with_a_cancelled_sft_job(slurm_cluster, tiny_run, tmp_path):
    env = {**os.environ, **slurm_cluster}
    wd = make_workdir(tmp_path / "wd")
    cmd = [*SNAKEMAKE, "--workflow-profile", "profiles/slurm", *CPU_OVERRIDES]
    log = open(tmp_path / "snakemake.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=wd, stdout=log, stderr=subprocess.STDOUT, env=env)
    scratch = wd / "results/tiny/scratch/order1"
    cancelled = None
    try:
        while proc.poll() is None and cancelled is None and time.monotonic() - t0 < 1500:
            if any(scratch.glob("step-*")):  # a published checkpoint
                ids = [i for i, _, c in _squeue(slurm_cluster) if c == "rule_sft_wildcards_tiny_1"]
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
    local = len(re.findall(r"^localrule (aggregate|figures):", text, re.M))
    done = re.search(r"(\d+) of (\d+) steps \(100%\) done", text)
    assert done and local == 2, text[-3000:]
    assert len(submitted) == int(done.group(2)) - local - 1 + 1  # - rule all, + the retry
    states = {i: s for i, s, _ in _squeue(slurm_cluster)}
    assert states[cancelled] == "CANCELLED"
    assert all(states[i] == "COMPLETED" for i in submitted if i != cancelled), states
    sft1 = [i for i, _, c in _squeue(slurm_cluster) if c == "rule_sft_wildcards_tiny_1"]
    assert len(set(sft1) & set(submitted)) == 2

    # The retry resumed from the checkpoint, and the weights equal the uninterrupted local run's.
    sft_log = (wd / "results/tiny/logs/sft_order1.log").read_text()
    assert re.search(r"resuming from checkpoint at step [24] ", sft_log), sft_log[-2000:]
    res, ref = wd / "results/tiny", tiny_run / "results/tiny"
    for k in (1, 2, 3):
        assert (res / f"orders/order{k}.json").read_bytes() == (ref / f"orders/order{k}.json").read_bytes()
        a = res / f"sft/order{k}/model/model.safetensors"
        assert a.read_bytes() == (ref / f"sft/order{k}/model/model.safetensors").read_bytes(), k
    merged = sorted(p.relative_to(ref) for p in (ref / "merged").rglob("*")
                    if p.name in ("model.safetensors", "merge.json"))
    assert len(merged) == 10  # 5 merges (two ran at once on the 2 CPUs), weights + metadata
    for rel in merged:
        assert (res / rel).read_bytes() == (ref / rel).read_bytes(), rel
    items = sorted(p.relative_to(res) for p in (res / "eval").rglob("*.items.jsonl"))
    assert len(items) == 26  # 9 models x 2 loss benchmarks + 8 main models x GSM
    for rel in items:
        assert (res / rel).read_bytes() == (ref / rel).read_bytes(), rel
    for f in ("tables/main.md", "figures/main.png", "figures/imbalance.png"):
        assert (res / f).stat().st_size > 0

    # The merge jobs asked SLURM for the memory the rule computed from the base's largest tensor.
    numel = max(128 * 49152, 256 * 128)  # tied embedding (vocab x hidden) is the largest tensor
    for m in (2, 3):
        want = 1024 + -(-(m + 1) * 12 * numel // 2**20)
        ids = [i for i, _, c in _squeue(slurm_cluster)
               if c.startswith("rule_merge_wildcards_tiny_") and f"_{m}_" in c]
        assert ids
        for i in ids:
            show = subprocess.run(["scontrol", "show", "job", i], capture_output=True, text=True,
                                  env=env, timeout=30).stdout
            assert f"MinMemoryNode={want}M" in show, show

    again = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert "submitted with SLURM jobid" not in again.stdout + again.stderr
    print(f"tiny pipeline through SLURM: {seconds:.0f} s, {len(submitted)} SLURM jobs")
