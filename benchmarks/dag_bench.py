"""Dry-run and no-op rerun times of a config's DAG, without computing anything.

The no-op rerun of `configs/paper.yaml` needs a finished paper run, which only a GPU cluster
produces. This script builds a stand-in: it copies the workflow into --work, lists every job's
outputs from a dry run, creates them as empty files or folders with modification times in DAG
order, and lets `snakemake --touch` record their metadata (what a real run leaves in
.snakemake/metadata, which Snakemake reads to decide whether params or code changed). Then it
times `snakemake -n` on the empty results folder (the dry run) and on the stand-in (the no-op
rerun, which must say "Nothing to be done").

    python benchmarks/dag_bench.py --configfile configs/paper.yaml --repeats 5 \
        [--work DIR] [--profile profiles/slurm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from workdir import work_dir

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# rules in DAG order; outputs of later rules get later modification times
STAGES = ["prepare_base", "prepare_data", "make_order", "sft", "sample_losses", "merge",
          "evaluate", "aggregate", "figures"]


def snakemake(work: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "SLURM_ACCOUNT": os.environ.get("SLURM_ACCOUNT", "bench"),
           "SLURM_PARTITION": os.environ.get("SLURM_PARTITION", "bench")}
    t0 = time.perf_counter()
    res = subprocess.run([*SNAKEMAKE, *args], cwd=work, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0, res.stdout + res.stderr


def stand_in(work: Path, listing: str) -> int:
    """Create every output named in a dry-run listing; returns how many."""
    t0 = time.time() - 100_000
    made = 0
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", listing):
        m = re.match(r"(?:local)?rule (\w+):", block)
        out = re.search(r"\n\s+output: (.*)", block)
        if not m or not out or m.group(1) not in STAGES:
            continue
        stamp = t0 + 100 * STAGES.index(m.group(1))
        for path in (work / p.strip() for p in out.group(1).split(",")):
            if path.suffix:  # files have an extension; model, data and eval outputs are folders
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
            os.utime(path, (stamp, stamp))
            made += 1
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="configs/paper.yaml")
    ap.add_argument("--profile", default="profiles/slurm", help="workflow profile of the timed runs")
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    a.work = work_dir(a.work, "dag-bench")
    shutil.copytree(ROOT, a.work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "tests", "benchmarks", "*.egg-info", "__pycache__"))
    timed = ["-n", "--configfile", a.configfile, "--workflow-profile", a.profile]
    dry = [snakemake(a.work, timed)[0] for _ in range(a.repeats)]
    _, listing = snakemake(a.work, timed)
    jobs = len(re.findall(r"^(?:local)?rule \w+:", listing, re.M))
    made = stand_in(a.work, listing)
    snakemake(a.work, ["--touch", "--forceall", "--cores", "1", "--configfile", a.configfile])
    noop = []
    for _ in range(a.repeats):
        seconds, out = snakemake(a.work, timed)
        if "Nothing to be done" not in out:
            raise SystemExit(f"the stand-in is not up to date:\n{out[-2000:]}")
        noop.append(seconds)
    print(f"{a.configfile}: {jobs} jobs, {made} stand-in outputs; profile {a.profile}; "
          f"{a.repeats} runs each\n")
    print("| run | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, xs in (("dry run (nothing built)", dry), ("no-op rerun (everything up to date)", noop)):
        print(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
