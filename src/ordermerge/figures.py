"""The paper's figures (PNG + PDF), one consistent colour per merge. Differences are oriented
as in the claims table (ordermerge.claims): > 0 is the paper's direction, for losses too.

1. imbalance: final per-sample loss against the optimizer step at which the sample was seen in
   epoch 1, binned and pooled over orders and replicates; the residual (loss − the sample's mean
   over orders) with claim a's fit; the residual against the last-epoch step (recency).
2. main: per benchmark, the primary family (b, c, d for selection + resampling) with its
   intervals on an axis those effects set; the other merges' b rows below, clipped at the
   axis edge with their value written where they fall outside it. Accuracy in points.
3. ablation: the paired difference from the mean single model against m, with 95% CIs.
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
from .claims import at_floor, read_claims, replicate_effect, resamples, seed_mean, single_mean
from .report import item_scores, layout_of, lower_is_better, sample_losses

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "figure.dpi": 150})
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]
MIN_BIN = 5  # a binned mean gets an interval only with at least this many points


def colours(merges: list[str]) -> dict[str, str]:
    """Colour by position in the config's merge list: stable across every figure of a run."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(merges)}


def _save(fig, lay, name: str) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    for ext in ("pdf", "png"):  # png last: marks completion
        with atomic_file(lay.figure(name, ext)) as tmp:  # a kill never leaves half a figure
            fig.savefig(tmp, format=ext)
    plt.close(fig)


def _scale(manifest: dict[str, Any], bench: str) -> tuple[float, str]:
    """Accuracy in percentage points, losses in nats."""
    if lower_is_better(manifest["benchmarks"][bench]):
        return 1.0, "nats"
    return 100.0, "points"


def imbalance_stats(losses: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of final loss vs epoch-1 position, raw and after removing each sample's mean
    loss across orders (the residual isolates position from sample difficulty)."""
    losses = with_residual(losses)
    rows = []
    for (rep, k), d in losses.groupby(["rep", "order"]):
        rows.append({"rep": int(rep), "order": int(k), "n": len(d),
                     "spearman_loss": spearmanr(d.pos_epoch1, d.loss).statistic,
                     "spearman_residual": spearmanr(d.pos_epoch1, d.residual).statistic})
    pooled = spearmanr(losses.pos_epoch1, losses.residual).statistic
    rows.append({"rep": "all", "order": "pooled", "n": len(losses),
                 "spearman_loss": spearmanr(losses.pos_epoch1, losses.loss).statistic,
                 "spearman_residual": pooled})
    return pd.DataFrame(rows)


def with_residual(losses: pd.DataFrame) -> pd.DataFrame:
    losses = losses.copy()
    losses["residual"] = losses["loss"] - losses.groupby("id")["loss"].transform("mean")
    return losses


def _binned(ax, x: pd.Series, y: pd.Series, steps: int, bins: int, colour: str, label: str) -> None:
    """Mean of y per bin of the steps 0..steps-1 (one bin per step where there are no more steps
    than bins); a 95% t interval where a bin holds at least MIN_BIN points (with two points a
    t interval spans most of the axis and says nothing)."""
    edges = np.linspace(-0.5, steps - 0.5, min(bins, steps) + 1)
    b = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    g = y.groupby(b)
    mean, sem, cnt = g.mean(), g.sem(), g.size()
    h = np.where(cnt >= MIN_BIN, stats.t.ppf(0.975, np.maximum(cnt - 1, 1)) * sem.fillna(0), np.nan)
    centre = (edges[:-1] + edges[1:])[mean.index] / 2
    ax.errorbar(centre, mean, yerr=h, marker="o", ms=4, capsize=2, color=colour, label=label)


def with_steps(losses: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Positions as optimizer steps (the unit of claim a): step = position // batch size."""
    losses = with_residual(losses)
    for col in [c for c in losses.columns if c.startswith("pos_epoch")]:
        losses["step" + col.removeprefix("pos")] = losses[col] // batch
    return losses


def fig_imbalance(losses: pd.DataFrame, epochs: int, batch: int, claims: pd.DataFrame, lay,
                  title: str, bins: int = 6) -> None:
    losses = with_steps(losses, batch)
    steps = int(losses.step_epoch1.max()) + 1
    last = f"step_epoch{epochs}"
    panels = [("step_epoch1", "loss", "final loss", None),
              ("step_epoch1", "residual", "loss − sample's mean over orders", "a")]
    if epochs > 1:
        panels.append((last, "residual", "loss − sample's mean over orders", "a_recency"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False)
    titles = [f"{title}: final loss by step ({losses.id.nunique()} samples)",
              "residual: the step effect within samples", "residual: last-epoch step (recency)"]
    for ax, (pos, col, ylabel, claim), head in zip(axes[0], panels, titles, strict=False):
        ax.scatter(losses[pos] + np.random.default_rng(0).uniform(-0.3, 0.3, len(losses)),
                   losses[col], s=5, alpha=0.3, color="#1f77b4", label="a sample in one order")
        _binned(ax, losses[pos], losses[col], steps, bins, "k",
                f"binned mean (95% CI where ≥ {MIN_BIN} points)")
        ax.set_xlabel(f"optimizer step in epoch {pos.removeprefix('step_epoch')} (of {steps})")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        rows = claims[claims.claim == claim] if claim else claims.iloc[:0]
        if len(rows):
            r = rows.iloc[0]
            # the claims' effect is (loss at the first step − loss at the last): the line falls
            # by that much from the first step to the last
            xs = np.array([0, steps - 1])
            ax.plot(xs, r.estimate * (0.5 - xs / max(steps - 1, 1)), color="#d62728", lw=1.5,
                    label=f"claim {claim}'s fit (one model: both steps,\nsample and order effects)")
            head += (f"\n{claim} = first − last step: {r.estimate:+.3f} "
                     f"[{r.ci_lo:+.3f}, {r.ci_hi:+.3f}], {r.verdict}")
        ax.set_title(head, fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    _save(fig, lay, "imbalance")


def _floor_note(fig, floor: list[str]) -> None:
    if floor:
        fig.text(0.01, 0.005, "at floor (every model scores 0), not drawn: " + ", ".join(floor),
                 fontsize=7, color="#555555")


def fig_main(manifest: dict[str, Any], claims: pd.DataFrame, floor: set[str], lay) -> None:
    """Per benchmark: the primary family's effects with their intervals on an axis they set,
    then every other merge's difference from the mean single model, clipped at that axis."""
    col = colours(manifest["merges"])
    benches = [b for b in manifest["benchmarks"] if b not in floor]
    resampling = [s for s, v in manifest["merge_specs"].items() if resamples(v)]
    fig, axes = plt.subplots(1, max(len(benches), 1), figsize=(6.2 * max(len(benches), 1), 4.2),
                             squeeze=False, layout="constrained")
    for ax, bench in zip(axes[0], benches, strict=False):
        scale, unit = _scale(manifest, bench)
        rows = claims[(claims.benchmark == bench) & claims.claim.isin(["b", "c", "d"])]
        # first the resampling merge's b, c and d (the primary family on the primary metric):
        # they set the axis; then every other merge against the mean single model
        lead = rows.comparison.str.split(" − ").str[0].isin(resampling)
        primary = rows[lead]
        other = rows[~lead & (rows.claim == "b")]
        shown = pd.concat([primary, other])
        if shown.empty:
            ax.set_axis_off()
            continue
        ref = primary if len(primary) else shown
        half = 1.4 * float(np.nanmax(np.abs(ref[["ci_lo", "ci_hi"]].to_numpy() * scale)))
        half = half if np.isfinite(half) and half > 0 else 1.0
        labels = []
        for y, r in enumerate(shown.itertuples()):
            name = r.comparison.split(" − ")[0].split(":")[0]
            colour = col.get(name, "#333333")
            est, lo, hi = r.estimate * scale, r.ci_lo * scale, r.ci_hi * scale
            if abs(est) <= half:
                ax.errorbar(est, y, xerr=[[est - max(lo, -half)], [min(hi, half) - est]],
                            fmt="D" if r.claim != "b" or name in resampling else "o",
                            color=colour, ms=5, capsize=3)
                for end in (e for e in (lo, hi) if abs(e) > half):  # an interval past the axis
                    ax.plot(np.sign(end) * half, y, ">" if end > 0 else "<", color=colour, ms=5)
            else:  # outside the primary effects' axis: a marker at the edge, its value written
                edge = np.sign(est) * half
                ax.plot(edge, y, ">" if est > 0 else "<", color=colour, ms=7)
                ax.annotate(f"{est:+.3g}", (edge, y), textcoords="offset points",
                            xytext=(-4 if est > 0 else 4, 6), ha="right" if est > 0 else "left",
                            fontsize=7, color=colour)
            tag = " (primary)" if r.family == "primary" else ""
            labels.append(f"{r.claim}: {r.comparison}{tag}\n[verdict: {r.verdict}]")
        if len(primary) and len(other):
            ax.axhline(len(primary) - 0.5, color="#bbbbbb", lw=0.8)
        ax.margins(y=0.12)
        ax.set_xlim(-half, half)
        ax.axvline(0, color="#555555", lw=1, ls="--")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.set_xlabel(f"paired difference, {unit} (> 0: the paper's direction)")
        n_items = int(rows.n.iloc[0])
        reps = len(manifest["replicates"])
        ax.set_title(f"{bench} ({n_items} items, {reps} replicate{'s' if reps > 1 else ''})")
    if not benches:
        axes[0][0].set_axis_off()
    at_zero = f"\nat floor (every model scores 0), not drawn: {', '.join(sorted(floor))}" if floor else ""
    fig.suptitle("◆ selection + resampling against the mean single model, weighted averaging and "
                 "plain selection (b, c, d); ● every other merge against the mean single model\n"
                 "bars: 95% CI (unadjusted); verdicts: Holm within each family; ▶ an estimate beyond "
                 "the axis (its value written) or an interval that goes on" + at_zero, fontsize=8)
    _save(fig, lay, "main")


def fig_ablation(items, manifest: dict[str, Any], floor: set[str], lay) -> None:
    col = colours(manifest["merges"])
    benches = [b for b in manifest["benchmarks"] if b not in floor] if manifest["ablation"] else []
    fig, axes = plt.subplots(1, max(len(benches), 1), figsize=(3.2 * max(len(benches), 1), 2.9), squeeze=False)
    if not manifest["ablation"]:
        axes[0][0].text(0.5, 0.5, "no ablation in this config\n(ablation.sizes is empty)", ha="center",
                        va="center", transform=axes[0][0].transAxes)
    for ax, bench in zip(axes[0], benches, strict=False):
        reps = items[bench]
        scale, unit = _scale(manifest, bench)
        lower = lower_is_better(manifest["benchmarks"][bench])
        single = {r: single_mean(sc, manifest, r) for r, sc in reps.items()}
        for s in manifest["ablation"]:
            ms = sorted({m["m"] for m in manifest["models"] if m.get("merge") == s})
            est, lo, hi = [], [], []
            for m in list(ms):
                merged = {r: seed_mean(sc, manifest, s, m, r) for r, sc in reps.items()}
                if any(v is None for v in merged.values()):  # a benchmark of the main models only
                    ms.remove(m)
                    continue
                e = replicate_effect(merged, single, lower)
                c = e.ci(0.95)
                est.append(scale * e.estimate)
                lo.append(scale * (e.estimate - c[0]))
                hi.append(scale * (c[1] - e.estimate))
            ax.errorbar(ms, est, yerr=[lo, hi], marker="o", capsize=3, color=col[s], label=s)
        ax.axhline(0, color="#555555", ls="--", lw=1, label="mean single model")
        ax.set_xlabel("merged sub-models m")
        ax.set_ylabel(f"difference, {unit} (> 0: better)")
        ax.set_title(f"{bench}: 95% CIs\n(m < N: mean over order subsets)", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
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


def fig_training(logs: dict[tuple[int, int], list[dict[str, Any]]], lay) -> None:
    fig, ax = plt.subplots(figsize=(4, 2.8))
    reps = len({r for r, _ in logs})
    for (r, k), log in sorted(logs.items()):
        label = f"order {k}" if reps == 1 else f"replicate {r}, order {k}"
        ax.plot([x["step"] for x in log], [x["loss"] for x in log], label=label, lw=1)
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss (response tokens)")
    ax.legend(fontsize=6)
    _save(fig, lay, "training")


def make_figures(manifest: dict[str, Any]) -> None:
    lay = layout_of(manifest)
    Path(lay.figure("x")).parent.mkdir(parents=True, exist_ok=True)
    items = item_scores(manifest)
    floor = at_floor(items)
    claims = read_claims(lay.table("claims.csv"))
    losses = sample_losses(manifest)
    with atomic_file(lay.table("imbalance.csv")) as tmp:
        imbalance_stats(losses).to_csv(tmp, index=False)
    fig_imbalance(losses, manifest["epochs"], manifest["batch_size"], claims, lay,
                  manifest["experiment"])
    fig_main(manifest, claims, floor, lay)
    fig_ablation(items, manifest, floor, lay)
    rep, mid = manifest["zero_share"][0]
    fig_zero_fraction(json.loads(Path(layout_of(manifest, rep).merge_json(mid)).read_text()), lay)
    logs = {}
    for m in manifest["models"]:
        if m["kind"] == "order":
            lines = Path(layout_of(manifest, m["rep"]).train_log(m["k"])).read_text().splitlines()
            logs[(m["rep"], m["k"])] = [json.loads(x) for x in lines if x.strip()]
    fig_training(logs, lay)
