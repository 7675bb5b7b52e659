"""The paper's figures (PNG + PDF), one consistent colour per merge. Differences are oriented
as in the claims table (ordermerge.claims): > 0 is better, for losses too.

1. imbalance: final per-sample loss vs epoch-1 position, binned and pooled over orders; the
   residual over orders with the fitted slope and its CI; the residual vs last-epoch position.
2. main: per benchmark, each merge's paired difference from the mean single model (CI, seeds
   as points) and each order's.
3. ablation: the paired difference from the mean single model against m, with CIs.
4. zero_fraction: share of task-vector entries that are exactly zero, per sub-model/module.
5. training: loss per step for every order.
A benchmark at floor (every model scores 0) gets no panel; the figure names it instead.
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
from scipy import stats
from scipy.stats import spearmanr

from .atomic import atomic_file
from .claims import paired, seed_mean, single_mean
from .report import at_floor, item_scores, layout_of, lower_is_better, sample_losses

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
    losses = with_residual(losses)
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


def with_residual(losses: pd.DataFrame) -> pd.DataFrame:
    losses = losses.copy()
    losses["residual"] = losses["loss"] - losses.groupby("id")["loss"].transform("mean")
    return losses


def _binned(ax, x: pd.Series, y: pd.Series, n: int, bins: int, colour: str, label: str) -> None:
    """Mean of y per position bin, with a 95% t interval."""
    b = (x * bins // n).astype(int)
    g = y.groupby(b)
    mean, sem, cnt = g.mean(), g.sem().fillna(0), g.size()
    h = stats.t.ppf(0.975, np.maximum(cnt - 1, 1)) * sem
    centre = (np.array(mean.index) + 0.5) * n / bins
    ax.errorbar(centre, mean, yerr=h, marker="o", ms=4, capsize=2, color=colour, label=label)


def fig_imbalance(losses: pd.DataFrame, epochs: int, claims: pd.DataFrame, lay, title: str,
                  bins: int = 6) -> None:
    losses = with_residual(losses)
    n = int(losses.groupby("order").size().max())
    last = f"pos_epoch{epochs}"
    panels = [("pos_epoch1", "loss", "final loss", "a", None),
              ("pos_epoch1", "residual", "loss − sample's mean over orders", "a", "epoch 1"),]
    if epochs > 1:
        panels.append((last, "residual", "loss − sample's mean over orders", "a_recency", f"epoch {epochs}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0), squeeze=False)
    for ax, (pos, col, ylabel, claim, fitted) in zip(axes[0], panels, strict=True):
        for k, d in losses.groupby("order"):
            ax.scatter(d[pos], d[col], s=6, alpha=0.35, label=f"order {k}")
        _binned(ax, losses[pos], losses[col], n, bins, "k", f"binned, {n // bins or 1}+ positions, 95% CI")
        ax.set_xlabel(f"position in epoch {pos.removeprefix('pos_epoch')} (of {n})")
        ax.set_ylabel(ylabel)
        if fitted:
            r = claims[claims.claim == claim].iloc[0]
            slope = -r.estimate / max(n - 1, 1)  # the fit is per unit of scaled position
            xs = np.array([0, n - 1])
            ax.plot(xs, slope * (xs - (n - 1) / 2), color="#d62728", lw=1.5,
                    label=f"fit: {-r.estimate:+.3f} first→last\n[{-r.ci_hi:+.3f}, {-r.ci_lo:+.3f}], {r.verdict}")
        ax.legend(fontsize=6)
    axes[0][0].set_title(f"{title}: final loss by position (n = {n} samples)")
    axes[0][1].set_title("residual: position effect within samples")
    if epochs > 1:
        axes[0][2].set_title("residual vs last-epoch position (recency)")
    _save(fig, lay, "imbalance")


def _floor_note(fig, floor: list[str]) -> None:
    if floor:
        fig.text(0.01, 0.005, "at floor (every model scores 0), not drawn: " + ", ".join(floor),
                 fontsize=7, color="#555555")


def fig_main(items: dict[str, dict[str, dict[str, float]]], manifest: dict[str, Any],
             claims: pd.DataFrame, floor: set[str], lay) -> None:
    n = manifest["n_orders"]
    col = colours(manifest["merges"])
    benches = [b for b in manifest["benchmarks"] if b not in floor]
    fig, axes = plt.subplots(1, max(len(benches), 1), figsize=(4.3 * max(len(benches), 1), 3.6), squeeze=False)
    orders = [m["id"] for m in manifest["models"] if m["kind"] == "order"]
    seeds = len({m["seed"] for m in manifest["models"] if m["kind"] == "merge" and m["m"] == n})
    for ax, bench in zip(axes[0], benches, strict=False):
        scores = items[bench]
        lower = lower_is_better(manifest["benchmarks"][bench])
        single = single_mean(scores, manifest)
        labels, y = [], 0
        for o in orders:
            ax.plot(paired(scores[o], single, lower).estimate, y, "o", color="#999999", ms=4)
            labels.append(o)
            y += 1
        for s in manifest["merges"]:
            ids = [m["id"] for m in manifest["models"] if m.get("merge") == s and m["m"] == n and m["id"] in scores]
            r = claims[(claims.claim == "b") & (claims.benchmark == bench) & (claims.comparison == f"{s} − mean single")]
            if not ids or r.empty:
                continue
            r = r.iloc[0]
            ax.errorbar(r.estimate, y, xerr=[[r.estimate - r.ci_lo], [r.ci_hi - r.estimate]], fmt="D",
                        color=col[s], ms=5, capsize=3)
            if len(ids) > 1:  # a single seed's tick would sit on its diamond
                for i in ids:
                    ax.plot(paired(scores[i], single, lower).estimate, y, "|", color=col[s], ms=9, mew=1.5)
            labels.append(f"{s} ({r.verdict})")
            y += 1
        ax.axvline(0, color="#555555", lw=1, ls="--")
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
        ax.set_xlabel(("mean single − model" if lower else "model − mean single") + " (> 0: better)")
        ax.set_title(f"{bench} (n = {len(single)} items)")
    if not benches:
        axes[0][0].set_axis_off()
    level = claims.ci_level.iloc[0] if len(claims) else 0.95
    merge_key = "◆ mean over merge seeds, " if seeds > 1 else "◆ each merge (one merge seed), "
    seed_key = "   | each seed" if seeds > 1 else ""
    fig.suptitle(f"Paired difference from the mean single model\n{merge_key}{100 * level:.2f}% CI "
                 f"(claims table){seed_key}   ● each order", fontsize=8)
    _floor_note(fig, sorted(floor))
    _save(fig, lay, "main")


def fig_ablation(items: dict[str, dict[str, dict[str, float]]], manifest: dict[str, Any],
                 floor: set[str], lay) -> None:
    col = colours(manifest["merges"])
    benches = [b for b in manifest["benchmarks"] if b not in floor] if manifest["ablation"] else []
    fig, axes = plt.subplots(1, max(len(benches), 1), figsize=(3.2 * max(len(benches), 1), 2.9), squeeze=False)
    orders = [m["id"] for m in manifest["models"] if m["kind"] == "order"]
    if not manifest["ablation"]:
        axes[0][0].text(0.5, 0.5, "no ablation in this config\n(ablation.sizes is empty)", ha="center",
                        va="center", transform=axes[0][0].transAxes)
    for ax, bench in zip(axes[0], benches, strict=False):
        scores = items[bench]
        lower = lower_is_better(manifest["benchmarks"][bench])
        single = single_mean(scores, manifest)
        for o in orders:
            ax.plot(1, paired(scores[o], single, lower).estimate, "o", color="#999999", ms=3)
        for s in manifest["ablation"]:
            ms = sorted({m["m"] for m in manifest["models"] if m.get("merge") == s and m["id"] in scores})
            est, lo, hi = [], [], []
            for m in ms:
                e = paired(seed_mean(scores, manifest, s, m), single, lower)
                c = e.ci(0.95)
                est.append(e.estimate)
                lo.append(e.estimate - c[0])
                hi.append(c[1] - e.estimate)
            ax.errorbar(ms, est, yerr=[lo, hi], marker="o", capsize=3, color=col[s], label=s)
        ax.axhline(0, color="#555555", ls="--", lw=1, label="mean single (m = 1: each order)")
        ax.set_xlabel("merged sub-models m")
        ax.set_ylabel("paired difference (> 0: better)")
        ax.set_title(f"{bench}: 95% CIs")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if benches:
        axes[0][-1].legend(fontsize=6)
    else:
        axes[0][0].set_axis_off()
    _floor_note(fig, sorted(floor))
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
    items = item_scores(manifest)
    floor = at_floor(items)
    claims = pd.read_csv(lay.table("claims.csv"))
    losses = sample_losses(manifest)
    with atomic_file(lay.table("imbalance.csv")) as tmp:
        imbalance_stats(losses).to_csv(tmp, index=False)
    fig_imbalance(losses, manifest["epochs"], claims, lay, manifest["experiment"])
    fig_main(items, manifest, claims, floor, lay)
    fig_ablation(items, manifest, floor, lay)
    full = next(m for m in manifest["models"] if m["kind"] == "merge" and m["m"] == manifest["n_orders"])
    fig_zero_fraction(json.loads(Path(lay.merge_json(full["merge"], full["m"], full["seed"])).read_text()), lay)
    logs = {}
    for m in manifest["models"]:
        if m["kind"] == "order":
            lines = Path(lay.train_log(m["k"])).read_text().splitlines()
            logs[m["k"]] = [json.loads(x) for x in lines if x.strip()]
    fig_training(logs, lay)
