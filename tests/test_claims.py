"""The claims table: the verdict rule, Holm within families, the crossed replicates × items
estimator, the position regression with two-way clustering, claims e and f, on constructed
inputs whose answers are known; and seeded coverage simulations of every interval that decides
a verdict (each a few seconds on one core)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ordermerge.claims import (
    PRIMARY,
    Effect,
    _cluster_table,
    _crossed_moments,
    claims_from_results,
    claims_table,
    comparisons,
    crossed_mean,
    early_gain,
    fe_two_way_fit,
    holm,
    paired,
    position_design,
    position_effects,
    replicate_effect,
    resamples,
    row,
    verdict,
)


@pytest.mark.parametrize(("lo", "hi", "want"), [
    (-0.1, 0.2, "not shown"),   # straddles zero
    (0.0, 0.2, "not shown"),    # touches zero
    (0.01, 0.2, "shown"),
    (-0.3, -0.01, "opposite"),
    (math.nan, math.nan, "not shown"),
])
def test_verdict_rule(lo, hi, want):
    assert verdict(lo, hi) == want


def test_a_consistent_loss_reduction_is_shown_and_its_sign_follows_the_metric():
    ids = [f"q{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    base = {i: float(rng.uniform(1, 2)) for i in ids}
    better = {i: base[i] - 0.1 - 0.01 * float(rng.random()) for i in ids}  # lower loss on every item
    eff = paired(better, base, lower_is_better=True)
    assert eff.n == 20 and eff.df == 19 and 0.1 < eff.estimate < 0.11
    lo, hi = eff.ci(0.99)
    assert verdict(lo, hi) == "shown"
    # the same numbers read as an accuracy (higher is better): the opposite
    assert verdict(*paired(better, base, lower_is_better=False).ci(0.99)) == "opposite"
    # noise around zero: not shown
    noise = {i: base[i] + float(rng.normal(0, 0.1)) for i in ids}
    assert verdict(*paired(noise, base, True).ci(0.99)) == "not shown"


def test_paired_t_matches_scipy():
    a = {"x": 1.0, "y": 0.0, "z": 1.0, "w": 1.0}
    b = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}
    eff = paired(a, b, lower_is_better=False)
    ref = stats.ttest_rel([1, 0, 1, 1], [0, 0, 0, 1])
    assert eff.estimate == 0.5 and eff.p == pytest.approx(ref.pvalue)
    lo, hi = eff.ci(0.95)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_one_replicate_without_clusters_is_todays_paired_t():
    rng = np.random.default_rng(3)
    a = {f"i{j}": float(rng.normal()) for j in range(30)}
    b = {f"i{j}": float(rng.normal()) for j in range(30)}
    old, new = paired(a, b, True), replicate_effect({1: a}, {1: b}, True)
    assert (new.estimate, new.se, new.df, new.n, new.reps) == pytest.approx(
        (old.estimate, old.se, old.df, old.n, 1), rel=1e-12)
    assert "conditional on one set of orders" in new.estimator


def test_crossed_variance_is_the_anova_formula_on_a_hand_example():
    d = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 6.0]])  # R = 2 replicates × I = 3 items
    # grand 17/6; row means 7/3, 10/3; column means 1.5, 2, 5
    ms_rep = 3 * ((7 / 3 - 17 / 6) ** 2 + (10 / 3 - 17 / 6) ** 2) / 1
    ms_item = 2 * ((1.5 - 17 / 6) ** 2 + (2 - 17 / 6) ** 2 + (5 - 17 / 6) ** 2) / 2
    resid = d - d.mean(1, keepdims=True) - d.mean(0) + d.mean()
    ms_res = (resid**2).sum() / 2
    eff = crossed_mean(d)
    assert eff.estimate == pytest.approx(17 / 6)
    assert eff.se**2 == pytest.approx((ms_rep + ms_item - ms_res) / 6)
    sat = (ms_rep + ms_item - ms_res) ** 2 / (ms_rep**2 / 1 + ms_item**2 / 2 + ms_res**2 / 2)
    assert eff.df == pytest.approx(sat) and eff.reps == 2 and eff.n == 3


def test_one_replicate_with_clusters_is_the_cr1_mean():
    rng = np.random.default_rng(4)
    sizes = [2, 5, 3, 7, 4]
    labels = np.repeat(np.arange(5), sizes)
    d = rng.normal(size=len(labels))
    eff = crossed_mean(d[None, :], list(labels))
    resid_tot = np.array([(d[labels == c] - d.mean()).sum() for c in range(5)])
    assert eff.estimate == pytest.approx(d.mean())
    assert eff.se**2 == pytest.approx(5 / 4 * (resid_tot**2).sum() / len(d) ** 2)
    assert eff.df == 4
    # every item its own cluster: the unclustered estimator
    same = crossed_mean(d[None, :], list(range(len(d))))
    assert same.se == pytest.approx(crossed_mean(d[None, :]).se)


def _cover(mean: np.ndarray, se: np.ndarray, df: np.ndarray) -> float:
    return float(np.mean(np.abs(mean) <= stats.t.ppf(0.975, df) * se))


def test_crossed_interval_covers_a_null_effect_with_replicate_variance():
    """R = 3, I = 300, null effect, replicate, item and residual SD 1: the crossed interval covers
    93–97%; the item-level paired t on replicate means (ignoring replicates) undercovers."""
    rng = np.random.default_rng(10)
    sims, r, i = 2000, 3, 300
    d = rng.normal(0, 1, (sims, r, 1)) + rng.normal(0, 1, (sims, 1, i)) + rng.normal(0, 1, (sims, r, i))
    cover = _cover(*_crossed_moments(d))
    dm = d.mean(1)
    ignoring = _cover(dm.mean(-1), dm.std(-1, ddof=1) / math.sqrt(i), np.full(sims, i - 1))
    assert 0.93 <= cover <= 0.97, cover
    assert ignoring < 0.5, ignoring
    # the public function gives the same interval as the vectorised core
    one = crossed_mean(d[0])
    m, s, f = _crossed_moments(d[:1])
    assert (one.estimate, one.se, one.df) == pytest.approx((m[0], s[0], f[0]))


def test_clustered_crossed_interval_covers_with_template_effects():
    """15 templates of unequal size (8–28 items, 300 in all), R = 3, null effect; replicate,
    template, item and residual SD comparable (1, 0.5, 1, 1) and a replicate × template SD 0.5:
    the clustered interval covers about 93%; the one treating items as independent undercovers.

    The lower bound is 0.92, not 0.93: with two small-df mean squares competing (replicates,
    2 df; templates, 14 df) Satterthwaite's df is known to be slightly liberal; this setting
    measured 0.929 here and 0.928–0.938 over other seeds with 4000 datasets (MC SE 0.004)."""
    rng = np.random.default_rng(11)
    sims, r = 2000, 3
    sizes = np.array([8, 10, 12, 14, 16, 18, 20, 20, 22, 24, 26, 28, 26, 28, 28])
    codes = np.repeat(np.arange(15), sizes)
    i = len(codes)
    d = (rng.normal(0, 1, (sims, r, 1)) + rng.normal(0, 0.5, (sims, 1, 15))[..., codes]
         + rng.normal(0, 0.5, (sims, r, 15))[..., codes]
         + rng.normal(0, 1, (sims, 1, i)) + rng.normal(0, 1, (sims, r, i)))
    cover = _cover(*_crossed_moments(_cluster_table(d, codes, 15)))
    no_reps = _cover(*_crossed_moments(_cluster_table(d.mean(1, keepdims=True), codes, 15)))
    assert 0.92 <= cover <= 0.97, cover
    assert no_reps < 0.6, no_reps
    # one replicate (R = 1): the template effects alone; ignoring them undercovers
    d1 = rng.normal(0, 0.5, (sims, 1, 15))[..., codes] + rng.normal(0, 1, (sims, 1, i))
    cover1 = _cover(*_crossed_moments(_cluster_table(d1, codes, 15)))
    items1 = _cover(*_crossed_moments(d1))
    assert 0.92 <= cover1 <= 0.97, cover1
    assert items1 < 0.8, items1
    eff = crossed_mean(d[0], list(codes))
    assert "15 template clusters" in eff.estimator and eff.n == 300 and eff.reps == 3


def _orders(rng, n: int, orders: int, reps: int, epochs: int) -> pd.DataFrame:
    """Per-sample rows of `orders` orders × `reps` replicates, each epoch its own permutation."""
    frames = []
    for r in range(1, reps + 1):
        for o in range(1, orders + 1):
            d = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "order": o, "rep": r, "loss": 0.0})
            for e in range(1, epochs + 1):
                d[f"pos_epoch{e}"] = np.argsort(rng.permutation(n))
            frames.append(d)
    return pd.concat(frames, ignore_index=True)


def test_position_regression_recovers_known_slopes_and_matches_dummy_ols():
    """loss = sample effect + b1·p1 + bL·pL + noise over 5 orders (batch 1: steps = positions):
    the fit recovers b1 and bL and equals OLS with one dummy per sample and per order."""
    rng = np.random.default_rng(1)
    n, orders, b1, bl = 40, 5, -0.3, -0.5
    d = _orders(rng, n, orders, 1, 3)
    effect = rng.normal(0, 1, n)
    sid = d.id.str[1:].astype(int).to_numpy()
    d["loss"] = effect[sid] + b1 * d.pos_epoch1 / (n - 1) + bl * d.pos_epoch3 / (n - 1) + 0.2 * d.order \
        + rng.normal(0, 0.05, len(d))
    first, last = position_effects(d, epochs=3)
    assert first.estimate == pytest.approx(-b1, abs=0.05) and last.estimate == pytest.approx(-bl, abs=0.05)
    assert first.df == n - 1 and first.n == n
    x = np.column_stack([d.pos_epoch1 / (n - 1), d.pos_epoch3 / (n - 1), pd.get_dummies(d["id"]).to_numpy(float),
                         pd.get_dummies(d["order"]).to_numpy(float)[:, 1:]])
    beta = np.linalg.lstsq(x, d.loss.to_numpy(), rcond=None)[0]
    assert (-first.estimate, -last.estimate) == pytest.approx((beta[0], beta[1]), abs=1e-9)
    assert verdict(*first.ci(0.99)) == "shown" and verdict(*last.ci(0.99)) == "shown"


def test_steps_are_positions_over_the_batch_scaled_over_the_epochs_steps():
    rng = np.random.default_rng(5)
    d = _orders(rng, 21, 3, 1, 2)
    des = position_design(d, epochs=2, batch_size=8)  # steps 0, 1, 2 (8, 8, 5 samples)
    assert des["n_steps"] == 3
    assert set(np.round(des["x"][:, 0], 9)) == {0.0, 0.5, 1.0}
    assert len(set(des["cells"][0])) == 9  # (order, step) cells


def test_one_epoch_has_no_separate_recency_term():
    d = pd.DataFrame({"id": ["a", "b", "a", "b", "a", "b"], "order": [1, 1, 2, 2, 3, 3],
                      "loss": [1.0, 2.0, 1.5, 1.8, 1.2, 2.1], "pos_epoch1": [0, 1, 1, 0, 0, 1]})
    first, last = position_effects(d, epochs=1)
    assert last is None and first.df == 1


def _position_coverage(rng, n: int, orders: int, reps: int, epochs: int, batch: int, designs: int,
                       sims: int) -> tuple[np.ndarray, np.ndarray]:
    """Null position effect, sample effects (SD 2), order effects (SD 1), noise SD 1 and a shock
    shared by each optimizer step's batch in every epoch (SD 1/3): 95% coverage of the two-way
    interval and of the sample-clustered one, per coefficient (epoch 1, last epoch)."""
    new, old = [], []
    for _ in range(designs):
        d = _orders(rng, n, orders, reps, epochs)
        des = position_design(d, epochs, batch)
        unit = des["unit"]
        y = (rng.normal(0, 2, (n, sims))[des["sample"]] + rng.normal(0, 1, (unit.max() + 1, sims))[unit]
             + rng.normal(0, 1, (len(d), sims)))
        for e in range(1, epochs + 1):
            cell = pd.factorize(unit * 10_000 + d[f"pos_epoch{e}"].to_numpy() // batch)[0]
            y += rng.normal(0, 1 / 3, (cell.max() + 1, sims))[cell]
        for cells, out in ((des["cells"], new), (None, old)):
            beta, se, df = fe_two_way_fit(y, des["x"], des["sample"], unit, cells)
            out.append(np.abs(beta) <= stats.t.ppf(0.975, df)[:, None] * se)
    return np.concatenate(new, 1).mean(1), np.concatenate(old, 1).mean(1)


def test_position_interval_covers_with_shared_step_shocks_at_the_defaults_shape():
    """21 samples × 3 orders, 2 epochs, batch 8 (3 steps an epoch), 5000 datasets over 50 designs."""
    new, old = _position_coverage(np.random.default_rng(20), 21, 3, 1, 2, 8, designs=50, sims=100)
    assert np.all((new >= 0.93) & (new <= 0.97)), new
    assert np.all(old < 0.9), old


def test_position_interval_covers_with_shared_step_shocks_at_the_studys_shape():
    """2000 samples × 5 orders, 3 epochs, batch 32 (63 steps an epoch), 1000 datasets."""
    new, old = _position_coverage(np.random.default_rng(21), 2000, 5, 1, 3, 32, designs=5, sims=200)
    assert np.all((new >= 0.93) & (new <= 0.97)), new
    assert np.all(old < 0.9), old


def _manifest(sel_params=None):
    models = [{"id": "base", "kind": "base"}] + [{"id": f"order{k}", "kind": "order", "k": k} for k in (1, 2, 3)]
    for s, method, seeds in (("avg", "weighted_average", [0]), ("sel", "parameter_selection", [0, 1]),
                             ("selr", "parameter_selection", [0, 1])):
        for m in (2, 3):
            for seed in seeds:
                models.append({"id": f"{s}_n{m}_s{seed}", "kind": "merge", "merge": s, "method": method,
                               "m": m, "seed": seed})
    sel = {"method": "parameter_selection", "params": {"resample": False}} if sel_params is None else sel_params
    return {"n_orders": 3, "models": models, "ablation": ["selr"], "epochs": 2, "batch_size": 1,
            "merges": ["avg", "sel", "selr"], "replicates": [1],
            "benchmarks": {"acc": "gsm8k", "loss": "response_loss"},
            "merge_specs": {"avg": {"method": "weighted_average", "params": {}}, "sel": sel,
                            "selr": {"method": "parameter_selection", "params": {"resample": True}}}}


SCORE = {"order1": 0.2, "order2": 0.4, "order3": 0.6, "avg_n3_s0": 0.5, "sel_n3_s0": 0.5,
         "sel_n3_s1": 0.7, "selr_n3_s0": 0.9, "selr_n3_s1": 0.7, "selr_n2_s0": 0.1,
         "selr_n2_s1": 0.3, "base": 0.0, "avg_n2_s0": 0.0, "sel_n2_s0": 0.0, "sel_n2_s1": 0.0}


def _scores(shift: float = 0.0) -> dict[str, dict[str, float]]:
    items = [f"i{j}" for j in range(10)]
    return {m: {i: v + shift + 0.01 * j for j, i in enumerate(items)} for m, v in SCORE.items()}


def test_comparisons_use_the_mean_single_model_average_merge_seeds_and_name_the_primary_family():
    man = _manifest()
    rows = {(r["claim"], r["comparison"]): r
            for r in comparisons({"acc": {1: _scores()}}, man, {"acc": False})}
    assert set(rows) == {("b", "avg − mean single"), ("b", "sel − mean single"), ("b", "selr − mean single"),
                         ("c", "sel − avg"), ("c", "selr − avg"), ("d", "selr − sel"),
                         ("e", "selr: m=3 − mean over m<3 (all subsets, seeds)")}
    # mean single = 0.4 (not the best single, 0.6); seeds averaged per item
    assert rows[("b", "avg − mean single")]["estimate"] == pytest.approx(0.1)
    assert rows[("b", "sel − mean single")]["estimate"] == pytest.approx(0.2)
    assert rows[("d", "selr − sel")]["estimate"] == pytest.approx(0.2)
    assert rows[("e", "selr: m=3 − mean over m<3 (all subsets, seeds)")]["estimate"] == pytest.approx(0.6)
    # primary: the resampling merge against mean single, average and plain selection
    primary = {k for k, r in rows.items() if r["family"] == PRIMARY}
    assert primary == {("b", "selr − mean single"), ("c", "selr − avg"), ("d", "selr − sel")}
    assert rows[("b", "avg − mean single")]["family"] == "exploratory: b"
    assert rows[("c", "sel − avg")]["family"] == "exploratory: c"
    # a loss: lower is better, so the same numbers flip sign; with a gsm8k benchmark in the
    # experiment, the loss is not primary
    loss = comparisons({"loss": {1: _scores()}}, man, {"loss": True})
    d = next(r for r in loss if r["comparison"] == "selr − sel")
    assert d["estimate"] == pytest.approx(-0.2) and d["family"] == "exploratory: d"


def test_without_accuracy_the_response_loss_is_primary():
    man = _manifest()
    man["benchmarks"] = {"loss_id": "response_loss", "loss_ood": "response_loss"}
    rows = comparisons({"loss_id": {1: _scores()}, "loss_ood": {1: _scores()}}, man,
                       {"loss_id": True, "loss_ood": True})
    assert {r["benchmark"] for r in rows if r["family"] == PRIMARY} == {"loss_id", "loss_ood"}


def test_a_selection_without_params_is_plain_selection_the_catalogues_default():
    """Issue 20 item 4: {method: parameter_selection} runs plain selection (resample defaults to
    False), so it must be the reference of claim d, never labelled resampling."""
    assert not resamples({"method": "parameter_selection"})
    assert not resamples({"method": "parameter_selection", "params": None})
    assert resamples({"method": "parameter_selection", "params": {"resample": True}})
    man = _manifest(sel_params={"method": "parameter_selection"})
    rows = comparisons({"acc": {1: _scores()}}, man, {"acc": False})
    d = [r["comparison"] for r in rows if r["claim"] == "d"]
    assert d == ["selr − sel"]
    assert not any(r["comparison"].startswith("sel −") and r["family"] == PRIMARY for r in rows)


def test_claim_e_averages_over_every_subset_and_seed_per_replicate():
    """Ablation merges of m = 2 over three order subsets and two seeds, in two replicates: the
    reference is the mean over all six per replicate."""
    man = _manifest()
    man["models"] = [x for x in man["models"] if not (x.get("merge") == "selr" and x["m"] == 2)]
    subs = {}
    for k, subset in enumerate(("12", "13", "23")):
        for seed in (0, 1):
            mid = f"selr_n2_{subset}_s{seed}"
            man["models"].append({"id": mid, "kind": "merge", "merge": "selr", "method": "parameter_selection",
                                  "m": 2, "seed": seed, "subset": subset})
            subs[mid] = 0.1 * k + 0.02 * seed  # mean over the six: 0.11
    items = {}
    for rep, shift in ((1, 0.0), (2, 0.05)):
        sc = _scores(shift)
        for mid, v in subs.items():
            sc[mid] = {i: v + 0.01 * j for j, i in enumerate(sorted(sc["order1"], key=lambda s: int(s[1:])))}
        items[rep] = sc
    e = next(r for r in comparisons({"acc": items}, man, {"acc": False}) if r["claim"] == "e")
    # replicate 1: 0.8 − 0.11; replicate 2: 0.85 − 0.11
    assert e["estimate"] == pytest.approx((0.69 + 0.74) / 2) and e["R"] == 2


def test_holm_on_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.01)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0]) or holm([0.5, 0.6]) == pytest.approx([1.0, 0.6])


def test_claims_table_corrects_within_families_and_names_floor_benchmarks():
    base = {"benchmark": "acc", "n": 30, "R": 1, "se": 0.04, "df": 29}
    rows = [{**base, "claim": "b", "comparison": f"m{k} − mean single", "estimate": 0.1,
             "p": Effect(0.1, 0.04, 29, 30).p} for k in range(10)]
    rows[0]["family"] = PRIMARY
    rows.append({**rows[1], "benchmark": "gsm"})
    t = claims_table([], rows, floor={"gsm"})
    # the primary row is alone in its family: p_holm = p = 0.018 → shown
    prim = t[t.family == PRIMARY].iloc[0]
    assert prim.p_holm == pytest.approx(prim.p) and prim.verdict == "shown" and t.iloc[0].family == PRIMARY
    # the nine exploratory b rows share their family: Holm ×9 → 0.166, not shown, though each
    # 95% CI excludes 0
    ex = t[(t.family == "exploratory: b") & (t.note == "")]
    assert len(ex) == 9 and set(ex.verdict) == {"not shown"} and (ex.ci_lo > 0).all()
    assert ex.p_holm.iloc[0] == pytest.approx(9 * ex.p.iloc[0])
    assert (ex.family_size == 9).all() and ex.detectable_level.iloc[0] == pytest.approx(1 - 0.05 / 9)
    floor = t[t.benchmark == "gsm"].iloc[0]
    assert floor.note == "benchmark at floor: every model scores 0" and floor.verdict == "not tested"
    assert math.isnan(floor.p_holm)
    assert list(t.columns[:5]) == ["family", "claim", "statement", "benchmark", "comparison"]


def test_a_ci_straddling_zero_is_never_shown():
    rng = np.random.default_rng(6)
    rows = []
    for k in range(200):
        est, se = float(rng.normal(0, 0.05)), float(rng.uniform(0.01, 0.05))
        rows.append(row("b", "acc", f"m{k}", Effect(est, se, float(rng.integers(2, 40)), 30)))
    t = claims_table([], rows)
    shown = t[t.verdict == "shown"]
    assert (shown.ci_lo > 0).all() and (t[t.verdict == "opposite"].ci_hi < 0).all()
    assert ((t.ci_lo <= 0) & (t.ci_hi >= 0) & (t.verdict != "not shown")).sum() == 0


def test_detectable_effect_is_found_with_the_stated_power():
    """A true effect of exactly `detectable` is found (CI above 0) in about 80% of samples."""
    rng = np.random.default_rng(2)
    n, sd, level = 20, 1.0, 0.99
    mde = Effect(0.0, sd / math.sqrt(n), n - 1, n).detectable(level)
    d = rng.normal(mde, sd, (2000, n))
    se = d.std(1, ddof=1) / math.sqrt(n)
    hits = np.mean(d.mean(1) - stats.t.ppf(0.5 + level / 2, n - 1) * se > 0)
    assert 0.72 < hits < 0.85  # the t approximation with the SE estimated per sample


def test_readme_claims_rewrites_only_its_block(tmp_path, capsys):
    from ordermerge.cli import README_END, README_START, main

    t = claims_table([row("a", "train (per-sample loss)", "−slope on epoch-1 step", Effect(-0.04, 0.0156, 20, 63))], [])
    t.to_csv(tmp_path / "claims.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    assert main(["readme-claims", "--claims", str(tmp_path / "claims.csv"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "| exploratory: a | a: samples early in epoch 1 end with higher loss | train (per-sample loss) |" in text
    assert "**opposite**" in text and "95% CI (unadjusted)" in text and "| 1† |" in text
    # without its markers the README is left alone, with one line saying why
    readme.write_text("# no markers\n")
    assert main(["readme-claims", "--claims", str(tmp_path / "claims.csv"), "--readme", str(readme)]) == 2
    assert "expected one" in capsys.readouterr().err and readme.read_text() == "# no markers\n"


def _f_data(rng, flatten: float, uniform: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """60 samples × 3 orders × 2 replicates; an order's model ends with loss 1 + 0.6·(1 − p) at
    epoch-1 position p ∈ [0, 1] (early samples higher). The merge's loss per sample: the orders'
    mean, lowered by `uniform` everywhere and with `flatten` of the position effect removed."""
    n = 60
    d = _orders(rng, n, 3, 2, 1)
    sid = d.id.str[1:].astype(int).to_numpy()
    hard = rng.normal(0, 0.3, n)
    d["loss"] = 1 + hard[sid] + 0.6 * (1 - d.pos_epoch1 / (n - 1)) + rng.normal(0, 0.01, len(d))
    mean = d.groupby(["rep", "id"]).loss.mean()
    flat = pd.Series(1 + hard + 0.3, index=[f"s{i}" for i in range(n)])
    m = ((1 - flatten) * mean + flatten * flat.reindex(mean.index.get_level_values("id")).to_numpy() - uniform)
    return d, m.rename("loss").reset_index()


def test_claim_f_did_cancels_a_uniform_gain_and_finds_a_flattened_imbalance():
    # no position effect in the orders, a merge 0.2 lower everywhere: DiD ≈ 0 (the old
    # "order's model − merge on early samples" read 0.2 here, a gain that is not about order)
    rng = np.random.default_rng(7)
    orders, merged = _f_data(rng, flatten=0.0, uniform=0.2)
    n = 60
    sid = orders.id.str[1:].astype(int).to_numpy()
    orders["loss"] = orders["loss"] - 0.6 * (1 - orders.pos_epoch1 / (n - 1))
    merged["loss"] = orders.groupby(["rep", "id"]).loss.mean().to_numpy() - 0.2
    eff = early_gain(orders, merged)
    assert abs(eff.estimate) < 0.01 and verdict(*eff.ci(0.95)) == "not shown"
    assert eff.n == 6 and eff.df == 5 and eff.reps == 2 and len(set(sid)) == n
    # with the position effect: a uniform gain changes nothing (it cancels) ...
    orders, uniform = _f_data(np.random.default_rng(7), 0.0, 0.2)
    base = early_gain(orders, _f_data(np.random.default_rng(7), 0.0, 0.0)[1])
    assert early_gain(orders, uniform).estimate == pytest.approx(base.estimate, abs=1e-9)
    # ... the mean of the orders already evens out 2/3 of each order's 0.4 early − late gap
    # (the order's own third stays in the mean) ...
    assert base.estimate == pytest.approx(0.4 * 2 / 3, abs=0.03)
    # ... and a merge that flattens the position effect entirely gets the whole gap, 0.4
    flat = early_gain(orders, _f_data(np.random.default_rng(7), 1.0, 0.2)[1])
    assert flat.estimate == pytest.approx(0.4, abs=0.03) and verdict(*flat.ci(0.95)) == "shown"


def test_claims_from_results_end_to_end():
    rng = np.random.default_rng(8)
    man = _manifest()
    man["epochs"], man["batch_size"] = 2, 4
    items = {"acc": {r: _scores(0.01 * r) for r in (1, 2)}, "loss": {r: _scores() for r in (1, 2)}}
    for r in (1, 2):
        for m, sc in items["loss"][r].items():
            items["loss"][r][m] = {i: v + float(rng.normal(0, 0.01)) for i, v in sc.items()}
    items["acc"] = {r: {m: dict.fromkeys(sc, 0.0) for m, sc in v.items()} for r, v in items["acc"].items()}
    losses = _orders(rng, 24, 3, 2, 2)
    losses["loss"] = rng.normal(2, 0.1, len(losses))
    merged = pd.concat([losses.groupby(["rep", "id"]).loss.mean().reset_index().assign(merge=s)
                        for s in ("avg", "selr")], ignore_index=True)
    t = claims_from_results(items, {"acc": None, "loss": None}, losses, merged, man,
                            {"acc": False, "loss": True})
    assert set(t.claim) == {"a", "a_recency", "b", "c", "d", "e", "f"}
    assert set(t[t.benchmark == "acc"].verdict) == {"not tested"}  # acc at floor
    # the primary family is the accuracy (gsm8k) rows of selr, all untested at floor
    assert set(t[t.family == PRIMARY].benchmark) == {"acc"} and (t[t.family == PRIMARY].family_size == 0).all()
    assert (t[t.benchmark == "loss"].R == 2).all()
    assert {"exploratory: a", "exploratory: f", "exploratory: e"} <= set(t.family)
