"""The paper's claims, each as an oriented effect with a confidence interval, a p value and a verdict.

Every effect is signed so that > 0 is the direction the paper claims (for lower-is-better metrics,
losses, the per-item difference is negated).

Families and the verdict rule (fixed before the data)
-----------------------------------------------------
primary: on the experiment's primary metric (the benchmarks of kind ``gsm8k``, accuracy, where
    the experiment has any, else those of kind ``response_loss``; every split counts), the
    resampling merge(s) (method ``parameter_selection`` with ``resample`` true, the catalogue's
    default used where a merge does not set it) against
      b  the mean single model,   c  each weighted average,   d  each plain selection.
exploratory: <claim>: every other row, one family per claim letter (a and a_recency together).

Within each family the p values are Holm-adjusted (step-down: with the m tested p values sorted,
p_holm_(j) = max_{k ≤ j} min(1, (m − k + 1)·p_(k))). Verdict at α = 0.05:

    p_holm < α and the 95% CI above 0 → shown · p_holm < α and below 0 → opposite · else not shown

The CI is the row's 95% interval, NOT adjusted for multiplicity (so its p < 0.05 ⇔ it excludes
0; p_holm ≥ p, so a CI straddling 0 is never shown). The detectable effect is the smallest true
effect the row's test finds with 80% power at the family's Bonferroni level 1 − α/F (F: the
family's tested rows): (t_{1−α/(2F)} + t_{0.8})·SE, conservative for Holm, whose first step is
Bonferroni and later steps are easier. Rows of a benchmark at floor (every model scores 0 on
every item) are named but not tested: no p_holm, not counted in F, verdict "not tested".

Claims
------
Test-set claims b–e use the crossed design replicates × items: replicate r = 1..R has its own N
data orders, training seed and merges; the test items are the same in every replicate. Per
replicate and item, d[r, i] = sign·(score_A(r, i) − score_B(r, i)), where the mean single model
is the mean of THAT replicate's N orders and a merge with several seeds (or subsets) is the mean
of them. The estimand is the grand mean d̄ = (1/(R·I)) Σ_r Σ_i d[r, i].
  b  merge − mean single model.
  c  parameter selection (with or without resampling) − weighted average.
  d  selection with resampling − plain selection.
  e  the merge of all N − the mean over EVERY ablation model of that merge with m < N (all
     sizes, seeds and order subsets), per replicate: "more merged sub-models help", averaged
     over the subsets rather than read off one of them.
Training-set claims use the per-sample final losses L_io of sample i under order o's model:
  a  loss_io = α_i + γ_(r,o) + β₁·s1_io + β_L·sL_io + ε_io, effect −β₁; a_recency −β_L.
     s1, sL: the sample's optimizer step in epoch 1 and in the last epoch, step = position //
     batch, scaled to 0…1 over the epoch's steps (so the effect is the loss at the first step
     minus the loss at the last); α_i sample fixed effects, γ order (replicate × order) fixed
     effects. Standard errors: two-way clustered by sample and by the step shared in training
     (Cameron, Gelbach & Miller 2011; see `fe_two_way_fit`), df = min(G_sample − 1, G_step − G_order).
  f  difference in differences: per order o (in replicate r) and merge M,
         DiD_o = mean_{i early in o}(L_io − M_i) − mean_{i late in o}(L_io − M_i)
     (early: the first third of epoch 1, late: the last third); the merge's general gain on the
     training data cancels, what is left is how much more it lowers the loss where the order's
     imbalance put it high. t interval over the R·N values, df = R·N − 1.

Estimator for b–e (`crossed_mean`) and why
------------------------------------------
Two-way random-effects ANOVA (method of moments) on the R × I table, d[r, i] = μ + a_r + b_i +
e_ri, crossed random replicate and item effects:
    V(d̄) = σ²_a/R + σ²_b/I + σ²_e/(R·I) = (MS_rep + MS_item − MS_res)/(R·I),
variance components truncated at 0 (MS_rep, MS_item replaced by max(MS, MS_res)), and a
Satterthwaite df. Why not the alternatives: the replicate-level t (R values of the replicate
means) ignores the item variance the replicates share, so it is conditional on these items;
the item-level paired t on the replicate-mean differences ignores the replicate variance and
undercovers (tests/test_claims.py shows both). statsmodels' MixedLM has no crossed random
effects except as variance components of one all-covering group (dense n × n, slow), and its
Wald intervals use the normal with no small-sample df, wrong with R = 3; for this balanced design
the ANOVA estimates equal REML's when they are positive, so a library buys nothing. With item
clusters (templates), clusters replace items as the unit of the item dimension (see
`crossed_mean`); the estimand stays the mean over items. With R = 1 and no clusters the estimator
is exactly the paired t over items, df = I − 1: such rows are CONDITIONAL ON ONE SET OF DATA
ORDERS (the table's R column says 1, and the Markdown marks them †).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .catalog import METHODS

ALPHA = 0.05
POWER = 0.8  # for the detectable effect reported beside each row
CI_LEVEL = 0.95  # every row's interval: unadjusted for multiplicity (the verdict uses p_holm)
CLAIMS = {
    "a": "samples early in epoch 1 end with higher loss",
    "a_recency": "samples late in the last epoch end with lower loss (recency)",
    "b": "merge beats the mean single model",
    "c": "parameter selection beats weighted averaging",
    "d": "resampling beats plain selection",
    "e": "more merged sub-models help",
    "f": "merge lowers the loss more where an order's imbalance put it (early vs late samples)",
}
EARLY = 1 / 3  # claim f: "early" is the first third of epoch 1, "late" the last third
PRIMARY = "primary"
FLOOR_NOTE = "benchmark at floor: every model scores 0"
COLUMNS = ["family", "claim", "statement", "benchmark", "comparison", "n", "R", "estimate", "se",
           "df", "estimator", "p", "p_holm", "family_size", "ci_level", "ci_lo", "ci_hi", "verdict",
           "detectable_level", "detectable", "note"]

# bench -> replicate -> model id -> item id -> score
Items = Mapping[str, Mapping[int, Mapping[str, Mapping[str, float]]]]


@dataclass(frozen=True)
class Effect:
    """An effect oriented to its claim (> 0: the claim's direction) with its t-based inference.
    `n`: the row's units (items, training samples or orders); `reps`: replicates R."""

    estimate: float
    se: float
    df: float
    n: int
    reps: int = 1
    estimator: str = ""

    def ci(self, level: float) -> tuple[float, float]:
        """estimate ± t_{(1+level)/2, df}·SE."""
        if not self.df >= 1 or math.isnan(self.se):
            return (math.nan, math.nan)
        h = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return (self.estimate - h, self.estimate + h)

    def detectable(self, level: float, power: float = POWER) -> float:
        """The smallest true effect this test finds with probability `power` at `level`:
        (t_{(1+level)/2} + t_power) · SE, with this row's SE and df."""
        if not self.df >= 1 or math.isnan(self.se):
            return math.nan
        return float((stats.t.ppf(0.5 + level / 2, self.df) + stats.t.ppf(power, self.df)) * self.se)

    @property
    def p(self) -> float:
        """Two-sided p of a zero effect (t test); 1 where nothing varies."""
        if not self.df >= 1 or math.isnan(self.se):
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


def adjusted_verdict(p_adj: float, lo: float, hi: float, alpha: float = ALPHA) -> str:
    """The table's verdict: the CI's side of 0, provided the family-adjusted p is below α (so a
    CI straddling 0 is never shown, and neither is one excluding 0 that Holm does not pass)."""
    if math.isnan(p_adj) or p_adj >= alpha:
        return "not shown"
    return verdict(lo, hi)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p values; NaN (untested) entries stay NaN and do not count.
    Sorted p_(1) ≤ … ≤ p_(m): p_holm_(j) = max_{k ≤ j} min(1, (m − k + 1)·p_(k))."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def paired(a: Mapping[str, float], b: Mapping[str, float], lower_is_better: bool) -> Effect:
    """Mean improvement of `a` over `b` across the items both scored (paired t, one replicate)."""
    ids = sorted(set(a) & set(b))
    sign = -1.0 if lower_is_better else 1.0
    diff = [sign * (a[i] - b[i]) for i in ids]
    if len(diff) < 2:
        return Effect(statistics.fmean(diff) if diff else math.nan, math.nan, 0, len(diff))
    return Effect(statistics.fmean(diff), statistics.stdev(diff) / math.sqrt(len(diff)),
                  len(diff) - 1, len(diff), 1, "paired t over items (R = 1)")


# ------------------------------------------------------------------- crossed replicates × items
def _cluster_table(d: np.ndarray, codes: np.ndarray, g: int) -> np.ndarray:
    """d[..., R, I] → z[..., R, G]: the linearised cluster values
        z[r, c] = (G/I)·(T[r, c] − n_c·d̄_r) + d̄_r,   T[r, c] = Σ_{i ∈ c} d[r, i],
    whose mean over c is the replicate's mean over ITEMS d̄_r (the estimand's weights) and whose
    spread is that of the cluster residual totals (the ratio estimator's linearisation)."""
    onehot = np.zeros((d.shape[-1], g))
    onehot[np.arange(d.shape[-1]), codes] = 1.0
    n_c = onehot.sum(0)
    t = d @ onehot
    mean_r = d.mean(-1, keepdims=True)
    return (g / d.shape[-1]) * (t - n_c * mean_r) + mean_r


def _crossed_moments(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, SE, df) of the grand mean of z[..., R, G] under crossed random effects, from the
    two-way ANOVA mean squares (vectorised over leading axes; module docstring for the formula).
    R = 1: SE² = s²/G, df = G − 1 (the paired t)."""
    r, g = z.shape[-2:]
    mean = z.mean((-2, -1))
    if r == 1:
        zz = z[..., 0, :]
        return mean, np.sqrt(zz.var(-1, ddof=1) / g), np.full(mean.shape, g - 1.0)
    row = z.mean(-1)
    col = z.mean(-2)
    ms_rep = g * ((row - mean[..., None]) ** 2).sum(-1) / (r - 1)
    ms_col = r * ((col - mean[..., None]) ** 2).sum(-1) / (g - 1)
    df_res = (r - 1) * (g - 1)
    resid = z - row[..., :, None] - col[..., None, :] + mean[..., None, None]
    ms_res = (resid**2).sum((-2, -1)) / df_res
    # a variance component below 0 is noise: truncate it, i.e. drop that MS from the sum
    keep_rep = ms_rep > ms_res
    keep_col = ms_col > ms_res
    total = (np.where(keep_rep, ms_rep, ms_res) + np.where(keep_col, ms_col, ms_res) - ms_res)
    # Satterthwaite: df = (Σ c_k MS_k)² / Σ (c_k MS_k)²/df_k over the MS that remain
    n_res = 1 - keep_rep.astype(float) - keep_col.astype(float)  # coefficient of MS_res
    denom = (keep_rep * ms_rep**2 / (r - 1) + keep_col * ms_col**2 / (g - 1)
             + n_res**2 * ms_res**2 / df_res)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(denom > 0, total**2 / denom, np.nan)
    return mean, np.sqrt(total / (r * g)), df


def crossed_mean(d: np.ndarray, clusters: Sequence[Any] | None = None) -> Effect:
    """The grand mean of d[r, i] (R replicates × I items, > 0: the claim's direction) with the
    crossed random-effects SE and Satterthwaite df of the module docstring.

    With `clusters` (one label per item, e.g. its template) the item dimension's unit is the
    cluster: the R × G table of `_cluster_table` replaces the R × I table. Its mean is still the
    mean over items; with R = 1 the SE is exactly the CR1 cluster-robust SE of a mean,
    SE² = G/(G − 1) · Σ_c (T_c − n_c·d̄)² / I², df = G − 1, which allows unequal cluster sizes
    (the ratio estimator's linearisation). With every item its own cluster it is the unclustered
    estimator, so one code path serves both."""
    d = np.atleast_2d(np.asarray(d, float))
    r, i = d.shape
    if i < 2:
        return Effect(float(d.mean()) if d.size else math.nan, math.nan, 0, i, r)
    if clusters is None:
        z, g, unit = d, i, "items"
    else:
        codes, uniq = pd.factorize(pd.Series(list(clusters), dtype=object), use_na_sentinel=False)
        g = len(uniq)
        if g < 2:
            return Effect(float(d.mean()), math.nan, 0, i, r)
        z, unit = _cluster_table(d, codes, g), f"{g} template clusters"
    mean, se, df = _crossed_moments(z)
    if r == 1:
        how = ("paired t over items" if clusters is None else f"CR1 over {unit}") + \
            ", conditional on one set of orders (R = 1)"
    else:
        how = f"crossed replicates × {unit}, ANOVA variance, Satterthwaite df"
    return Effect(float(mean), float(se), float(df), i, r, how)


def replicate_effect(a: Mapping[int, Mapping[str, float] | None],
                     b: Mapping[int, Mapping[str, float] | None], lower_is_better: bool,
                     clusters: Mapping[str, Any] | None = None) -> Effect:
    """Paired effect of `a` over `b` across replicates and items: a[rep][item] (one model's, or
    a mean model's, item scores in each replicate). Only items scored by both in every
    replicate count (the crossed design needs every cell); replicates missing in either are
    dropped. An item without a cluster label is its own cluster. R = 1 without clusters is
    `paired`."""
    reps = sorted(r for r in set(a) & set(b) if a[r] is not None and b[r] is not None)
    if not reps:
        return Effect(math.nan, math.nan, 0, 0, 0)
    ids = sorted(set.intersection(*(set(a[r]) & set(b[r]) for r in reps)))  # type: ignore[arg-type]
    sign = -1.0 if lower_is_better else 1.0
    d = np.array([[sign * (a[r][i] - b[r][i]) for i in ids] for r in reps], float)  # type: ignore[index]
    if not ids:
        return Effect(math.nan, math.nan, 0, 0, len(reps))
    labels = None if clusters is None else [clusters.get(i, ("item", i)) for i in ids]
    return crossed_mean(d, labels)


# ------------------------------------------------------------------------- model score helpers
def _ids(manifest: dict[str, Any], scores: Mapping[str, Any], rep: int | None, **match: Any) -> list[str]:
    """Model ids of manifest entries matching `match` that `scores` has, in manifest order,
    each once (an entry with a `rep` key counts only in that replicate when `rep` is given)."""
    out: list[str] = []
    for x in manifest["models"]:
        if all(x.get(k) == v for k, v in match.items()) and x["id"] in scores and x["id"] not in out \
                and (rep is None or x.get("rep", rep) == rep):
            out.append(x["id"])
    return out


def _mean_of(scores: Mapping[str, Mapping[str, float]], ids: list[str]) -> dict[str, float] | None:
    if not ids:
        return None
    items = set.intersection(*(set(scores[x]) for x in ids))
    return {i: statistics.fmean(scores[x][i] for x in ids) for i in sorted(items)}


def seed_mean(scores: Mapping[str, Mapping[str, float]], manifest: dict[str, Any], merge: str,
              m: int, rep: int | None = None) -> dict[str, float] | None:
    """Item scores of merge `merge` of m sub-models in one replicate (`scores`: model id → item
    scores), averaged over every such model: its seeds and, for m < N, its order subsets
    (None: not scored)."""
    return _mean_of(scores, _ids(manifest, scores, rep, merge=merge, m=m))


def single_mean(scores: Mapping[str, Mapping[str, float]], manifest: dict[str, Any],
                rep: int | None = None) -> dict[str, float]:
    """Item scores of the mean single model in one replicate: per item, the mean over its N
    orders."""
    out = _mean_of(scores, _ids(manifest, scores, rep, kind="order"))
    if out is None:
        raise ValueError("no order model is scored")
    return out


def ablation_mean(scores: Mapping[str, Mapping[str, float]], manifest: dict[str, Any], merge: str,
                  rep: int | None = None) -> dict[str, float] | None:
    """Claim e's reference: per item, the mean over every ablation model of `merge` with m < N
    (all sizes, seeds and order subsets) in one replicate."""
    n = manifest["n_orders"]
    ids = [x for x in _ids(manifest, scores, rep, merge=merge)
           if next(e["m"] for e in manifest["models"] if e["id"] == x) < n]
    return _mean_of(scores, ids)


def resamples(spec: Mapping[str, Any]) -> bool:
    """Whether a merge spec is selection with resampling; a spec that does not set `resample`
    gets the catalogue's default (what the merge engine runs)."""
    default = METHODS["parameter_selection"].params["resample"].default
    return spec["method"] == "parameter_selection" and bool((spec.get("params") or {}).get("resample", default))


def primary_benchmarks(manifest: dict[str, Any]) -> list[str]:
    """The experiment's primary metric: its gsm8k (accuracy) benchmarks where it has any, else
    its response_loss benchmarks (every split). Fixed by the config, never by the data."""
    kinds = manifest["benchmarks"]
    for kind in ("gsm8k", "response_loss"):
        benches = [b for b, k in kinds.items() if k == kind]
        if benches:
            return benches
    return []


def _by_rep(scores: Mapping[Any, Any]) -> Mapping[int, Mapping[str, Mapping[str, float]]]:
    # tolerate one benchmark's scores without the replicate level (model id → items): R = 1
    if scores and all(isinstance(k, str) for k in scores):
        return {1: scores}
    return scores


def row(claim: str, benchmark: str, comparison: str, eff: Effect, family: str | None = None) -> dict[str, Any]:
    """One claims-table row before correction; `family` defaults to "exploratory: <claim>"."""
    letter = claim.split("_")[0]
    return {"family": family or f"exploratory: {letter}", "claim": claim, "statement": CLAIMS[claim],
            "benchmark": benchmark, "comparison": comparison, "n": eff.n, "R": eff.reps,
            "estimate": eff.estimate, "se": eff.se, "df": eff.df, "estimator": eff.estimator,
            "p": eff.p}


def comparisons(items: Items, manifest: dict[str, Any], lower: Mapping[str, bool],
                clusters: Mapping[str, Mapping[str, Any] | None] | None = None) -> list[dict[str, Any]]:
    """Rows of claims b–e, each with its family (module docstring). `items[bench][rep][model]`
    holds item scores; `clusters[bench]` item → template (or None)."""
    n = manifest["n_orders"]
    specs = manifest["merge_specs"]
    primary = set(primary_benchmarks(manifest))
    rows = []
    for bench, raw in items.items():
        reps = _by_rep(raw)
        lo = lower[bench]
        cl = (clusters or {}).get(bench)

        single = {r: single_mean(s, manifest, r) for r, s in reps.items()}
        full = {}
        for s in specs:
            v = {r: seed_mean(sc, manifest, s, n, r) for r, sc in reps.items()}
            if all(x is not None for x in v.values()):
                full[s] = v
        sel = [s for s in full if specs[s]["method"] == "parameter_selection"]
        resample = [s for s in sel if resamples(specs[s])]

        # primary: the resampling merge on the primary metric; None: exploratory (row())
        fam = {s: PRIMARY if bench in primary and s in resample else None for s in full}
        for s, v in full.items():
            rows.append(row("b", bench, f"{s} − mean single", replicate_effect(v, single, lo, cl), fam[s]))
        for s in sel:
            for w in (w for w in full if specs[w]["method"] == "weighted_average"):
                rows.append(row("c", bench, f"{s} − {w}", replicate_effect(full[s], full[w], lo, cl), fam[s]))
        for s in resample:
            for w in (w for w in sel if w not in resample):
                rows.append(row("d", bench, f"{s} − {w}", replicate_effect(full[s], full[w], lo, cl), fam[s]))
        for s in manifest.get("ablation", []):
            small = {r: ablation_mean(sc, manifest, s, r) for r, sc in reps.items()}
            if s in full and all(x is not None for x in small.values()):
                rows.append(row("e", bench, f"{s}: m={n} − mean over m<{n} (all subsets, seeds)",
                                replicate_effect(full[s], small, lo, cl)))
    return rows


# ------------------------------------------------------------------------------------- claim a
def _onehot(codes: np.ndarray, g: int) -> sparse.csr_matrix:
    """G × n incidence matrix of integer codes (group sums: onehot @ values)."""
    return sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(g, len(codes)))


def _shock_kappa(w: np.ndarray, zt: np.ndarray, bread: np.ndarray, ds: sparse.csr_matrix,
                 n_s: np.ndarray, sample: np.ndarray, cell: np.ndarray, g_cell: int) -> float:
    """κ: the factor that makes the step clusters' cross term unbiased for a shared step shock.

    The fit's residuals û = M·e, with M the residual maker of [sample FE, Z]; the sample fixed
    effects absorb 1/K of each shock (K: a sample's observations), the order fixed effects part
    of it, so Σ_{g} Σ_{l≠l'∈g} w_l w_l' û_l û_l' estimates ≈ (1 − 1/K)² of the shocks'
    covariance (0.44 with 3 orders). Under the working model Ω = C (unit shock shared within
    each cell, C the cell incidence), the true cross term is Σ_g W_g² − Σ_l w_l² (W_g = Σ_{l∈g}
    w_l) and the estimator's expectation is ‖cellsum(M·w_g)‖²_F summed over g minus
    Σ_l w_l²·‖cellsum(M·e_l)‖², computed exactly here from the design (M = I − P_S − Z̃BZ̃', P_S
    the within-sample mean); κ is their ratio (1 where undefined)."""
    dc = _onehot(cell, g_cell)
    big_w = np.bincount(cell, w, g_cell)
    truth = float((big_w**2).sum() - (w**2).sum())
    cd = (dc @ ds.T).tocsr()  # cell × sample: how many of a sample's observations a cell holds
    sw = (ds @ sparse.diags(w) @ dc.T).toarray()  # sample × cell: Σ w of the sample in the cell
    sz = dc @ zt  # cell × p
    szw = dc @ (w[:, None] * zt)
    cs = np.diag(big_w) - (cd @ sparse.diags(1 / n_s) @ sw) - sz @ bread @ szw.T
    e_vt = float((np.asarray(cs) ** 2).sum())
    bz = zt @ bread
    qq = np.einsum("np,pq,nq->n", bz, sz.T @ sz, bz)
    aq = np.einsum("np,np->n", sz[cell], bz)
    ms = (ds @ sz[cell]) / n_s[:, None]
    bq = np.einsum("np,np->n", ms[sample], bz)
    bb = np.asarray(cd.multiply(cd).sum(0)).ravel() / n_s**2
    ab = np.asarray(cd[cell, sample]).ravel() / n_s[sample]
    e_vh = float((w**2 * (1 + bb[sample] + qq - 2 * ab - 2 * aq + 2 * bq)).sum())
    den = e_vt - e_vh
    return truth / den if den > 0 and truth > 0 else 1.0


def fe_two_way_fit(y: np.ndarray, x: np.ndarray, sample: np.ndarray, unit: np.ndarray,
                   cells: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OLS of y on x with sample and unit (replicate × order) fixed effects; per coefficient j
    the SE clustered two ways, by sample and by `cells[j]` (the step the regressor is measured
    at), or by sample only where `cells` is None. y may be (n,) or (n, S): S outcomes, one fit
    each, the design shared (the simulation tests use this). Returns (β (k, S), SE (k, S),
    df (k,)).

    Variance of β̂_j = Σ_l w_l y_l (w the OLS weights, orthogonal to the fixed effects; score
    s_l = w_l·û_l):
        V_j = G_s/(G_s − 1)·Σ_samples (Σ s)² + κ_j·max(0, Σ_cells (Σ s)² − Σ_l s_l²)
    i.e. Cameron–Gelbach–Miller V_sample + V_step − V_intersection (the intersection of a sample
    and a step cell is one observation), the step term's cross part scaled by κ_j
    (`_shock_kappa`) and truncated at 0: a shared shock can only add positive covariance, a
    negative estimate is noise (this is also the PSD fix). df = min(G_sample − 1, G_cells − G_units):
    the step cells are nested in the units (replicate × order), whose fixed effects take one cell
    contrast each (3 orders × 3 steps: 6, not 8)."""
    y2 = np.asarray(y, float).reshape(len(y), -1)
    k = x.shape[1]
    sample = pd.factorize(sample)[0]
    unit = pd.factorize(unit)[0]
    g_s, g_u = sample.max() + 1, unit.max() + 1
    ds = _onehot(sample, g_s)
    n_s = np.asarray(ds.sum(1)).ravel()
    z = np.column_stack([x, np.eye(g_u)[unit][:, 1:]])  # the sample FE absorb the intercept

    def demean(a: np.ndarray) -> np.ndarray:
        return a - (ds @ a / n_s[:, None])[sample]

    zt, yt = demean(z), demean(y2)
    bread = np.linalg.pinv(zt.T @ zt)
    wmat = bread @ zt.T
    gamma = wmat @ yt
    u = yt - zt @ gamma
    se = np.empty((k, y2.shape[1]))
    df = np.empty(k)
    for j in range(k):
        s = wmat[j][:, None] * u
        v = g_s / max(g_s - 1, 1) * ((ds @ s) ** 2).sum(0)
        df[j] = g_s - 1
        if cells is not None:
            cell = pd.factorize(cells[j])[0]
            g_c = cell.max() + 1
            cross = ((_onehot(cell, g_c) @ s) ** 2).sum(0) - (s**2).sum(0)
            kappa = _shock_kappa(wmat[j], zt, bread, ds, n_s, sample, cell, g_c)
            v = v + kappa * np.maximum(cross, 0.0)
            # the cells are nested in the units, whose fixed effects take one contrast each
            df[j] = min(g_s - 1, g_c - g_u)
        se[j] = np.sqrt(v)
    return gamma[:k], se, df


def position_design(losses: pd.DataFrame, epochs: int, batch_size: int = 1) -> dict[str, Any]:
    """The claim-a regression's design from per-sample losses (id, loss, order, rep optional,
    pos_epoch1 … pos_epoch{E}): x (n × k) of scaled steps, sample and unit codes, and each
    coefficient's step cell (rep, order, step). k = 1 where the last epoch's steps cannot be
    told apart from epoch 1's (one epoch, or the same order every epoch)."""
    d = losses.reset_index(drop=True)
    rep = d["rep"].to_numpy() if "rep" in d else np.ones(len(d), int)
    unit = pd.factorize(pd.MultiIndex.from_arrays([rep, d["order"].to_numpy()]))[0]
    size = pd.Series(unit).map(pd.Series(unit).value_counts()).to_numpy()
    n_steps = -(-size // batch_size)  # ceil: the epoch's optimizer steps
    cols = ["pos_epoch1"] + ([f"pos_epoch{epochs}"] if epochs > 1 else [])
    steps = [d[c].to_numpy(int) // batch_size for c in cols]
    if len(steps) == 2 and np.array_equal(steps[0], steps[1]):
        steps = steps[:1]
    x = np.column_stack([s / np.maximum(n_steps - 1, 1) for s in steps])
    cells = [unit * (int(n_steps.max()) + 1) + s for s in steps]
    return {"x": x, "y": d["loss"].to_numpy(float), "sample": pd.factorize(d["id"])[0],
            "unit": unit, "cells": cells, "n_steps": int(n_steps.max()), "reps": len(set(rep))}


def position_effects(losses: pd.DataFrame, epochs: int, batch_size: int = 1) -> tuple[Effect, Effect | None]:
    """(−β₁, −β_L) of claim a's regression (module docstring) with two-way clustered SEs
    (`fe_two_way_fit`): −β_L is None where it cannot be told apart from β₁. `batch_size`: the
    samples per optimizer step (1: positions are steps)."""
    des = position_design(losses, epochs, batch_size)
    if des["n_steps"] < 2:  # one step per epoch: no position within the epoch to compare
        nan = Effect(math.nan, math.nan, 0, int(des["sample"].max()) + 1, des["reps"])
        return nan, (nan if des["x"].shape[1] == 2 else None)
    beta, se, df = fe_two_way_fit(des["y"], des["x"], des["sample"], des["unit"], des["cells"])
    n_samples = int(des["sample"].max()) + 1
    how = (f"sample + order FE, SE clustered by sample and by (rep, order, step) "
           f"[{des['n_steps']} steps of {batch_size}], κ-corrected")
    effs = [Effect(float(-beta[j, 0]), float(se[j, 0]), float(df[j]), n_samples, des["reps"], how)
            for j in range(len(df))]
    return effs[0], (effs[1] if len(effs) == 2 else None)


# ------------------------------------------------------------------------------------- claim f
def early_gain(orders: pd.DataFrame, merged: pd.DataFrame) -> Effect:
    """Claim f for one merge, as a difference in differences (module docstring): `orders` holds
    every order's per-sample final losses and epoch-1 positions (id, loss, order, pos_epoch1,
    rep optional), `merged` the merge's per-sample losses (id, loss, rep optional; several rows
    per (rep, id), e.g. seeds, are averaged). One DiD per (rep, order), t over them."""
    o = orders.copy()
    m = merged.copy()
    if "rep" not in o:
        o["rep"] = 1
    if "rep" not in m:
        m["rep"] = 1
    merge_loss = m.groupby(["rep", "id"])["loss"].mean()
    o["gain"] = o["loss"].to_numpy() - merge_loss.reindex(pd.MultiIndex.from_arrays([o["rep"], o["id"]])).to_numpy()
    dids = []
    for _, g in o.groupby(["rep", "order"]):
        n = len(g)
        early = g[g.pos_epoch1 < EARLY * n].gain
        late = g[g.pos_epoch1 >= (1 - EARLY) * n].gain
        if len(early) and len(late):
            dids.append(early.mean() - late.mean())
    dids_a = np.array(dids, float)
    reps = int(o["rep"].nunique())
    how = f"difference in differences per (rep, order), t over {len(dids_a)}"
    if len(dids_a) < 2 or np.isnan(dids_a).any():
        return Effect(float(np.nanmean(dids_a)) if len(dids_a) else math.nan, math.nan, 0, len(dids_a), reps, how)
    return Effect(float(dids_a.mean()), float(dids_a.std(ddof=1) / math.sqrt(len(dids_a))),
                  len(dids_a) - 1, len(dids_a), reps, how)


# ------------------------------------------------------------------------------------ the table
def at_floor(items: Items) -> set[str]:
    """Benchmarks on which every model scores 0 on every item (nothing to compare)."""
    return {b for b, raw in items.items()
            if all(v == 0 for models in _by_rep(raw).values() for sc in models.values() for v in sc.values())}


def claims_table(position_rows: Iterable[dict[str, Any]], comparison_rows: Iterable[dict[str, Any]] = (),
                 floor: Iterable[str] = frozenset()) -> pd.DataFrame:
    """Every row with its family's Holm-adjusted p, 95% CI, verdict and detectable effect."""
    rows = [dict(r) for r in [*position_rows, *comparison_rows]]
    floor = set(floor)
    for r in rows:
        r.setdefault("family", f"exploratory: {r['claim'].split('_')[0]}")
        r.setdefault("R", 1)
        r.setdefault("estimator", "")
        r["note"] = FLOOR_NOTE if r["benchmark"] in floor else ""
    families: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    for members in families.values():
        tested = [r for r in members if not r["note"] and not math.isnan(r["p"])]
        adj = holm([r["p"] for r in tested])
        size = len(tested)
        level = 1 - ALPHA / max(size, 1)
        for r in members:
            eff = Effect(r["estimate"], r["se"], r["df"], r["n"], r["R"])
            lo, hi = eff.ci(CI_LEVEL)
            r.update(p_holm=math.nan, family_size=size, ci_level=CI_LEVEL, ci_lo=lo, ci_hi=hi,
                     detectable_level=level, detectable=eff.detectable(level))
            r["verdict"] = "not tested" if r["note"] else "not shown"
        for r, p in zip(tested, adj, strict=True):
            r["p_holm"] = float(p)
            r["verdict"] = adjusted_verdict(float(p), r["ci_lo"], r["ci_hi"])
    order = {f: i for i, f in enumerate(sorted(families, key=lambda f: (f != PRIMARY, f)))}
    rows.sort(key=lambda r: order[r["family"]])  # stable: rows keep their order in a family
    return pd.DataFrame(rows, columns=COLUMNS)


def claims_from_results(items: Items, clusters: Mapping[str, Mapping[str, Any] | None] | None,
                        losses: pd.DataFrame | None, merge_losses: pd.DataFrame | None,
                        manifest: dict[str, Any], lower: Mapping[str, bool]) -> pd.DataFrame:
    """The claims table of one experiment (the single entry point).

    items[bench][rep][model id] = {item: score}; clusters[bench] = {item: template} or None;
    losses: per-sample training losses (id, loss, order, rep, pos_epoch1 … pos_epoch{E});
    merge_losses: the merges' per-sample losses (id, loss, rep, merge); manifest: as written
    by the workflow (models, n_orders, merge_specs, merges, ablation, benchmarks, epochs,
    replicates, batch_size); lower[bench]: the benchmark's metric is lower-is-better."""
    train = "train (per-sample loss)"
    pos: list[dict[str, Any]] = []
    if losses is not None and len(losses):
        first, last = position_effects(losses, manifest["epochs"], int(manifest.get("batch_size", 1)))
        pos.append(row("a", train, "−slope on epoch-1 step (first − last step)", first))
        if last is not None:
            pos.append(row("a_recency", train, f"−slope on epoch-{manifest['epochs']} step", last))
        if merge_losses is not None and len(merge_losses):
            merges = [s for s in manifest.get("merges", manifest["merge_specs"]) if s in set(merge_losses["merge"])]
            for s in merges:
                eff = early_gain(losses, merge_losses[merge_losses["merge"] == s])
                pos.append(row("f", train, f"{s}: gain (order − merge) early − late in epoch 1", eff))
    table = claims_table(pos, comparisons(items, manifest, lower, clusters), at_floor(items))
    # accuracies (fractions, higher is better) are read in percentage points; losses in nats
    table["unit"] = ["pp" if b in lower and not lower[b] else "nats" for b in table.benchmark]
    return table


def read_claims(path: str | Path) -> pd.DataFrame:
    """A claims.csv as written by claims_table (an all-empty note column stays text)."""
    table = pd.read_csv(path, dtype={"note": "string", "estimator": "string"})
    for c in ("note", "estimator"):
        if c in table:
            table[c] = table[c].fillna("").astype(str)
    return table


def render_markdown(table: pd.DataFrame, summary: bool = False) -> str:
    """The claims table in Markdown; R = 1 rows are marked † (conditional on one set of orders).
    `summary` (the README's): every primary row, and of the exploratory rows those shown or
    opposite, with a count of the others per family (the full table: tables/claims.md)."""
    lines = ["| family | claim | benchmark | comparison | n | R | effect | 95% CI (unadjusted) | p "
             "| p (Holm, in family) | verdict | detectable (80% power, family Bonferroni) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    left: dict[str, int] = {}
    if summary:
        keep = (table.family == PRIMARY) | table.verdict.isin(["shown", "opposite"])
        for fam in table.family[~keep]:
            left[fam] = left.get(fam, 0) + 1
        table = table[keep]
    for _, r in table.iterrows():
        note = f" ({r.note})" if r.note else ""
        dagger = "†" if r.R == 1 else ""
        pp = getattr(r, "unit", "nats") == "pp"  # accuracy: percentage points
        k, fmt, unit = (100.0, "+.2f", " pp") if pp else (1.0, "+.4f", "")
        lines.append(f"| {r.family} | {r.claim}: {r.statement} | {r.benchmark} | {r.comparison} | {r.n} | "
                     f"{r.R}{dagger} | {k * r.estimate:{fmt}}{unit} | [{k * r.ci_lo:{fmt}}, {k * r.ci_hi:{fmt}}] | "
                     f"{r.p:.3g} | {r.p_holm:.3g} | **{r.verdict}**{note} | {k * r.detectable:{fmt[1:]}}{unit} |")
    lines.append("")
    if left:
        lines.append("Not listed (not shown or not tested; every row is in the experiment's "
                     "`tables/claims.md`): " + ", ".join(f"{n} in {f}" for f, n in left.items()) + ".")
        lines.append("")
    lines.append("p: unadjusted; p (Holm): adjusted within the row's family (primary: fixed before the "
                 "data; exploratory: one family per claim); verdict from p (Holm) < 0.05 and the CI's "
                 "side of 0.")
    if len(table) and (table.R == 1).any():
        lines.append("† R = 1: one replicate, so the row is conditional on one set of data orders "
                     "(its interval covers the test items' variation, not the orders').")
    return "\n".join(lines) + "\n"
