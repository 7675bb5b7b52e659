"""The Snakemake workflow on the tiny config: full run, outputs, rerun semantics, validation."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, make_workdir, smk

from ordermerge.claims import read_claims
from ordermerge.jsonl import read_jsonl

pytestmark = pytest.mark.slow
FIGURES = ["imbalance", "main", "ablation", "zero_fraction", "training"]


def planned(workdir: Path, config: dict | None = None) -> dict[str, int]:
    """Jobs Snakemake's own dry run schedules, by rule (empty = nothing to do)."""
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    res = smk(workdir, "-n")
    out = res.stdout + res.stderr
    if "Nothing to be done" in out:
        return {}
    block = out.split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    jobs.pop("total", None)
    return jobs


def test_full_tiny_dag_outputs(tiny_run):
    res = tiny_run / "results" / "tiny"
    for f in FIGURES:
        for ext in ("png", "pdf"):
            p = res / "figures" / f"{f}.{ext}"
            assert p.stat().st_size > 5000, p
        assert (res / "figures" / f"{f}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main = pd.read_csv(res / "tables" / "main.csv")
    assert list(main.model) == ["base", "order1", "order2", "order3", "single (mean ± std)",
                                "average", "selection", "selection_resample", "ties"]
    assert {"loss_id", "loss_ood", "gsm_id"} <= set(main.columns)
    md = (res / "tables" / "main.md").read_text()
    assert md.count("**") >= 6  # a bold best value per column
    assert "\\textbf" in (res / "tables" / "main.tex").read_text()
    paired = pd.read_csv(res / "tables" / "paired.csv")
    assert set(paired["merge"]) == {"average", "selection", "selection_resample", "ties"}
    assert set(paired.reference) == {"mean single"}  # 2 replicates: no order k is one model
    assert set(paired.replicates) == {2}
    assert {"effect", "ci95_lo_uncorrected", "ci95_hi_uncorrected", "p_uncorrected"} <= set(paired.columns)
    assert "verdict" not in paired.columns  # descriptive: the verdicts are the claims table's
    assert "not corrected" in (res / "tables" / "paired.md").read_text()
    # the claims table: its shape (the tiny model's verdicts mean nothing)
    claims = read_claims(res / "tables" / "claims.csv")
    rows = {(r.claim, r.benchmark, r.comparison) for r in claims.itertuples()}
    train = "train (per-sample loss)"
    assert {("a", train, "−slope on epoch-1 step (first − last step)"),
            ("a_recency", train, "−slope on epoch-2 step")} <= rows
    for bench in ("loss_id", "loss_ood", "gsm_id"):
        assert {(c, bench, cmp) for c, cmp in [("b", "average − mean single"), ("b", "ties − mean single"),
                                               ("c", "selection − average"), ("c", "selection_resample − average"),
                                               ("d", "selection_resample − selection")]} <= rows
    assert ("e", "loss_id", "selection_resample: m=3 − mean over m<3 (all subsets, seeds)") in rows
    assert {("f", train, f"{s}: gain (order − merge) early − late in epoch 1")
            for s in ("average", "selection", "selection_resample", "ties")} <= rows
    assert len(claims) == 2 + 4 + 3 * 7 + 2  # gsm_id has no m=2 model: no ablation row for it
    assert set(claims.R) == {2} and set(claims.verdict) <= {"shown", "not shown", "opposite", "not tested"}
    # gsm_id (accuracy) is the primary metric; the tiny model scores 0 on it: named, not tested
    assert set(claims[claims.family == "primary"].benchmark) == {"gsm_id"}
    floor = claims[claims.verdict == "not tested"]
    assert set(floor.benchmark) <= {"gsm_id"}
    assert (claims.ci_level == 0.95).all() and claims[claims.verdict != "not tested"].p_holm.notna().all()
    assert "| family | claim |" in (res / "tables" / "claims.md").read_text()
    assert claims[claims.comparison.str.startswith("ties ")].note.str.contains(
        "tuned on the validation split").all()
    (page,) = (tiny_run / "results" / "report").glob("front_page-*.rst")
    front = page.read_text()
    assert "Experiment tiny" in front and "2 training replicates" in front
    for rep in (1, 2):
        for k in (1, 2, 3):
            losses = pd.read_parquet(res / f"rep{rep}/sft/order{k}/sample_losses.parquet")
            assert len(losses) == 12 and {"pos_epoch1", "pos_epoch2", "loss"} <= set(losses.columns)
        (ablation,) = (res / f"rep{rep}/merged/selection_resample").glob("n2-o*")
        merged = json.loads((ablation / "s0/model/merge.json").read_text())
        assert len(merged["models"]) == 2  # a subset of 2 of the 3 orders
        tuned = json.loads((res / f"rep{rep}/tuned/ties.json").read_text())
        assert tuned["grid"] == [{"density": 0.5, "lambda": 0.5}, {"density": 0.5, "lambda": 1.0}]
        ties = json.loads((res / f"rep{rep}/merged/ties/n3/s0/model/merge.json").read_text())
        assert ties["parameters"] == tuned["chosen"] and ties["tuning"] == tuned
        # each grid point was scored on the validation split only
        for i in (0, 1):
            assert files(res / f"rep{rep}/eval/ties__t{i}-n3-s0") == ["ordermerge_eval.json", "val.items.jsonl", "val.json"]
    assert len(read_jsonl(res / "data/val.jsonl")) == 4
    assert len(list(res.rglob("benchmarks/*.tsv"))) >= 40
    assert files(res / "rep1/eval/order1") == [
        "gsm_id.items.jsonl", "gsm_id.json", "loss_id.items.jsonl", "loss_id.json",
        "loss_ood.items.jsonl", "loss_ood.json", "ordermerge_eval.json"]
    assert files(res / "rep2/eval" / f"selection_resample-{ablation.name}-s0") == [
        "loss_id.items.jsonl", "loss_id.json", "loss_ood.items.jsonl", "loss_ood.json",
        "ordermerge_eval.json"]
    assert not (res / "rep2/eval/base").exists()  # the base is shared: evaluated once
    assert not list(res.rglob(".*.partial*"))


def files(folder: Path) -> list[str]:  # without Snakemake's .snakemake_timestamp
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_self_contained_report(tiny_run):
    """The README's report command, as written (tiny_run's config.yaml is the tiny config),
    gives one self-contained HTML file that opens on this config's front page."""
    readme = (ROOT / "README.md").read_text()
    (line,) = {m for m in re.findall(r"`(snakemake [^`]*--report [^`]*)`", readme)
               if "config.yaml" in m and "my.yaml" not in m}
    argv = line.split()[1:]
    smk(tiny_run, *argv)
    report = tiny_run / argv[argv.index("--report") + 1]
    html = report.read_bytes()
    report.unlink()  # not an output of the DAG: the shared run's results/ stays the DAG's own
    assert len(html) > 50_000
    for name in ("imbalance.png", "zero_fraction.png", "main.md", "Experiment tiny"):
        assert name.encode() in html


def test_the_report_of_another_config_never_shows_this_runs_front_page(tiny_run, tmp_path):
    """Each config has its own front page (named by the config's digest): reporting on config
    Y after running config X must not head the report with X's experiment and verdicts."""
    other = yaml.safe_load((tiny_run / "config.yaml").read_text())
    other["merges"]["ties"]["params"]["density"] = 0.3
    (tiny_run / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    try:
        smk(tiny_run, "--configfile", "other.yaml", "--report", str(tmp_path / "other.html"))
    finally:
        (tiny_run / "other.yaml").unlink()
    html = (tmp_path / "other.html").read_bytes()
    assert b"Experiment tiny" not in html  # X's front page is not Y's
    assert b"built before the pipeline wrote its claims tables" in html


def test_nothing_to_do_after_full_run(tiny_run):
    assert planned(tiny_run) == {}


def test_forcerun_aggregate_figures_recomputes_nothing_upstream(tiny_run):
    res = smk(tiny_run, "-n", "--forcerun", "aggregate", "figures")
    block = (res.stdout + res.stderr).split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", block, re.M)} - {"total"}
    assert jobs == {"aggregate", "figures", "front_page", "all"}


def test_touching_an_unrelated_file_schedules_nothing(tiny_run):
    (tiny_run / "notes.txt").write_text("unrelated")
    (tiny_run / "configs" / "tiny.yaml").touch()
    assert planned(tiny_run) == {}


def planned_after(wd: Path, mutate) -> dict[str, int]:
    """The jobs Snakemake plans after `mutate(config)`; the original config is restored even
    when the caller's assertion later fails (the shared tiny run must stay untouched)."""
    path = wd / "config.yaml"
    orig = path.read_text()
    cfg = yaml.safe_load(orig)
    mutate(cfg)
    try:
        return planned(wd, cfg)
    finally:
        path.write_text(orig)


def test_changing_one_strategy_parameter(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["merges"]["selection"]["params"].__setitem__("resample", True))
    # selection at m = N in each replicate (a main merge: its per-sample losses, claim f, too)
    assert jobs == {"merge": 2, "evaluate": 2, "merge_sample_losses": 2, "aggregate": 1,
                    "figures": 1, "front_page": 1, "all": 1}


def test_changing_a_tuned_merges_parameter_retunes_it_in_every_replicate(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["merges"]["ties"]["params"].__setitem__("density", 0.3))
    # per replicate: the 2 grid points (merge + validation), the choice, the chosen merge (its
    # evaluation and per-sample losses)
    assert jobs == {"merge": 2 * 3, "evaluate": 2 * 3, "tune": 2, "merge_sample_losses": 2,
                    "aggregate": 1, "figures": 1, "front_page": 1, "all": 1}


def test_changing_one_benchmark_setting_reruns_the_models_it_covers(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["benchmarks"]["gsm_id"]["settings"].__setitem__("limit", 3))
    # gsm_id covers the main models (base, 3 orders, 4 merges at m = N in replicate 1; the same
    # but the base in replicate 2), not the ablation merge; one evaluation job per model runs
    # all of that model's benchmarks
    assert jobs == {"evaluate": 8 + 7, "aggregate": 1, "figures": 1, "front_page": 1, "all": 1}


def test_adding_an_order(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["experiments"]["tiny"]["orders"].__setitem__("n", 4))
    # per replicate: order4, the merges of all 4 (3 + ties's 2 grid points and its choice);
    # the m = 2 ablation subset is drawn from C(4, 2) now: replicate 1 draws another one,
    # replicate 2 the same as before (seeded, so this count is exact)
    assert jobs == {"make_order": 2, "sft": 2, "sample_losses": 2, "merge": 2 * 6 + 1,
                    "tune": 2, "evaluate": 2 * (1 + 4 + 2) + 1, "merge_sample_losses": 2 * 4,
                    "aggregate": 1, "figures": 1, "front_page": 1, "all": 1}


def test_adding_a_replicate_reruns_nothing_of_the_others(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["experiments"]["tiny"]["orders"].__setitem__("replicates", 3))
    # replicate 3 alone: its orders, sub-models, merges (5 + 2 grid points) and evaluations
    # (no base: it is evaluated once, in replicate 1)
    assert jobs == {"make_order": 3, "sft": 3, "sample_losses": 3, "merge": 7, "tune": 1,
                    "evaluate": 3 + 5 + 2, "merge_sample_losses": 4, "aggregate": 1,
                    "figures": 1, "front_page": 1, "all": 1}


def test_changing_the_learning_rate_reruns_sft_and_downstream(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["experiments"]["tiny"]["sft"].__setitem__("lr", 5e-4))
    assert jobs["sft"] == 6 and jobs["sample_losses"] == 6 and jobs["merge"] == 14
    assert jobs["evaluate"] == 21 - 1  # one job per model, every model but the base
    assert "prepare_data" not in jobs and "make_order" not in jobs and "prepare_base" not in jobs


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda c: c["experiments"]["tiny"]["orders"].__setitem__("n", 0),
         "config key experiments.tiny.orders.n: 0 is less than the minimum of 2"),
        (lambda c: c["merges"]["ties"].__setitem__("method", "tie"), "config key merges.ties.method"),
        (lambda c: c.__setitem__("result", "x"), "unknown key ('result' was unexpected)"),
    ],
)
def test_malformed_config_stops_before_any_job(tmp_path, mutate, expect):
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    mutate(cfg)
    wd = make_workdir(tmp_path / "wd", cfg)
    res = smk(wd, "-n", check=False)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ordermerge:")]
    assert len(lines) == 1 and expect in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (wd / "results").exists()


def test_paper_config_dry_runs_with_the_slurm_profile(tmp_path):
    wd = make_workdir(tmp_path / "wd", yaml.safe_load((ROOT / "configs/paper.yaml").read_text()))
    env_cmd = ["env", "SLURM_ACCOUNT=acct", "SLURM_PARTITION=gpu", *SNAKEMAKE, "-n",
               "--workflow-profile", "profiles/slurm"]
    res = subprocess.run(env_cmd, cwd=wd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    block = (res.stdout + res.stderr).split("Job stats:")[1].split("\n\n")[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
    # 3 experiments x 5 orders; merges per experiment: average 4 sizes, selection and
    # selection_resample 4 sizes x 3 seeds, task_arithmetic 1, ties 1, dare_ties 3 seeds, and
    # the grid points the three tuned baselines choose from on the validation split (3 + 2 + 2)
    assert jobs["sft"] == 15 and jobs["make_order"] == 15 and jobs["sample_losses"] == 15
    assert jobs["merge"] == 3 * (4 + 12 + 12 + 1 + 1 + 3 + 7)
    assert jobs["tune"] == 3 * 3
    models = 1 + 5 + 33 + 7  # one evaluation job per model runs all of its benchmarks
    assert jobs["evaluate"] == 3 * models


def test_every_file_under_results_is_a_declared_output(tiny_run):
    """Snakemake knows every file the DAG wrote (one owner of the layout, every output
    declared). --list-untracked also names two kinds of files Snakemake does not track one by
    one though the rules declare them: the contents of directory() outputs (model folders,
    evaluation folders) and the `benchmark:` files; everything else must be absent from it."""
    res = smk(tiny_run, "--list-untracked")
    untracked = [ln.strip() for ln in (res.stdout + res.stderr).splitlines()
                 if ln.strip().startswith("results/")]
    inside_a_folder_output = re.compile(
        r"^results/tiny/(base|rep\d+/(sft/order\d+/model|merged/\w+/n\d+(-o[\d.]+)?/s\d+/model"
        r"|eval/[\w.-]+))/[^/]+$")
    benchmark_file = re.compile(r"^results/tiny/(rep\d+/)?benchmarks/\w+(-[\w.-]+)?\.tsv$")
    assert len(untracked) > 100  # the listing does reach into the folders
    assert [f for f in untracked if not inside_a_folder_output.match(f) and not benchmark_file.match(f)] == []


def test_one_prompt_format_reaches_every_rule_that_formats_prompts(tmp_path):
    """prepare_data, sft, sample_losses and evaluate get the experiment's one `prompt`."""
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    cfg["experiments"]["tiny"]["prompt"] = {"system_prompt": "Be brief.", "chat_template": True}
    wd = make_workdir(tmp_path / "wd", cfg)
    out = smk(wd, "-n", "-p", "--forceall")
    text = out.stdout + out.stderr
    want = "--prompt '{\"chat_template\":true,\"system_prompt\":\"Be brief.\"}'"
    for command in ("prepare-data", "sft --base", "sample-losses", "evaluate --model"):
        lines = [ln for ln in text.splitlines() if f"ordermerge -q {command}" in ln]
        assert lines and all(want in ln for ln in lines), (command, lines[:1])
