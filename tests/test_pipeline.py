"""The Snakemake workflow on the tiny config: full run, outputs, rerun semantics, validation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, make_workdir, smk

from ordermerge.claims import read_claims

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
    assert set(paired.reference) == {"mean single", "order1", "order2", "order3"}
    assert {"effect", "ci_lo", "ci_hi", "p", "verdict"} <= set(paired.columns)
    # the claims table: its shape (the tiny model's verdicts mean nothing)
    claims = read_claims(res / "tables" / "claims.csv")
    rows = {(r.claim, r.benchmark, r.comparison) for r in claims.itertuples()}
    train = "train (per-sample loss)"
    assert {("a", train, "−slope on epoch-1 position"), ("a_recency", train, "−slope on last-epoch position")} <= rows
    for bench in ("loss_id", "loss_ood", "gsm_id"):
        assert {(c, bench, cmp) for c, cmp in [("b", "average − mean single"), ("b", "ties − mean single"),
                                               ("c", "selection − average"), ("c", "selection_resample − average"),
                                               ("d", "selection_resample − selection")]} <= rows
    assert ("e", "loss_id", "selection_resample: m=3 − m=2") in rows
    assert {("f", train, f"{s}: order's model − merge, early samples")
            for s in ("average", "selection", "selection_resample", "ties")} <= rows
    assert len(claims) == 2 + 4 + 3 * 7 + 2  # gsm_id has no m=2 model: no ablation row for it
    assert set(claims.verdict) <= {"shown", "not shown", "opposite"}
    floor = claims[claims.note != ""]
    assert set(floor.benchmark) <= {"gsm_id"} and set(floor.verdict) == {"not shown"}
    tested = (claims.note == "").sum()
    assert claims.ci_level.iloc[0] == pytest.approx(1 - 0.05 / tested)
    assert "| claim | benchmark | comparison |" in (res / "tables" / "claims.md").read_text()
    assert "Experiment tiny" in (tiny_run / "results" / "report_front_page.rst").read_text()
    for k in (1, 2, 3):
        losses = pd.read_parquet(res / f"sft/order{k}/sample_losses.parquet")
        assert len(losses) == 12 and {"pos_epoch1", "pos_epoch2", "loss"} <= set(losses.columns)
    assert (res / "merged/selection_resample/n2/s0/model/merge.json").exists()
    assert len(list((res / "benchmarks").glob("*.tsv"))) >= 20
    def files(folder: Path) -> list[str]:  # without Snakemake's .snakemake_timestamp
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    assert files(res / "eval/order1") == [
        "gsm_id.items.jsonl", "gsm_id.json", "loss_id.items.jsonl", "loss_id.json",
        "loss_ood.items.jsonl", "loss_ood.json", "ordermerge_eval.json"]
    assert files(res / "eval/selection_resample-n2-s0") == [
        "loss_id.items.jsonl", "loss_id.json", "loss_ood.items.jsonl", "loss_ood.json",
        "ordermerge_eval.json"]
    assert not list(res.rglob(".*.partial*"))


def test_self_contained_report(tiny_run):
    smk(tiny_run, "--report", "report.html")
    html = (tiny_run / "report.html").read_bytes()
    assert len(html) > 50_000
    for name in ("imbalance.png", "zero_fraction.png", "main.md"):
        assert name.encode() in html


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
    jobs = planned_after(tiny_run, lambda c: c["merges"]["ties"]["params"].__setitem__("density", 0.3))
    # ties at m = N is a main merge: its per-sample training losses (claim f) rerun too
    assert jobs == {"merge": 1, "evaluate": 1, "merge_sample_losses": 1, "aggregate": 1,
                    "figures": 1, "front_page": 1, "all": 1}


def test_changing_one_benchmark_setting_reruns_the_models_it_covers(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["benchmarks"]["gsm_id"]["settings"].__setitem__("limit", 3))
    # gsm_id covers the main models (base, 3 orders, 4 strategies at m = N), not the ablation
    # merge; one evaluation job per model runs all of that model's benchmarks
    assert jobs == {"evaluate": 8, "aggregate": 1, "figures": 1, "front_page": 1, "all": 1}


def test_adding_an_order(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["experiments"]["tiny"]["orders"].__setitem__("n", 4))
    # order4 and the strategies' new m = 4 merges; the m = 2 ablation merge is untouched
    assert jobs == {"make_order": 1, "sft": 1, "sample_losses": 1, "merge": 4,
                    "evaluate": 1 + 4, "merge_sample_losses": 4, "aggregate": 1, "figures": 1,
                    "front_page": 1, "all": 1}


def test_changing_the_learning_rate_reruns_sft_and_downstream(tiny_run):
    jobs = planned_after(tiny_run, lambda c: c["experiments"]["tiny"]["sft"].__setitem__("lr", 5e-4))
    assert jobs["sft"] == 3 and jobs["sample_losses"] == 3 and jobs["merge"] == 5
    assert jobs["evaluate"] == 9 - 1  # one job per model, every model but the base
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
    # selection_resample 4 sizes x 3 seeds, task_arithmetic 1, ties 1, dare_ties 3 seeds
    assert jobs["sft"] == 15 and jobs["make_order"] == 15 and jobs["sample_losses"] == 15
    assert jobs["merge"] == 3 * (4 + 12 + 12 + 1 + 1 + 3)
    models = 1 + 5 + 33  # one evaluation job per model runs all of its benchmarks
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
        r"^results/tiny/(base|sft/order\d+/model|merged/\w+/n\d+/s\d+/model|eval/[\w.-]+)/[^/]+$")
    benchmark_file = re.compile(r"^results/tiny/benchmarks/\w+(-[\w.-]+)?\.tsv$")
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
