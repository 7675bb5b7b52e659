"""The claims table: the verdict rule, the paired effects, the position regression, on
constructed inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ordermerge.claims import (
    ALPHA,
    Effect,
    claims_table,
    comparisons,
    paired,
    position_effects,
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
    from scipy import stats

    a = {"x": 1.0, "y": 0.0, "z": 1.0, "w": 1.0}
    b = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}
    eff = paired(a, b, lower_is_better=False)
    ref = stats.ttest_rel([1, 0, 1, 1], [0, 0, 0, 1])
    assert eff.estimate == 0.5 and eff.p == pytest.approx(ref.pvalue)
    lo, hi = eff.ci(0.95)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_position_regression_recovers_known_slopes_and_matches_dummy_ols():
    """loss = sample effect + b1·p1 + bL·pL + noise over 5 orders: the fit recovers b1 and bL
    and equals OLS with one dummy per sample."""
    rng = np.random.default_rng(1)
    n, orders, b1, bl = 40, 5, -0.3, -0.5
    effect = rng.normal(0, 1, n)
    rows = []
    for o in range(1, orders + 1):
        p1, pl = rng.permutation(n), rng.permutation(n)
        for i in range(n):
            y = effect[i] + b1 * p1[i] / (n - 1) + bl * pl[i] / (n - 1) + rng.normal(0, 0.05)
            rows.append({"id": f"s{i}", "order": o, "loss": y, "pos_epoch1": p1[i], "pos_epoch3": pl[i]})
    d = pd.DataFrame(rows)
    first, last = position_effects(d, epochs=3)
    assert first.estimate == pytest.approx(-b1, abs=0.05) and last.estimate == pytest.approx(-bl, abs=0.05)
    assert first.df == n - 1 and first.n == n * orders
    x = np.column_stack([d.pos_epoch1 / (n - 1), d.pos_epoch3 / (n - 1), pd.get_dummies(d["id"]).to_numpy(float)])
    beta = np.linalg.lstsq(x, d.loss.to_numpy(), rcond=None)[0]
    assert (-first.estimate, -last.estimate) == pytest.approx((beta[0], beta[1]), abs=1e-9)
    # CIs cover the truth and exclude zero: both shown
    assert verdict(*first.ci(0.99)) == "shown" and verdict(*last.ci(0.99)) == "shown"


def test_one_epoch_has_no_separate_recency_term():
    d = pd.DataFrame({"id": ["a", "b", "a", "b", "a", "b"], "order": [1, 1, 2, 2, 3, 3],
                      "loss": [1.0, 2.0, 1.5, 1.8, 1.2, 2.1], "pos_epoch1": [0, 1, 1, 0, 0, 1]})
    first, last = position_effects(d, epochs=1)
    assert last is None and first.df == 1


def _manifest():
    models = [{"id": "base", "kind": "base"}] + [{"id": f"order{k}", "kind": "order", "k": k} for k in (1, 2, 3)]
    for s, method, seeds in (("avg", "weighted_average", [0]), ("sel", "parameter_selection", [0, 1]),
                             ("selr", "parameter_selection", [0, 1])):
        for m in (2, 3):
            for seed in seeds:
                models.append({"id": f"{s}_n{m}_s{seed}", "kind": "merge", "merge": s, "method": method,
                               "m": m, "seed": seed})
    return {"n_orders": 3, "models": models, "ablation": ["selr"],
            "merge_specs": {"avg": {"method": "weighted_average", "params": {}},
                            "sel": {"method": "parameter_selection", "params": {"resample": False}},
                            "selr": {"method": "parameter_selection", "params": {"resample": True}}}}


def test_comparisons_use_the_mean_single_model_and_average_merge_seeds():
    man = _manifest()
    items = [f"i{j}" for j in range(10)]
    score = {"order1": 0.2, "order2": 0.4, "order3": 0.6, "avg_n3_s0": 0.5, "sel_n3_s0": 0.5,
             "sel_n3_s1": 0.7, "selr_n3_s0": 0.9, "selr_n3_s1": 0.7, "selr_n2_s0": 0.1,
             "selr_n2_s1": 0.3, "base": 0.0, "avg_n2_s0": 0.0, "sel_n2_s0": 0.0, "sel_n2_s1": 0.0}
    scores = {m: {i: v + 0.01 * j for j, i in enumerate(items)} for m, v in score.items()}
    rows = {(r["claim"], r["comparison"]): r for r in comparisons({"acc": scores}, man, {"acc": False})}
    assert set(rows) == {("b", "avg − mean single"), ("b", "sel − mean single"), ("b", "selr − mean single"),
                         ("c", "sel − avg"), ("c", "selr − avg"), ("d", "selr − sel"), ("e", "selr: m=3 − m=2")}
    # mean single = 0.4 (not the best single, 0.6); seeds averaged per item
    assert rows[("b", "avg − mean single")]["estimate"] == pytest.approx(0.1)
    assert rows[("b", "sel − mean single")]["estimate"] == pytest.approx(0.2)
    assert rows[("d", "selr − sel")]["estimate"] == pytest.approx(0.2)
    assert rows[("e", "selr: m=3 − m=2")]["estimate"] == pytest.approx(0.6)
    # a loss: lower is better, so the same numbers flip sign
    loss = comparisons({"loss": scores}, man, {"loss": True})
    assert next(r for r in loss if r["comparison"] == "selr − sel")["estimate"] == pytest.approx(-0.2)


def test_claims_table_corrects_for_the_family_and_names_floor_benchmarks():
    rows = [{"claim": "b", "benchmark": "acc", "comparison": f"m{k} − mean single", "n": 30,
             "estimate": 0.1, "se": 0.04, "df": 29, "p": 0.0} for k in range(10)]
    t = claims_table([], [*rows, {**rows[0], "benchmark": "gsm"}], floor={"gsm"})
    level = 1 - ALPHA / 10  # the floor benchmark's row is not counted
    assert t.ci_level.iloc[0] == pytest.approx(level)
    # 0.1 ± t(0.9975, 29)·0.04 = 0.1 ± 0.121: straddles zero after the correction...
    assert set(t.verdict) == {"not shown"}
    assert list(t.note) == [""] * 10 + ["benchmark at floor: every model scores 0"]
    # ...though its uncorrected 95% CI would not
    assert verdict(*Effect(0.1, 0.04, 29, 30).ci(0.95)) == "shown"
    assert list(t.columns[:4]) == ["claim", "statement", "benchmark", "comparison"]


def test_detectable_effect_is_found_with_the_stated_power():
    """A true effect of exactly `detectable` is found (CI above 0) in about 80% of samples."""
    rng = np.random.default_rng(2)
    n, sd, level = 20, 1.0, 0.99
    mde = Effect(0.0, sd / math.sqrt(n), n - 1, n).detectable(level)
    hits = 0
    for _ in range(2000):
        d = rng.normal(mde, sd, n)
        eff = Effect(float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), n - 1, n)
        hits += verdict(*eff.ci(level)) == "shown"
    assert 0.72 < hits / 2000 < 0.85  # the t approximation with the SE estimated per sample


def test_readme_claims_rewrites_only_its_block(tmp_path, capsys):
    from ordermerge.claims import row
    from ordermerge.cli import README_END, README_START, main

    t = claims_table([row("a", "train (per-sample loss)", "−slope on epoch-1 position", Effect(-0.04, 0.0156, 20, 63))], [])
    t.to_csv(tmp_path / "claims.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    assert main(["readme-claims", "--claims", str(tmp_path / "claims.csv"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "| a: samples early in epoch 1 end with higher loss | train (per-sample loss) |" in text
    assert "**opposite**" in text and "95.00% CI" in text
    # without its markers the README is left alone, with one line saying why
    readme.write_text("# no markers\n")
    assert main(["readme-claims", "--claims", str(tmp_path / "claims.csv"), "--readme", str(readme)]) == 2
    assert "expected one" in capsys.readouterr().err and readme.read_text() == "# no markers\n"


def test_early_gain_averages_per_sample_over_the_orders_that_saw_it_early():
    from ordermerge.claims import early_gain

    # 6 samples, 2 orders: s0, s1 early in order 1; s0, s5 early in order 2 (first third = 2)
    rows = []
    for o, perm in ((1, ["s0", "s1", "s2", "s3", "s4", "s5"]), (2, ["s5", "s0", "s4", "s3", "s2", "s1"])):
        for pos, i in enumerate(perm):
            rows.append({"id": i, "order": o, "pos_epoch1": pos, "loss": 2.0 + 0.1 * o + (0.5 if pos < 2 else 0)})
    orders = pd.DataFrame(rows)
    merged = pd.DataFrame({"id": [f"s{i}" for i in range(6)], "loss": [2.0] * 6})
    eff = early_gain(orders, merged)
    # s0: early in both: (0.6 + 0.7) / 2; s1: 0.6 (order 1); s5: 0.7 (order 2)
    assert eff.n == 3 and eff.df == 2
    assert eff.estimate == pytest.approx((0.65 + 0.6 + 0.7) / 3)
