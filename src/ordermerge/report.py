"""Tables: the main results table (CSV, Markdown, LaTeX), paired per-item comparisons with the
mean single model and each order, and the claims table (ordermerge.claims)."""

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
    claims_table,
    comparisons,
    early_gain,
    paired,
    position_effects,
    read_claims,
    seed_mean,
    single_mean,
    verdict,
)
from .claims import render_markdown as render_claims
from .claims import row as claim_row
from .layout import Layout
from .text import read_jsonl


def lower_is_better(benchmark: str) -> bool:
    return BENCHMARKS[benchmark].lower_is_better


def layout_of(manifest: dict[str, Any]) -> Layout:
    return Layout(manifest["results"], manifest["experiment"])


def load_eval(lay: Layout, model: str, bench: str) -> tuple[dict[str, Any], dict[str, float]]:
    res = json.loads(Path(lay.eval_result(model, bench)).read_text())
    items = {it["id"]: float(it["score"]) for it in read_jsonl(lay.eval_items(model, bench))}
    return res, items


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def collect(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per (model, benchmark): value, CI, n, kind, merge, m, seed."""
    lay = layout_of(manifest)
    rows = []
    for m in manifest["models"]:
        for bench, kind in manifest["benchmarks"].items():
            if m["id"] not in manifest["bench_models"][bench]:
                continue
            res, _ = load_eval(lay, m["id"], bench)
            rows.append({"model": m["id"], "kind": m["kind"], "merge": m.get("merge"),
                         "m": m.get("m"), "seed": m.get("seed"), "k": m.get("k"),
                         "benchmark": bench, "type": kind, "value": res["value"],
                         "ci_lo": res["ci95"][0], "ci_hi": res["ci95"][1], "n": res["n"]})
    return pd.DataFrame(rows)


def main_table(df: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """Rows: base, each order, single mean ± std, each merge at m = N (mean ± std over seeds)."""
    n = manifest["n_orders"]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for bench in manifest["benchmarks"]:
        d = df[df.benchmark == bench]
        out.setdefault("base", {})[bench] = (float(d[d.kind == "base"].value.iloc[0]), float("nan"))
        singles = d[d.kind == "order"].sort_values("k")
        for _, r in singles.iterrows():
            out.setdefault(f"order{int(r.k)}", {})[bench] = (r.value, float("nan"))
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


def item_scores(manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """benchmark -> model id -> item id -> score, for every model the benchmark covers."""
    lay = layout_of(manifest)
    return {bench: {m: load_eval(lay, m, bench)[1] for m in manifest["bench_models"][bench]}
            for bench in manifest["benchmarks"]}


def at_floor(items: dict[str, dict[str, dict[str, float]]]) -> set[str]:
    """Benchmarks on which every model scores 0 on every item (nothing to compare)."""
    return {b for b, models in items.items()
            if all(v == 0 for scores in models.values() for v in scores.values())}


def sample_losses(manifest: dict[str, Any]) -> pd.DataFrame:
    lay = layout_of(manifest)
    orders = [m["k"] for m in manifest["models"] if m["kind"] == "order"]
    return pd.concat([pd.read_parquet(lay.sample_losses(k)) for k in orders], ignore_index=True)


def main_merges(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The merge of all N orders with the first merge seed, for every merge (the workflow's
    `main_merges`, whose per-sample losses it computes)."""
    return [m for m in manifest["models"] if m["id"] in manifest["main_merges"]]


def claims(manifest: dict[str, Any], items: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """The claims table (ordermerge.claims) of one experiment."""
    lay = layout_of(manifest)
    losses = sample_losses(manifest)
    first, last = position_effects(losses, manifest["epochs"])
    train = "train (per-sample loss)"
    pos = [claim_row("a", train, "−slope on epoch-1 position", first)]
    if last is not None:
        pos.append(claim_row("a_recency", train, "−slope on last-epoch position", last))
    for m in main_merges(manifest):
        merged = pd.read_parquet(lay.merge_sample_losses(m["merge"], m["m"], m["seed"]))
        pos.append(claim_row("f", train, f"{m['merge']}: order's model − merge, early samples",
                             early_gain(losses, merged)))
    lower = {b: lower_is_better(k) for b, k in manifest["benchmarks"].items()}
    return claims_table(pos, comparisons(items, manifest, lower), at_floor(items))


def paired_table(manifest: dict[str, Any], items: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """Each merge at m = N (item scores averaged over its seeds) against the mean single model
    and against each order; effect > 0 means the merge is better (paired t, 95%, uncorrected)."""
    n = manifest["n_orders"]
    rows = []
    for bench, scores in items.items():
        lower = lower_is_better(manifest["benchmarks"][bench])
        refs = {"mean single": single_mean(scores, manifest)}
        refs.update({m["id"]: scores[m["id"]] for m in manifest["models"] if m["kind"] == "order"})
        for s in manifest["merges"]:
            merged = seed_mean(scores, manifest, s, n)
            if merged is None:
                continue
            for ref, ref_items in refs.items():
                eff = paired(merged, ref_items, lower)
                lo, hi = eff.ci(0.95)
                rows.append({"benchmark": bench, "merge": s, "reference": ref, "n": eff.n,
                             "effect": eff.estimate, "ci_lo": lo, "ci_hi": hi, "p": eff.p,
                             "verdict": verdict(lo, hi)})
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
    md = ["| benchmark | merge | vs | n | effect (> 0: merge better) | 95% CI | p | verdict |",
          "|---|---|---|---|---|---|---|---|"]
    for _, r in paired_df.iterrows():
        md.append(f"| {r.benchmark} | {r['merge']} | {r.reference} | {r.n} | {r.effect:+.4f} | "
                  f"[{r.ci_lo:+.4f}, {r.ci_hi:+.4f}] | {r.p:.3g} | {r.verdict} |")
    _write(lay.table("paired.md"), "\n".join(md) + "\n")
    table_c = claims(manifest, items)
    _write(lay.table("claims.csv"), table_c.to_csv(index=False))
    _write(lay.table("claims.md"), render_claims(table_c))
    _write(lay.table("main.md"), render_markdown(table, manifest))  # last: marks completion


def _write(path: str | Path, text: str) -> None:
    # a killed job leaves the old file or none, never a truncated table
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _verdict_summary(table: pd.DataFrame) -> list[str]:
    """One row per claim: which comparisons are shown or opposite, how many are not shown. Short
    on purpose: the report centres its front page, so a long one loses its top."""
    level = table.ci_level.iloc[0] if len(table) else 1 - 0.05
    lines = [".. csv-table::", f'   :header: "claim", "verdicts ({100 * level:.2f}% intervals)"',
             "   :widths: 35, 65", ""]
    tested = table[table.note == ""]
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
    floor = sorted(set(table.benchmark) - set(tested.benchmark))
    if floor:
        lines += [f"At floor (every model scores 0 on every item), so not tested: {', '.join(floor)}.", ""]
    return [*lines, "Every row, with its effect, interval and detectable effect: ``tables/claims.md`` "
            "under **Tables**; the figures, with captions, under **Figures**.", ""]


def front_page(runs: list[dict[str, Any]]) -> str:
    """The HTML report's front page (reStructuredText): what was run, then each experiment's
    verdicts; `runs` holds each experiment's manifest and its `setup` summary."""
    out = ["ordermerge: N data orders, merged selectively", "=" * 45, "",
           "**Verdict rule.** Each effect is signed so that > 0 is the paper's direction; paired "
           "t intervals at level 1 − 0.05/F (F: the experiment's tested rows, Bonferroni). "
           "*shown*: above 0; *opposite*: below 0; *not shown*: contains 0.", ""]
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
