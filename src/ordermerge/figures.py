"""The paper's figures (PNG + PDF), one consistent colour per merge.

1. imbalance: final per-sample loss vs epoch-1 position, one line per order (Figure 1).
2. main: every benchmark, single orders (each, mean ± std) vs every merge.
3. ablation: metric vs number of merged sub-models, one line per merge.
4. zero_fraction: share of task-vector entries that are exactly zero, per sub-model/module.
5. training: loss per step for every order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .atomic import atomic_file
from .report import layout_of, lower_is_better

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "figure.dpi": 150})
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]


def colours(merges: list[str]) -> dict[str, str]:
    """Colour by position in the config's merge list: stable across every figure of a run."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(merges)}


def _save(fig, lay, name: str) -> None:
    fig.tight_layout()
    for ext in ("pdf", "png"):  # png last: marks completion
        with atomic_file(lay.figure(name, ext)) as tmp:  # a kill never leaves half a figure
            fig.savefig(tmp, format=ext)
    plt.close(fig)


def imbalance_stats(losses: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of final loss vs epoch-1 position, raw and after removing each sample's mean
    loss across orders (the residual isolates position from sample difficulty)."""
    losses = losses.copy()
    losses["residual"] = losses["loss"] - losses.groupby("id")["loss"].transform("mean")
    rows = []
    for k, d in losses.groupby("order"):
        rows.append({"order": int(k), "n": len(d),
                     "spearman_loss": spearmanr(d.pos_epoch1, d.loss).statistic,
                     "spearman_residual": spearmanr(d.pos_epoch1, d.residual).statistic})
    pooled = spearmanr(losses.pos_epoch1, losses.residual).statistic
    rows.append({"order": "pooled", "n": len(losses),
                 "spearman_loss": spearmanr(losses.pos_epoch1, losses.loss).statistic,
                 "spearman_residual": pooled})
    return pd.DataFrame(rows)


def fig_imbalance(losses: pd.DataFrame, lay, title: str, bins: int = 6) -> None:
    losses = losses.copy()
    losses["residual"] = losses["loss"] - losses.groupby("id")["loss"].transform("mean")
    n = losses.pos_epoch1.max() + 1
    losses["bin"] = (losses.pos_epoch1 * bins // n).astype(int)
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    for ax, col, label in ((axes[0], "loss", "final loss"), (axes[1], "residual", "loss − sample mean over orders")):
        for k, d in losses.groupby("order"):
            g = d.groupby("bin")[col]
            x = (np.array(g.mean().index) + 0.5) * n / bins
            ax.errorbar(x, g.mean(), yerr=g.sem().fillna(0), marker="o", ms=3, capsize=2,
                        label=f"order {k}")
        g = losses.groupby("bin")[col]
        ax.plot((np.array(g.mean().index) + 0.5) * n / bins, g.mean(), "k--", lw=1.5, label="all orders")
        ax.set_xlabel("position in epoch 1")
        ax.set_ylabel(label)
    axes[0].set_title(title)
    axes[1].legend(fontsize=7)
    _save(fig, lay, "imbalance")


def fig_main(df: pd.DataFrame, manifest: dict[str, Any], lay) -> None:
    n = manifest["n_orders"]
    benches = list(manifest["benchmarks"])
    col = colours(manifest["merges"])
    fig, axes = plt.subplots(1, len(benches), figsize=(3.2 * len(benches), 3.2), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        d = df[df.benchmark == bench]
        labels, vals, errs, cs = [], [], [], []
        for _, r in d[d.kind == "order"].sort_values("k").iterrows():
            labels.append(f"order{int(r.k)}")
            vals.append(r.value)
            errs.append((r.value - r.ci_lo, r.ci_hi - r.value))
            cs.append("#bbbbbb")
        singles = d[d.kind == "order"].value
        labels.append("single mean")
        vals.append(singles.mean())
        errs.append((singles.std(), singles.std()))
        cs.append("#555555")
        for s in manifest["merges"]:
            ds = d[(d.kind == "merge") & (d["merge"] == s) & (d.m == n)]
            if len(ds):
                labels.append(s)
                vals.append(ds.value.mean())
                errs.append((ds.value.mean() - ds.ci_lo.mean(), ds.ci_hi.mean() - ds.value.mean()))
                cs.append(col[s])
        y = np.arange(len(labels))
        ax.barh(y, vals, xerr=np.array(errs).T, color=cs, capsize=2)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        lo = min(v - e[0] for v, e in zip(vals, errs, strict=True))
        hi = max(v + e[1] for v, e in zip(vals, errs, strict=True))
        pad = (hi - lo) * 0.1 or 0.01
        if lower_is_better(manifest["benchmarks"][bench]):
            ax.set_xlim(lo - pad, hi + pad)
        else:  # accuracies: start at 0 so a floor effect is visible as such
            ax.set_xlim(0, max(hi + pad, 0.05))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        arrow = "lower is better" if lower_is_better(manifest["benchmarks"][bench]) else "higher is better"
        ax.set_title(f"{bench} ({arrow})")
    _save(fig, lay, "main")


def fig_ablation(df: pd.DataFrame, manifest: dict[str, Any], lay) -> None:
    benches = list(manifest["benchmarks"])
    col = colours(manifest["merges"])
    fig, axes = plt.subplots(1, len(benches), figsize=(3.2 * len(benches), 2.8), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        d = df[(df.benchmark == bench) & (df.kind == "merge")]
        for s in manifest["merges"]:
            g = d[d["merge"] == s].groupby("m").value.mean()
            if len(g) > 1:
                ax.plot(g.index, g.values, marker="o", color=col[s], label=s)
        single = df[(df.benchmark == bench) & (df.kind == "order")].value.mean()
        ax.axhline(single, color="#555555", ls="--", lw=1, label="single mean")
        ax.set_xlabel("merged sub-models m")
        ax.set_title(bench)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][-1].legend(fontsize=7)
    _save(fig, lay, "ablation")


def _module(name: str) -> str:
    name = re.sub(r"\.(weight|bias)$", "", name)
    return re.sub(r".*\.layers\.\d+\.", "", name).split(".")[-1]


def fig_zero_fraction(merge_json: dict[str, Any], lay) -> None:
    subs = merge_json["task_vector_zero"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2), gridspec_kw={"width_ratios": [1, 3]})
    axes[0].bar(range(1, len(subs) + 1), [s["zero_fraction"] for s in subs], color="#1f77b4")
    axes[0].set_xlabel("sub-model (order)")
    axes[0].set_ylabel("τ entries exactly 0")
    axes[0].set_ylim(0, 1)
    modules = sorted({_module(n) for n in subs[0]["zero_fraction_per_tensor"]})
    width = 0.8 / len(subs)
    for i, s in enumerate(subs):
        per: dict[str, list[float]] = {}
        for n, f in s["zero_fraction_per_tensor"].items():
            per.setdefault(_module(n), []).append(f)
        axes[1].bar(np.arange(len(modules)) + i * width, [np.mean(per[m]) for m in modules],
                    width, label=f"order {i + 1}")
    axes[1].set_xticks(np.arange(len(modules)) + 0.4 - width / 2, modules, rotation=45, ha="right")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=7)
    axes[1].set_title(f"per module type (stored dtype: {merge_json.get('input_dtype', 'see merge.json')})")
    _save(fig, lay, "zero_fraction")


def fig_training(logs: dict[int, list[dict[str, Any]]], lay) -> None:
    fig, ax = plt.subplots(figsize=(4, 2.8))
    for k, log in sorted(logs.items()):
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], label=f"order {k}", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    ax.legend(fontsize=7)
    _save(fig, lay, "training")


def make_figures(manifest: dict[str, Any]) -> None:
    lay = layout_of(manifest)
    Path(lay.figure("x")).parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(lay.table("all_models.csv"))
    orders = [m for m in manifest["models"] if m["kind"] == "order"]
    losses = pd.concat([pd.read_parquet(lay.sample_losses(m["k"])) for m in orders])
    with atomic_file(lay.table("imbalance.csv")) as tmp:
        imbalance_stats(losses).to_csv(tmp, index=False)
    fig_imbalance(losses, lay, manifest["experiment"])
    fig_main(df, manifest, lay)
    fig_ablation(df, manifest, lay)
    full = next(m for m in manifest["models"] if m["kind"] == "merge" and m["m"] == manifest["n_orders"])
    fig_zero_fraction(json.loads(Path(lay.merge_json(full["merge"], full["m"], full["seed"])).read_text()), lay)
    logs = {}
    for m in orders:
        lines = Path(lay.train_log(m["k"])).read_text().splitlines()
        logs[m["k"]] = [json.loads(x) for x in lines if x.strip()]
    fig_training(logs, lay)
