"""The paper's claims, each as an oriented effect with a paired confidence interval and a verdict.

Every effect is signed so that > 0 is the direction the paper claims. The verdict rule:

    CI entirely above 0 → shown · entirely below 0 → opposite · contains 0 → not shown

where each CI is a two-sided t interval at level 1 − α/F, α = 0.05 and F the number of rows
of the experiment's claims table (Bonferroni over the whole family of comparisons), rows of a
benchmark at floor (every model scores 0 on every item: nothing to compare) not counted.

Claims (the test set of a benchmark is one split; every comparison is paired over its items):
  a  samples early in epoch 1 end with higher training loss: −β₁ of the fixed-effects
     regression  loss_io = α_i + β₁·p1_io + β_L·pL_io + ε  (sample i, order o; p1, pL the
     epoch-1 and last-epoch positions scaled to [0, 1]; SE clustered by sample, df = samples − 1).
     The recency row reports −β_L from the same fit.
  b  each merge beats the mean single model: per item, merge − mean over the N orders.
  c  parameter selection beats weighted averaging: selection − average.
  d  resampling beats plain selection: selection with resampling − without.
  e  more merged sub-models help: the merge of all N − the merge of the fewest (the ablation).
  f  each merge lowers the training loss of the samples each order saw in the first third of
     epoch 1: order's model − merge on those samples, averaged per sample over the orders that
     saw it early, t interval over samples. (A merge does not depend on the order, so this is
     the paper's "merging mitigates the imbalance", measured where the imbalance is.)
For lower-is-better metrics (losses) the per-item difference is negated. A merge with several
seeds is scored per item as the mean over its seeds. Beside each verdict the table gives the
smallest effect its test detects with 80% power at its level, from the variance it measured.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8  # for the detectable effect reported beside each row
CLAIMS = {
    "a": "samples early in epoch 1 end with higher loss",
    "a_recency": "samples late in the last epoch end with lower loss (recency)",
    "b": "merge beats the mean single model",
    "c": "parameter selection beats weighted averaging",
    "d": "resampling beats plain selection",
    "e": "more merged sub-models help",
    "f": "merge lowers the loss of the samples each order saw early",
}
EARLY = 1 / 3  # claim f: "early" is the first third of epoch 1


@dataclass(frozen=True)
class Effect:
    estimate: float  # > 0: in the claim's direction
    se: float
    df: int
    n: int

    def ci(self, level: float) -> tuple[float, float]:
        if self.df < 1 or math.isnan(self.se):
            return (math.nan, math.nan)
        h = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return (self.estimate - h, self.estimate + h)

    def detectable(self, level: float, power: float = POWER) -> float:
        """The smallest true effect this test finds with probability `power` at `level`:
        (t_{(1+level)/2} + t_power) · SE, with this row's SE and df."""
        if self.df < 1 or math.isnan(self.se):
            return math.nan
        return float((stats.t.ppf(0.5 + level / 2, self.df) + stats.t.ppf(power, self.df)) * self.se)

    @property
    def p(self) -> float:
        """Two-sided p of a zero effect (t test); 1 where nothing varies."""
        if self.df < 1 or math.isnan(self.se):
            return math.nan
        if self.se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.estimate / self.se), self.df))


def verdict(lo: float, hi: float) -> str:
    """shown / opposite / not shown, from a CI of an effect oriented to the claim."""
    if math.isnan(lo) or math.isnan(hi):
        return "not shown"
    if lo > 0:
        return "shown"
    if hi < 0:
        return "opposite"
    return "not shown"


def paired(a: dict[str, float], b: dict[str, float], lower_is_better: bool) -> Effect:
    """Mean improvement of `a` over `b` across the items both scored (paired t)."""
    ids = sorted(set(a) & set(b))
    sign = -1.0 if lower_is_better else 1.0
    diff = [sign * (a[i] - b[i]) for i in ids]
    if len(diff) < 2:
        return Effect(statistics.fmean(diff) if diff else math.nan, math.nan, 0, len(diff))
    return Effect(statistics.fmean(diff), statistics.stdev(diff) / math.sqrt(len(diff)),
                  len(diff) - 1, len(diff))


def position_effects(losses: pd.DataFrame, epochs: int) -> tuple[Effect, Effect | None]:
    """(−β₁, −β_L) of the fixed-effects regression in the module docstring; −β_L is None where
    the last-epoch position cannot be told apart from the epoch-1 position (one epoch, or the
    same order every epoch)."""
    d = losses.copy()
    n = d.groupby("order").size().max()
    cols = ["pos_epoch1"] + ([f"pos_epoch{epochs}"] if epochs > 1 else [])
    x = d[cols].to_numpy(float) / max(n - 1, 1)
    g = d["id"].to_numpy()
    y = d["loss"].to_numpy(float)
    # sample fixed effects: demean within each sample
    xd = x - pd.DataFrame(x).groupby(g).transform("mean").to_numpy()
    yd = y - pd.Series(y).groupby(g).transform("mean").to_numpy()
    if xd.shape[1] == 2 and np.linalg.matrix_rank(xd) < 2:
        xd = xd[:, :1]
    xtx_inv = np.linalg.pinv(xd.T @ xd)
    beta = xtx_inv @ xd.T @ yd
    u = yd - xd @ beta
    groups = pd.unique(g)
    meat = np.zeros((xd.shape[1], xd.shape[1]))
    for gid in groups:
        s = g == gid
        v = xd[s].T @ u[s]
        meat += np.outer(v, v)
    n_obs, k, n_g = len(y), xd.shape[1], len(groups)
    # CR1 (fixed effects nested in the clusters: not counted in k)
    scale = n_g / max(n_g - 1, 1) * (n_obs - 1) / max(n_obs - k, 1)
    cov = scale * xtx_inv @ meat @ xtx_inv
    se = np.sqrt(np.diag(cov))
    first = Effect(float(-beta[0]), float(se[0]), n_g - 1, n_obs)
    last = Effect(float(-beta[1]), float(se[1]), n_g - 1, n_obs) if k == 2 else None
    return first, last


def early_gain(orders: pd.DataFrame, merged: pd.DataFrame) -> Effect:
    """Claim f for one merge: `orders` holds every order's per-sample final losses and
    positions, `merged` the merge's per-sample losses."""
    n = orders.groupby("order").size().max()
    early = orders[orders.pos_epoch1 < EARLY * n]
    gain = (early["loss"] - early["id"].map(merged.set_index("id")["loss"])).groupby(early["id"]).mean()
    if len(gain) < 2:
        return Effect(float(gain.mean()) if len(gain) else math.nan, math.nan, 0, len(gain))
    return Effect(float(gain.mean()), float(gain.std(ddof=1) / math.sqrt(len(gain))), len(gain) - 1, len(gain))


def row(claim: str, benchmark: str, comparison: str, eff: Effect) -> dict[str, Any]:
    return {"claim": claim, "statement": CLAIMS[claim], "benchmark": benchmark,
            "comparison": comparison, "n": eff.n, "estimate": eff.estimate, "se": eff.se,
            "df": eff.df, "p": eff.p}


def seed_mean(scores: dict[str, dict[str, float]], manifest: dict[str, Any], merge: str,
              m: int) -> dict[str, float] | None:
    """Item scores of merge `merge` of m sub-models, averaged over its seeds (None: not scored)."""
    ids = [x["id"] for x in manifest["models"] if x.get("merge") == merge and x["m"] == m and x["id"] in scores]
    if not ids:
        return None
    return {i: statistics.fmean(scores[x][i] for x in ids) for i in scores[ids[0]]}


def single_mean(scores: dict[str, dict[str, float]], manifest: dict[str, Any]) -> dict[str, float]:
    """Item scores of the mean single model: per item, the mean over the N orders."""
    orders = [x["id"] for x in manifest["models"] if x["kind"] == "order" and x["id"] in scores]
    return {i: statistics.fmean(scores[o][i] for o in orders) for i in scores[orders[0]]}


def comparisons(items: dict[str, dict[str, dict[str, float]]], manifest: dict[str, Any],
                lower: dict[str, bool]) -> list[dict[str, Any]]:
    """Rows of claims b–e. `items[benchmark][model id]` holds item scores."""
    n = manifest["n_orders"]
    specs = manifest["merge_specs"]
    rows = []
    for bench, scores in items.items():
        lo = lower[bench]
        single = single_mean(scores, manifest)
        full = {s: v for s in specs if (v := seed_mean(scores, manifest, s, n)) is not None}
        for s, v in full.items():
            rows.append(row("b", bench, f"{s} − mean single", paired(v, single, lo)))
        sel = [s for s in full if specs[s]["method"] == "parameter_selection"]
        for s in sel:
            for w in (w for w in full if specs[w]["method"] == "weighted_average"):
                rows.append(row("c", bench, f"{s} − {w}", paired(full[s], full[w], lo)))
        resample = [s for s in sel if specs[s]["params"].get("resample", True)]
        for s in resample:
            for w in (w for w in sel if w not in resample):
                rows.append(row("d", bench, f"{s} − {w}", paired(full[s], full[w], lo)))
        for s in manifest["ablation"]:
            sizes = sorted({x["m"] for x in manifest["models"] if x.get("merge") == s and x["id"] in scores})
            if s in full and sizes[0] < n:
                small = seed_mean(scores, manifest, s, sizes[0])
                rows.append(row("e", bench, f"{s}: m={n} − m={sizes[0]}", paired(full[s], small, lo)))
    return rows


def claims_table(position_rows: list[dict[str, Any]], comparison_rows: list[dict[str, Any]],
                 floor: set[str] = frozenset()) -> pd.DataFrame:
    """Every row with its family-corrected CI and verdict."""
    rows = position_rows + comparison_rows
    # rows of a benchmark at floor test nothing: they do not count in the family
    level = 1 - ALPHA / max(sum(r["benchmark"] not in floor for r in rows), 1)
    for r in rows:
        eff = Effect(r["estimate"], r["se"], r["df"], r["n"])
        lo, hi = eff.ci(level)
        r.update(ci_level=level, ci_lo=lo, ci_hi=hi, verdict=verdict(lo, hi), detectable=eff.detectable(level),
                 note="benchmark at floor: every model scores 0" if r["benchmark"] in floor else "")
    return pd.DataFrame(rows, columns=["claim", "statement", "benchmark", "comparison", "n", "estimate",
                                       "se", "df", "p", "ci_level", "ci_lo", "ci_hi", "verdict", "detectable",
                                       "note"])


def read_claims(path: str | Path) -> pd.DataFrame:
    """A claims.csv as written by claims_table (an all-empty note column stays text)."""
    table = pd.read_csv(path, dtype={"note": "string"})
    table["note"] = table["note"].fillna("").astype(str)
    return table


def render_markdown(table: pd.DataFrame) -> str:
    level = table.ci_level.iloc[0] if len(table) else 1 - ALPHA
    lines = [f"| claim | benchmark | comparison | n | effect | {100 * level:.2f}% CI | p | verdict "
             f"| detectable ({100 * POWER:.0f}% power) |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.claim}: {r.statement} | {r.benchmark} | {r.comparison} | {r.n} | "
                     f"{r.estimate:+.4f} | [{r.ci_lo:+.4f}, {r.ci_hi:+.4f}] | {r.p:.3g} | "
                     f"**{r.verdict}**{note} | {r.detectable:.4f} |")
    return "\n".join(lines) + "\n"
