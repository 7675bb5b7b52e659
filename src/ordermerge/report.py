"""Tables: the main results table (CSV, Markdown, LaTeX) and paired per-item comparisons."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from .atomic import atomic_file
from .catalog import BENCHMARKS
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


def _paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    from scipy.stats import wilcoxon

    ids = sorted(set(a) & set(b))
    diff = [a[i] - b[i] for i in ids]
    mean = statistics.fmean(diff)
    rng = random.Random(0)
    boots = sorted(statistics.fmean(diff[rng.randrange(len(diff))] for _ in diff) for _ in range(1000))
    p = 1.0 if all(d == 0 for d in diff) else float(wilcoxon(diff, zero_method="zsplit").pvalue)
    return {"n": len(ids), "mean_diff": mean, "ci_lo": boots[25], "ci_hi": boots[974], "p_wilcoxon": p}


def paired_table(manifest: dict[str, Any]) -> pd.DataFrame:
    """Each merge (item scores averaged over merge seeds) vs the best single model and vs
    weighted average; difference = merge − reference."""
    lay = layout_of(manifest)
    n = manifest["n_orders"]
    models = manifest["models"]
    rows = []
    for bench, kind in manifest["benchmarks"].items():
        lower = lower_is_better(kind)
        singles = {m["id"]: load_eval(lay, m["id"], bench) for m in models if m["kind"] == "order"}
        best = (min if lower else max)(singles, key=lambda i: singles[i][0]["value"])
        per_merge: dict[str, dict[str, float]] = {}
        for s in manifest["merges"]:
            ids = [m["id"] for m in models if m["kind"] == "merge" and m["merge"] == s
                   and m["m"] == n and m["id"] in manifest["bench_models"][bench]]
            if not ids:
                continue
            all_items = [load_eval(lay, i, bench)[1] for i in ids]
            per_merge[s] = {k: statistics.fmean(it[k] for it in all_items) for k in all_items[0]}
        avg = [s for s in manifest["merges"] if any(
            m.get("merge") == s and m.get("method") == "weighted_average" for m in models)]
        refs = {f"best single ({best})": singles[best][1]}
        if avg:
            refs[avg[0]] = per_merge[avg[0]]
        for s, items in per_merge.items():
            for ref_name, ref in refs.items():
                if ref is items:
                    continue
                r = _paired(items, ref)
                better = (r["mean_diff"] < 0) if lower else (r["mean_diff"] > 0)
                rows.append({"benchmark": bench, "merge": s, "reference": ref_name, **r,
                             "merge_better": better})
    return pd.DataFrame(rows)


def aggregate(manifest: dict[str, Any]) -> None:
    lay = layout_of(manifest)
    df = collect(manifest)
    _write(lay.table("all_models.csv"), df.to_csv(index=False))
    table = main_table(df, manifest)
    _write(lay.table("main.csv"), table.to_csv(index=False))
    _write(lay.table("main.tex"), render_latex(table, manifest))
    paired = paired_table(manifest)
    _write(lay.table("paired.csv"), paired.to_csv(index=False))
    md = ["| benchmark | merge | vs | n | mean diff | 95% CI | Wilcoxon p | merge better |",
          "|---|---|---|---|---|---|---|---|"]
    for _, r in paired.iterrows():
        md.append(f"| {r.benchmark} | {r['merge']} | {r.reference} | {r.n} | {r.mean_diff:+.4f} | "
                  f"[{r.ci_lo:+.4f}, {r.ci_hi:+.4f}] | {r.p_wilcoxon:.3g} | {'yes' if r.merge_better else 'no'} |")
    _write(lay.table("paired.md"), "\n".join(md) + "\n")
    _write(lay.table("main.md"), render_markdown(table, manifest))  # last: marks completion


def _write(path: str | Path, text: str) -> None:
    # a killed job leaves the old file or none, never a truncated table
    with atomic_file(path) as tmp:
        tmp.write_text(text)
