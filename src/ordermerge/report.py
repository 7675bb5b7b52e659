"""Tables: the main results table (CSV, Markdown, LaTeX), descriptive paired comparisons with
the mean single model (and each order, with one replicate), the claims table (ordermerge.claims)
and the report's front page. Torch-free: the report's conda environment has no torch."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_file
from .catalog import BENCHMARKS
from .claims import (
    claims_from_results,
    read_claims,
    replicate_effect,
    seed_mean,
    single_mean,
)
from .claims import render_markdown as render_claims
from .jsonl import read_jsonl
from .layout import Layout, ModelId


def lower_is_better(benchmark: str) -> bool:
    return BENCHMARKS[benchmark].lower_is_better


def layout_of(manifest: dict[str, Any], rep: int = 1) -> Layout:
    return Layout(manifest["results"], manifest["experiment"], rep)


def load_eval(lay: Layout, model: str, bench: str) -> tuple[dict[str, Any], dict[str, float]]:
    res = json.loads(Path(lay.eval_result(model, bench)).read_text())
    items = {it["id"]: float(it["score"]) for it in read_jsonl(lay.eval_items(model, bench))}
    return res, items


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def models_by_key(manifest: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    """(replicate, model id) -> the manifest's entry for that model."""
    return {(m["rep"], m["id"]): m for m in manifest["models"]}


def collect(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per (replicate, model, benchmark): value, CI, n, kind, merge, m, seed."""
    entry = models_by_key(manifest)
    rows = []
    for bench, kind in manifest["benchmarks"].items():
        for rep, mid in manifest["bench_models"][bench]:
            m = entry[(rep, mid)]
            res, _ = load_eval(layout_of(manifest, rep), mid, bench)
            rows.append({"rep": rep, "model": mid, "kind": m["kind"], "merge": m.get("merge"),
                         "m": m.get("m"), "seed": m.get("seed"), "k": m.get("k"),
                         "benchmark": bench, "type": kind, "value": res["value"],
                         "ci_lo": res["ci95"][0], "ci_hi": res["ci95"][1], "n": res["n"]})
    return pd.DataFrame(rows)


def main_table(df: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """Rows: base, each order (mean over replicates), the single models (mean ± std over every
    order of every replicate), each merge of all N orders (mean ± std over replicates and
    merge seeds)."""
    n = manifest["n_orders"]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for bench in manifest["benchmarks"]:
        d = df[df.benchmark == bench]
        out.setdefault("base", {})[bench] = (float(d[d.kind == "base"].value.iloc[0]), float("nan"))
        singles = d[d.kind == "order"]
        for k, rows in singles.groupby("k"):
            out.setdefault(f"order{int(k)}", {})[bench] = _mean_std(list(rows.value))
        out.setdefault("single (mean ± std)", {})[bench] = _mean_std(list(singles.value))
        for s in manifest["merges"]:
            vals = list(d[(d.kind == "merge") & (d["merge"] == s) & (d.m == n)].value)
            if vals:
                out.setdefault(s, {})[bench] = _mean_std(vals)
    rows = []
    for name, cols in out.items():
        row: dict[str, Any] = {"model": name}
        for bench, (v, sd) in cols.items():
            row[bench] = v
            row[f"{bench}_std"] = sd
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(v: float, sd: float) -> str:
    if isinstance(sd, float) and not math.isnan(sd) and sd > 0:
        return f"{v:.4f} ± {sd:.4f}"
    return f"{v:.4f}"


def _best(table: pd.DataFrame, manifest: dict[str, Any], bench: str) -> float:
    vals = table[bench]
    return vals.min() if lower_is_better(manifest["benchmarks"][bench]) else vals.max()


def render_markdown(table: pd.DataFrame, manifest: dict[str, Any]) -> str:
    benches = list(manifest["benchmarks"])
    arrows = {b: ("↓" if lower_is_better(manifest["benchmarks"][b]) else "↑") for b in benches}
    lines = ["| model | " + " | ".join(f"{b} ({manifest['benchmarks'][b]} {arrows[b]})" for b in benches) + " |",
             "|---|" + "---|" * len(benches)]
    for _, r in table.iterrows():
        cells = []
        for b in benches:
            c = _fmt(r[b], r[f"{b}_std"])
            cells.append(f"**{c}**" if r[b] == _best(table, manifest, b) else c)
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_latex(table: pd.DataFrame, manifest: dict[str, Any]) -> str:
    benches = list(manifest["benchmarks"])
    lines = [r"\begin{tabular}{l" + "r" * len(benches) + "}", r"\toprule",
             "Model & " + " & ".join(b.replace("_", r"\_") for b in benches) + r" \\", r"\midrule"]
    for _, r in table.iterrows():
        cells = []
        for b in benches:
            c = _fmt(r[b], r[f"{b}_std"]).replace("±", r"$\pm$")
            cells.append(rf"\textbf{{{c}}}" if r[b] == _best(table, manifest, b) else c)
        lines.append(str(r.model).replace("_", r"\_").replace("±", r"$\pm$") + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


Items = dict[str, dict[int, dict[str, dict[str, float]]]]  # bench -> replicate -> model -> item -> score


def item_scores(manifest: dict[str, Any]) -> Items:
    """benchmark -> replicate -> model id -> item id -> score, for every model it covers."""
    out: Items = {}
    for bench in manifest["benchmarks"]:
        for rep, mid in manifest["bench_models"][bench]:
            scores = load_eval(layout_of(manifest, rep), mid, bench)[1]
            out.setdefault(bench, {}).setdefault(rep, {})[mid] = scores
    return out


def item_clusters(manifest: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """benchmark -> item id -> the template it was generated from (gsm_symbolic), for standard
    errors clustered by template; None where the test split has no templates."""
    out: dict[str, dict[str, Any] | None] = {}
    for bench in manifest["benchmarks"]:
        split = manifest.get("splits", {}).get(bench)
        rows = read_jsonl(split) if split and Path(split).exists() else []
        out[bench] = ({r["id"]: r["template"] for r in rows}
                      if rows and all("template" in r for r in rows) else None)
    return out


def sample_losses(manifest: dict[str, Any]) -> pd.DataFrame:
    """Every order's per-sample final losses and positions, in every replicate (column rep)."""
    frames = []
    for rep in manifest["replicates"]:
        lay = layout_of(manifest, rep)
        for k in range(1, manifest["n_orders"] + 1):
            frames.append(pd.read_parquet(lay.sample_losses(k)).assign(rep=rep))
    return pd.concat(frames, ignore_index=True)


def merge_losses(manifest: dict[str, Any]) -> pd.DataFrame:
    """The main merges' per-sample losses (id, loss, rep, merge): claim f."""
    entry = models_by_key(manifest)
    frames = []
    for rep, mid in manifest["main_merges"]:
        m = ModelId.parse(mid)
        path = layout_of(manifest, rep).merge_sample_losses(m.merge, m.sub, m.seed)
        frames.append(pd.read_parquet(path)[["id", "loss"]].assign(rep=rep, merge=entry[(rep, mid)]["merge"]))
    return pd.concat(frames, ignore_index=True)


def zero_shares(manifest: dict[str, Any]) -> pd.DataFrame:
    """Per replicate and sub-model: the share of task-vector entries that are exactly zero in
    the stored dtype (from a merge.json of all N orders): what resampling has to work with."""
    rows = []
    for rep, mid in manifest.get("zero_share", []):
        meta = json.loads(Path(layout_of(manifest, rep).merge_json(mid)).read_text())
        for k, sub in enumerate(meta["task_vector_zero"], 1):
            rows.append({"rep": rep, "order": k, "dtype": meta.get("input_dtype"),
                         "zero_fraction": sub["zero_fraction"]})
    return pd.DataFrame(rows, columns=["rep", "order", "dtype", "zero_fraction"])


def _add_note(table: pd.DataFrame, rows: pd.Series, note: str) -> None:
    """Append `note` to the notes of `rows` (after what a row already says)."""
    table.loc[rows, "note"] = [f"{n}; {note}" if n else note for n in table.loc[rows, "note"]]


def claims(manifest: dict[str, Any], items: Items) -> pd.DataFrame:
    """The claims table (ordermerge.claims) of one experiment, with the zero share of the
    task vectors noted beside claim d (its mechanism)."""
    lower = {b: lower_is_better(k) for b, k in manifest["benchmarks"].items()}
    table = claims_from_results(items, item_clusters(manifest), sample_losses(manifest),
                                merge_losses(manifest), manifest, lower)
    for s in manifest.get("tuned", []):
        chosen = []
        for rep, mid in manifest["main_merges"]:
            if ModelId.parse(mid).merge == s:
                meta = json.loads(Path(layout_of(manifest, rep).merge_json(mid)).read_text())
                chosen.append(f"rep {rep}: " + ", ".join(
                    f"{k} = {v}" for k, v in sorted(meta["tuning"]["chosen"].items())))
        note = "tuned on the validation split (" + "; ".join(chosen) + ")"
        mine = table.comparison.str.startswith(f"{s} ") | table.comparison.str.startswith(f"{s}:")
        _add_note(table, mine, note)
    zeros = zero_shares(manifest)
    if len(zeros):
        note = (f"τ = 0 exactly in {100 * zeros.zero_fraction.min():.1f}–"
                f"{100 * zeros.zero_fraction.max():.1f}% of entries per sub-model "
                f"({zeros.dtype.iloc[0]})")
        d = table.claim == "d"
        _add_note(table, d, note)
    return table


def paired_table(manifest: dict[str, Any], items: Items) -> pd.DataFrame:
    """Descriptive: each merge of all N orders (item scores averaged over its seeds) against the
    mean single model and, with one replicate, against each order; effect > 0 means the merge
    is better. 95% intervals and p values NOT corrected for multiplicity: the verdicts are in
    the claims table."""
    n = manifest["n_orders"]
    rows = []
    for bench, reps in items.items():
        lower = lower_is_better(manifest["benchmarks"][bench])
        refs = {"mean single": {r: single_mean(s, manifest, r) for r, s in reps.items()}}
        if len(reps) == 1:
            (rep, scores), = reps.items()
            refs.update({m["id"]: {rep: scores[m["id"]]} for m in manifest["models"]
                         if m["kind"] == "order" and m["rep"] == rep})
        for s in manifest["merges"]:
            merged = {r: seed_mean(sc, manifest, s, n, r) for r, sc in reps.items()}
            if any(v is None for v in merged.values()):
                continue
            for ref, ref_items in refs.items():
                eff = replicate_effect(merged, ref_items, lower)
                lo, hi = eff.ci(0.95)
                rows.append({"benchmark": bench, "merge": s, "reference": ref, "n": eff.n,
                             "replicates": len(reps), "effect": eff.estimate,
                             "ci95_lo_uncorrected": lo, "ci95_hi_uncorrected": hi,
                             "p_uncorrected": eff.p})
    return pd.DataFrame(rows)


def aggregate(manifest: dict[str, Any]) -> None:
    lay = layout_of(manifest)
    df = collect(manifest)
    _write(lay.table("all_models.csv"), df.to_csv(index=False))
    table = main_table(df, manifest)
    _write(lay.table("main.csv"), table.to_csv(index=False))
    _write(lay.table("main.tex"), render_latex(table, manifest))
    items = item_scores(manifest)
    paired_df = paired_table(manifest, items)
    _write(lay.table("paired.csv"), paired_df.to_csv(index=False))
    md = ["Descriptive comparisons: 95% intervals and p values **not corrected** for the many "
          "comparisons, so no verdicts here; the verdicts, corrected within their families, are "
          "in `claims.md`.", "",
          "| benchmark | merge | vs | n | R | effect (> 0: merge better) | 95% CI (uncorrected) "
          "| p (uncorrected) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in paired_df.iterrows():
        md.append(f"| {r.benchmark} | {r['merge']} | {r.reference} | {r.n} | {r.replicates} | "
                  f"{r.effect:+.4f} | [{r.ci95_lo_uncorrected:+.4f}, {r.ci95_hi_uncorrected:+.4f}] | "
                  f"{r.p_uncorrected:.3g} |")
    _write(lay.table("paired.md"), "\n".join(md) + "\n")
    table_c = claims(manifest, items)
    _write(lay.table("claims.csv"), table_c.to_csv(index=False))
    _write(lay.table("claims.md"), render_claims(table_c))
    _write(lay.table("main.md"), render_markdown(table, manifest))  # last: marks completion


def _write(path: str | Path, text: str) -> None:
    # a killed job leaves the old file or none, never a truncated table
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def absent_claims(table: pd.DataFrame) -> dict[str, str]:
    """Claims with no row in the table, each with what the config lacks for it."""
    why = {
        "b": "no merges",
        "c": "needs a parameter_selection merge and a weighted_average merge",
        "d": "needs parameter_selection merges with and without resample",
        "e": "no ablation (ablation.sizes is empty)",
        "f": "no per-sample losses of merges",
    }
    return {c: r for c, r in why.items() if c not in set(table.claim)}


def _verdict_summary(table: pd.DataFrame) -> list[str]:
    """One row per claim: which comparisons are shown or opposite, how many are not shown; then
    the claims the config could not test, and why. Short on purpose: the report centres its
    front page, so a long one loses its top."""
    lines = [".. csv-table::", '   :header: "claim", "verdicts (Holm within each family, α = 0.05)"',
             "   :widths: 35, 65", ""]
    tested = table[table.verdict != "not tested"]
    for claim, rows in tested.groupby("claim", sort=False):
        parts = []
        for verdict_ in ("shown", "opposite"):
            hits = rows[rows.verdict == verdict_]
            if len(hits):
                parts.append(f"**{verdict_}**: " + ", ".join(
                    f"{r.comparison.split(':')[0].split(' − ')[0]} ({r.benchmark.split(' ')[0]})"
                    for r in hits.itertuples()))
        rest = (rows.verdict == "not shown").sum()
        if rest:
            parts.append(f"not shown: {rest} of {len(rows)}")
        cells = [f"{claim}: {rows.statement.iloc[0]}", "; ".join(parts)]
        lines.append("   " + ", ".join('"' + str(c).replace('"', '""') + '"' for c in cells))
    lines.append("")
    absent = absent_claims(table)
    if absent:
        lines += ["Not tested by this config: " + "; ".join(f"**{c}** ({why})" for c, why in absent.items())
                  + ".", ""]
    floor = sorted(set(table.benchmark) - set(tested.benchmark))
    if floor:
        lines += [f"At floor (every model scores 0 on every item), so not tested: {', '.join(floor)}.", ""]
    return [*lines, "Every row, with its effect, interval and detectable effect: ``tables/claims.md`` "
            "under **Tables**; the figures, with captions, under **Figures**.", ""]


def front_page(runs: list[dict[str, Any]]) -> str:
    """The HTML report's front page (reStructuredText): what was run, then each experiment's
    verdicts; `runs` holds each experiment's manifest and its `setup` summary."""
    out = ["ordermerge: N data orders, merged selectively", "=" * 45, "",
           "**Verdict rule.** Each effect is signed so that > 0 is the paper's direction. The "
           "primary family (selection + resampling against the mean single model, weighted "
           "averaging and plain selection, on the experiment's primary metric) and every "
           "exploratory family are Holm-corrected within themselves: *shown* / *opposite*: "
           "adjusted p < 0.05 with the effect above / below 0; *not shown*: otherwise.", ""]
    for run in runs:
        man, setup = run["manifest"], run["setup"]
        lay = layout_of(man)
        title = f"Experiment {man['experiment']}"
        out += [title, "-" * len(title), ""]
        kept = json.loads(Path(lay.data("stats")).read_text())["splits"]["train"]["rows"]
        out += ["; ".join(f"**{k}**: {v}" for k, v in setup.items())
                + f"; **training samples** after the length filter: {kept}.", ""]
        out += _verdict_summary(read_claims(Path(lay.table("claims.csv"))))
    return "\n".join(out) + "\n"
