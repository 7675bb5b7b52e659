"""Merge engine: exact properties of every strategy, determinism, layout, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_family, make_hf_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ordermerge.cli import main
from ordermerge.merge import REGISTRY, Group, Rng, chunk_rng, merge
from ordermerge.safetensors_io import CheckpointReader, ShardedWriter

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _group(n: int, shape: tuple[int, ...], seed: int, frac_unchanged: float, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    models = []
    for _ in range(n):
        keep = torch.rand(shape, generator=g) < frac_unchanged
        models.append(
            torch.where(keep, base, (base.float() + torch.randn(shape, generator=g)).to(dtype))
        )
    return Group.of("t", base, models)


def _w(n: int, seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed + 1)
    w = (torch.rand(n, generator=g) + 0.05).tolist()
    return [x / sum(w) for x in w]


shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


@SETTINGS
@given(n=st.integers(2, 6), shape=shapes, seed=st.integers(0, 10_000), frac=st.floats(0, 1))
def test_selection_copies_sub_model_values(n, shape, seed, frac):
    g = _group(n, shape, seed, frac)
    out = REGISTRY["parameter_selection"].fn(g, _w(n, seed), chunk_rng(seed, "t")).tensor
    assert out.dtype == g.base.dtype
    bits = out.view(torch.int16)
    matches = torch.zeros(shape, dtype=torch.bool)
    for m in g.models:
        matches |= bits == m.view(torch.int16)  # bit-identical, not merely equal
    assert bool(matches.all())


@SETTINGS
@given(n=st.integers(2, 6), shape=shapes, seed=st.integers(0, 10_000), frac=st.floats(0, 1))
def test_resampling_keeps_base_exactly_where_nothing_changed(n, shape, seed, frac):
    g = _group(n, shape, seed, frac)
    res = REGISTRY["parameter_selection"].fn(
        g, _w(n, seed), chunk_rng(seed, "t"), resample=True
    )
    out = res.tensor
    none_changed = ~g.changed.any(0)
    assert bool((out[none_changed] == g.base[none_changed]).all())
    # elsewhere the value comes from a sub-model that changed it, hence differs from the base
    from_changed = torch.zeros(shape, dtype=torch.bool)
    for m, ch in zip(g.models, g.changed, strict=True):
        from_changed |= ch & (out.view(torch.int16) == m.view(torch.int16))
    assert bool(from_changed[~none_changed].all())
    assert bool((out[~none_changed] != g.base[~none_changed]).all())
    assert int(res.picks.sum()) == int((~none_changed).sum())


@pytest.mark.parametrize("resample", [False, True])
def test_selection_shares_match_weights(resample):
    w = [0.5, 0.3, 0.2]
    n_el = 1_000_000
    g = _group(3, (n_el,), 7, 0.0, torch.float32)  # every element changed in every sub-model
    res = REGISTRY["parameter_selection"].fn(g, w, chunk_rng(1, "big"), resample=resample)
    share = (res.picks.double() / n_el).tolist()
    for s, p in zip(share, w, strict=True):
        # 5 standard deviations of a binomial share: fails by chance with p < 1e-6
        assert abs(s - p) < 5 * math.sqrt(p * (1 - p) / n_el), (share, w)


def test_resampling_shares_renormalise_over_changed_models():
    # sub-model 0 never changes anything: resampling must take every element from 1 and 2 in
    # proportion 0.3 : 0.2 (= 0.6 : 0.4); plain selection still takes half from sub-model 0.
    n_el = 400_000
    g = _group(3, (n_el,), 3, 0.0, torch.float32)
    g.models[0] = g.base.clone()
    g.__dict__.pop("changed", None)
    w = [0.5, 0.3, 0.2]
    res = REGISTRY["parameter_selection"].fn(g, w, chunk_rng(0, "x"), resample=True)
    assert int(res.picks[0]) == 0
    share1 = int(res.picks[1]) / n_el
    assert abs(share1 - 0.6) < 5 * math.sqrt(0.24 / n_el)
    plain = REGISTRY["parameter_selection"].fn(g, w, chunk_rng(0, "x")).picks
    assert abs(int(plain[0]) / n_el - 0.5) < 5 * math.sqrt(0.25 / n_el)


@SETTINGS
@given(n=st.integers(2, 5), shape=shapes, seed=st.integers(0, 10_000))
def test_weighted_average_matches_formula(n, shape, seed):
    g = _group(n, shape, seed, 0.3, torch.float32)
    w = _w(n, seed)
    out = REGISTRY["weighted_average"].fn(g, w, chunk_rng(0, "t")).tensor
    ref = sum(wi * m.double() for wi, m in zip(w, g.models, strict=True))
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)


def test_task_arithmetic_formula():
    g = _group(3, (50, 7), 1, 0.2, torch.float32)
    out = REGISTRY["task_arithmetic"].fn(g, [1.0, 2.0, 0.5], None, **{"lambda": 0.7}).tensor
    ref = g.base.double() + 0.7 * sum(
        wi * (m.double() - g.base.double()) for wi, m in zip([1.0, 2.0, 0.5], g.models, strict=True)
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.1, 0.35, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_matches_peft(density, seed):
    from peft.utils.merge_utils import ties as peft_ties

    g = _group(4, (37, 29), seed, 0.0, torch.float32)
    w = [1.0, 0.5, 2.0, 1.5]
    out = REGISTRY["ties"].fn(g, w, None, density=density, **{"lambda": 1.0}).tensor
    taus = [m - g.base for m in g.models]
    ref = g.base + peft_ties(taus, torch.tensor(w), density)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def _reference_dare(g: Group, w, p, lam, seed, name, ties):
    # An independent reimplementation, drawing the same masks from the same random stream.
    rng = chunk_rng(seed, name)
    taus = []
    masks = []
    for m in g.models:
        keep = torch.from_numpy(rng.int32(tuple(m.shape)).astype("int64") + 2**31 < (1 - p) * 2**32)
        masks.append(keep)
        taus.append((m.double() - g.base.double()) * keep / (1 - p))
    if not ties:
        return g.base.double() + lam * sum(wi * t for wi, t in zip(w, taus, strict=True)), masks
    stack = torch.stack(taus)
    sign = torch.where(stack.sum(0) >= 0, 1.0, -1.0).double()
    agree = torch.sign(stack) == sign
    wt = torch.tensor(w, dtype=torch.float64).view(-1, *[1] * (stack.dim() - 1))
    merged = (stack * wt * agree).sum(0) / agree.sum(0).clamp(min=1)
    return g.base.double() + lam * merged, masks


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_dare_matches_reference_with_same_masks(method, p):
    g = _group(3, (300, 40), 4, 0.0, torch.float32)
    w = [1.0, 0.8, 1.2]
    out = REGISTRY[method].fn(g, w, chunk_rng(9, "w"), drop_rate=p, **{"lambda": 1.0})
    ref, masks = _reference_dare(g, w, p, 1.0, 9, "w", method == "dare_ties")
    torch.testing.assert_close(out.tensor.double(), ref, rtol=1e-5, atol=1e-5)
    kept = torch.stack(masks).double().mean().item()
    n = sum(m.numel() for m in masks)
    assert abs(kept - (1 - p)) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_rerun_is_byte_identical(family, tmp_path, strategy):
    base, models = family
    merge(base, models, tmp_path / "a", strategy, seed=3, progress=False)
    merge(base, models, tmp_path / "b", strategy, seed=3, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    merge(base, models, tmp_path / "c", strategy, seed=4, progress=False)
    if strategy in ("parameter_selection", "dare_linear", "dare_ties"):
        assert (
            _files(tmp_path / "a")["model.safetensors"]
            != _files(tmp_path / "c")["model.safetensors"]
        )


def _reshard(src: Path, dst: Path, max_bytes: int, reverse: bool) -> None:
    dst.mkdir(parents=True)
    with CheckpointReader(src) as r:
        names = sorted(r.names(), reverse=reverse)
        specs = [(n, r.infos[n].dtype, r.infos[n].shape) for n in names]
        w = ShardedWriter(dst, specs, max_bytes)
        for n in names:
            w.write(n, r.get(n).clone())
        w.close()
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_reshard_and_tensor_order_do_not_change_values(family, tmp_path):
    base, models = family
    rb = tmp_path / "rs" / "base"
    _reshard(base, rb, 3000, reverse=True)
    rms = []
    for i, m in enumerate(models):
        _reshard(m, tmp_path / "rs" / f"m{i}", 5000 + 1000 * i, reverse=bool(i % 2))
        rms.append(tmp_path / "rs" / f"m{i}")
    assert (rb / "model.safetensors.index.json").exists()
    merge(base, models, tmp_path / "a", "parameter_selection", {"resample": True}, progress=False)
    merge(rb, rms, tmp_path / "b", "parameter_selection", {"resample": True}, progress=False)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (
        tmp_path / "b/model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("strategy", ["weighted_average", "task_arithmetic", "ties"])
def test_chunked_merge_equals_the_whole_tensor_formula(tmp_path, monkeypatch, strategy):
    # 997-element chunks split every tensor of this family unevenly; a deterministic strategy
    # must give exactly what its function gives on the whole tensor
    from ordermerge.merge import engine

    base, models = make_family(tmp_path / "in", shapes={"a": (61, 53), "b": (997,), "c": (5,)})
    monkeypatch.setattr(engine, "CHUNK", 997)
    merge(base, models, tmp_path / "o", strategy, progress=False)
    got = load_file(str(tmp_path / "o/model.safetensors"))
    b = load_file(str(base / "model.safetensors"))
    ms = [load_file(str(m / "model.safetensors")) for m in models]
    for name, t in got.items():
        g = Group.of(name, b[name], [m[name] for m in ms])
        w = [1 / 3] * 3 if strategy == "weighted_average" else [1.0] * 3
        params = {"density": 0.2, "lambda": 1.0} if strategy == "ties" else (
            {"lambda": 1.0} if strategy == "task_arithmetic" else {})
        want = REGISTRY[strategy].fn(g, w, None, **params).tensor.to(t.dtype)
        assert torch.equal(t, want), name


@pytest.mark.parametrize("strategy", ["parameter_selection", "dare_ties"])
def test_worker_count_and_chunk_seams_do_not_change_a_random_merge(tmp_path, monkeypatch, strategy):
    from ordermerge.merge import engine

    base, models = make_family(tmp_path / "in", shapes={"a": (61, 53), "b": (997,)})
    monkeypatch.setattr(engine, "CHUNK", 500)
    params = {"resample": True} if strategy == "parameter_selection" else {}
    outs = []
    for workers in (1, 3):
        monkeypatch.setattr(engine, "_workers", lambda w=workers: w)
        merge(base, models, tmp_path / f"w{workers}", strategy, params, seed=2, progress=False)
        outs.append(_files(tmp_path / f"w{workers}"))
    assert outs[0] == outs[1]
    if strategy == "parameter_selection":  # resampling's guarantee holds across chunk seams
        got = load_file(str(tmp_path / "w1/model.safetensors"))
        b = load_file(str(base / "model.safetensors"))
        ms = [load_file(str(m / "model.safetensors")) for m in models]
        for name, t in got.items():
            changed = torch.stack([m[name] != b[name] for m in ms])
            bits = t.view(torch.int16)
            from_changed = torch.zeros(t.shape, dtype=torch.bool)
            for m, ch in zip(ms, changed, strict=True):
                from_changed |= ch & (bits == m[name].view(torch.int16))
            assert bool((from_changed == changed.any(0)).all()), name
            assert torch.equal(t[~changed.any(0)], b[name][~changed.any(0)])


class _TopOfRange(Rng):
    """Every draw at the very top of the range: u = 1 − 2^-24, x = 2^31 − 1."""

    def int32(self, shape):
        return np.full(shape, 2**31 - 1, dtype=np.int32)


@SETTINGS
@given(n=st.integers(2, 6), seed=st.integers(0, 10_000), frac=st.floats(0, 0.9))
def test_a_draw_at_the_top_of_the_range_takes_the_last_model_with_mass(n, seed, frac):
    # float32 rounding of u·S must never push a draw past the last sub-model that changed d
    g = _group(n, (2000,), seed, frac)
    w = _w(n, seed)
    res = REGISTRY["parameter_selection"].fn(g, w, _TopOfRange(0), resample=True)
    changed = g.changed
    last = torch.where(changed.any(0), n - 1 - changed.flip(0).int().argmax(0), n)
    want = g.stack.view(torch.int16).gather(0, last[None])[0]
    assert torch.equal(res.tensor.view(torch.int16), want)
    plain = REGISTRY["parameter_selection"].fn(g, w, _TopOfRange(0)).tensor
    assert torch.equal(plain.view(torch.int16), g.models[-1].view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(("numel", "density"), [(1, 0.5), (5, 0.2), (1000, 0.3), (3 << 20, 0.2)])
def test_trim_threshold_is_the_exact_kth_largest_magnitude(dtype, numel, density):
    from ordermerge.merge.strategies import trim_threshold

    g = torch.Generator().manual_seed(numel)
    b = torch.randn(numel, generator=g).to(dtype)
    m = (b.double() + 0.1 * torch.randn(numel, generator=g)).to(dtype)
    m[: numel // 3] = b[: numel // 3]  # ties at zero, as bf16 fine-tunes have
    before = m.clone()
    k = int(density * numel)
    mag = (m - b).abs() if dtype == torch.float64 else (m.float() - b.float()).abs()
    want = float(mag.kthvalue(numel - k + 1).values) if k else float("inf")
    assert trim_threshold(b, m, density) == want
    assert torch.equal(m, before)  # the inputs are left alone


def test_output_shards_and_metadata(family, tmp_path):
    base, models = family
    meta = merge(
        base,
        models,
        tmp_path / "o",
        "parameter_selection",
        {"resample": True},
        weights=[2, 1, 1],
        seed=5,
        max_shard_size=4000,
        progress=False,
    )
    out = tmp_path / "o"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    saved = json.loads((out / "merge.json").read_text())
    assert saved["method"] == "parameter_selection" and saved["parameters"] == {"resample": True}
    assert saved["name"] is None  # the pipeline passes the merge's name
    assert saved["weights"] == [0.5, 0.25, 0.25] and saved["seed"] == 5
    assert abs(sum(saved["selection_share"]) - 1) < 1e-9
    assert meta["summary"]["tensors"] == 4
    # zero-task-vector fraction: the fixture leaves ~40% of each sub-model at the base value
    for entry in saved["task_vector_zero"]:
        assert 0.3 < entry["zero_fraction"] < 0.5
        assert set(entry["zero_fraction_per_tensor"]) == {"a.weight", "b.bias", "c.norm", "emb"}
    ins = saved["models"][0]
    assert len(ins["config_sha256"]) == 64 and len(ins["index_sha256"]) == 64
    assert not list(tmp_path.glob(".o.partial*"))


def test_dtype_option_casts_and_updates_config(family, tmp_path):
    base, models = family
    merge(base, models, tmp_path / "o", "weighted_average", dtype="float32", progress=False)
    t = load_file(str(tmp_path / "o/model.safetensors"))
    assert all(v.dtype == torch.float32 for v in t.values())
    assert json.loads((tmp_path / "o/config.json").read_text())["dtype"] == "float32"


def test_merged_hf_model_loads_and_gives_finite_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    base, models = make_hf_family(tmp_path / "hf")
    for strategy in ("parameter_selection", "ties"):
        merge(base, models, tmp_path / strategy, strategy, progress=False)
        m = AutoModelForCausalLM.from_pretrained(tmp_path / strategy)
        logits = m(torch.tensor([[1, 2, 3, 4]])).logits
        assert bool(torch.isfinite(logits).all())
        assert "lm_head.weight" not in load_file(str(tmp_path / strategy / "model.safetensors"))


# ------------------------------------------------------------------------------ bad input
def _cli(capsys, args: list[str]) -> str:
    code = main(["-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err
    return err


def _run_bad(capsys, tmp_path, base, models, extra=(), expect=""):
    out = tmp_path / "out"
    err = _cli(
        capsys,
        [
            "merge",
            "--base",
            str(base),
            "--models",
            *map(str, models),
            "--out",
            str(out),
            "--method",
            "ties",
            *extra,
        ],
    )
    assert expect in err, err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    return err


def test_bad_inputs(capsys, tmp_path):
    base, models = make_family(tmp_path / "in")
    r = _run_bad
    r(capsys, tmp_path, tmp_path / "nope", models, expect="nope: model folder does not exist")
    r(capsys, tmp_path, base, [models[0]], expect="at least 2 sub-models")
    r(capsys, tmp_path, base, models, ["--weights", "1", "2"], expect="2 weights for 3 sub-models")
    r(capsys, tmp_path, base, models, ["--weights", "1", "-2", "1"], expect="positive")
    r(capsys, tmp_path, base, models, ["--config", '{"density": 0}'],
      expect="--config: method ties: parameter density: 0 is less than or equal to the minimum of 0")
    r(capsys, tmp_path, base, models, ["--config", '{"density": 1.5}'],
      expect="parameter density: 1.5 is greater than the maximum of 1")
    r(capsys, tmp_path, base, models, ["--config", '{"density": "0.5"}'],
      expect="parameter density: '0.5' is not of type 'number'")
    r(capsys, tmp_path, base, models, ["--config", "[0.5]"], expect="--config: expected a JSON object")
    r(
        capsys,
        tmp_path,
        base,
        models,
        ["--config", '{"densty": 0.5}'],
        expect="unknown parameter 'densty'",
    )
    err = _cli(
        capsys,
        [
            "merge",
            "--base",
            str(base),
            "--models",
            *map(str, models),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "dare_ties",
            "--config",
            '{"drop_rate": 1}',
        ],
    )
    assert "drop_rate: 1 is greater than or equal to the maximum of 1" in err
    err = _cli(
        capsys,
        [
            "merge",
            "--base",
            str(base),
            "--models",
            *map(str, models),
            "--out",
            str(tmp_path / "o"),
            "--method",
            "ties_merging",
        ],
    )
    assert "argument --method: invalid choice: 'ties_merging'" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    r(capsys, tmp_path, base, [models[0], empty], expect="empty: no model.safetensors")


def _mutate(folder: Path, fn) -> None:
    t = load_file(str(folder / "model.safetensors"))
    fn(t)
    save_file(t, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "case,mutation,expect",
    [
        ("name", lambda t: t.__setitem__("z.extra", torch.zeros(2)), "tensor z.extra"),
        ("missing", lambda t: t.pop("b.bias"), "tensor b.bias is missing"),
        (
            "shape",
            lambda t: t.__setitem__("b.bias", torch.zeros(47, dtype=torch.bfloat16)),
            "tensor b.bias has shape [47]",
        ),
        (
            "dtype",
            lambda t: t.__setitem__("c.norm", t["c.norm"].float()),
            "tensor c.norm has dtype",
        ),
        (
            "nan",
            lambda t: t["a.weight"].__setitem__((0, 0), float("nan")),
            "tensor a.weight contains NaN or Inf",
        ),
        ("inf", lambda t: t["emb"].__setitem__((3, 3), float("inf")), "tensor emb contains NaN"),
    ],
)
def test_mismatched_inputs(capsys, tmp_path, case, mutation, expect):
    base, models = make_family(tmp_path / "in")
    _mutate(models[1], mutation)
    err = _run_bad(capsys, tmp_path, base, models, expect=expect)
    assert str(models[1]) in err


def test_truncated_shard_and_missing_shard(capsys, tmp_path):
    base, models = make_family(tmp_path / "in")
    f = models[0] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _run_bad(capsys, tmp_path, base, models, expect="truncated")
    base2, models2 = make_family(tmp_path / "in2")
    _reshard(models2[0], tmp_path / "sharded", 3000, reverse=False)
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    shards[-1].unlink()
    _run_bad(
        capsys, tmp_path, base2, [tmp_path / "sharded", models2[1]], expect="which does not exist"
    )


def test_refuses_sub_model_from_another_base_or_tokenizer(capsys, tmp_path):
    base, models = make_family(tmp_path / "in")
    (base / "ordermerge_base.json").write_text(json.dumps({"weights_sha256": "a" * 64}))
    for m in models:
        (m / "ordermerge_sft.json").write_text(json.dumps({"base_weights_sha256": "a" * 64}))
    (models[2] / "ordermerge_sft.json").write_text(json.dumps({"base_weights_sha256": "b" * 64}))
    err = _run_bad(capsys, tmp_path, base, models, expect="was fine-tuned from another base")
    assert str(models[2]) in err
    (models[2] / "ordermerge_sft.json").write_text(json.dumps({"base_weights_sha256": "a" * 64}))
    for i, m in enumerate(models):
        (m / "tokenizer.json").write_text("{}" if i < 2 else '{"x": 1}')
    _run_bad(capsys, tmp_path, base, models, expect="tokenizer mismatch")


def _bf16_ties_family(seed: int, shape=(301, 23), n=3):
    # bf16 task vectors quantised to a few magnitudes: many entries tie at any cut
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(torch.bfloat16)
    models = []
    for _ in range(n):
        step = torch.randint(-3, 4, shape, generator=g).to(torch.float32) * 2**-6
        models.append((base.float() + step).to(torch.bfloat16))
    return Group.of("w", base, models)


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.9])
def test_ties_keeps_exactly_k_entries_with_bf16_ties(density):
    from ordermerge.merge.strategies import trim_plan

    g = _bf16_ties_family(int(density * 10))
    numel = g.base.numel()
    k = int(density * numel)
    for m in g.models:
        for chunk in (numel, 997, 64):
            plan = trim_plan(g.base, m, density, chunk=chunk)
            mag = (m.float() - g.base.float()).abs().flatten()
            cut = plan[0][0]
            assert int((mag > cut).sum()) + sum(b for _, b in plan) == k
            # the budget goes to the lowest flat indices, whatever the chunk size
            tied = torch.nonzero(mag == cut).flatten()
            kept = [i for c, (_, b) in enumerate(plan) for i in tied[(tied >= c * chunk) & (tied < (c + 1) * chunk)][:b].tolist()]
            assert kept == tied[: k - int((mag > cut).sum())].tolist()


def test_ties_is_independent_of_chunking_and_threads_with_bf16_ties(tmp_path, monkeypatch):
    from ordermerge.merge import engine

    g = _bf16_ties_family(7, shape=(257, 31))
    folders = []
    for i, t in enumerate([g.base, *g.models]):
        f = tmp_path / f"m{i}"
        f.mkdir()
        save_file({"w": t.contiguous()}, str(f / "model.safetensors"))
        folders.append(f)
    outs = []
    for chunk, threads in ((1 << 18, 1), (997, 3), (100, 2)):
        monkeypatch.setattr(engine, "CHUNK", chunk)
        monkeypatch.setattr(engine, "_workers", lambda threads=threads: threads)
        out = tmp_path / f"o{chunk}"
        merge(folders[0], folders[1:], out, "ties", {"density": 0.3}, progress=False)
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("density", [0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_ties_matches_peft_on_bf16_inputs_with_many_ties(density, seed):
    """PEFT keeps exactly k by torch.topk, whose order among equal magnitudes is unspecified:
    the kept counts must agree, and so must every result no tie at a cut can touch."""
    from peft.utils.merge_utils import magnitude_based_pruning
    from peft.utils.merge_utils import ties as peft_ties

    g = _bf16_ties_family(seed)
    w = [1.0, 0.5, 2.0]
    out = REGISTRY["ties"].fn(g, w, None, density=density, **{"lambda": 1.0}).tensor
    taus = [m.float() - g.base.float() for m in g.models]
    ref = g.base.float() + peft_ties(taus, torch.tensor(w), density)
    k = int(density * g.base.numel())
    untouched = torch.ones(g.base.shape, dtype=torch.bool)
    for t in taus:
        assert int((magnitude_based_pruning(t, density) != 0).sum()) <= k
        cut = trim_threshold_of(t, k)
        untouched &= t.abs() != cut
    assert untouched.float().mean() > 0.3  # the comparison covers a good share of entries
    assert torch.equal(out[untouched], ref[untouched])


def trim_threshold_of(t: torch.Tensor, k: int) -> float:
    return float(t.abs().flatten().kthvalue(t.numel() - k + 1).values)


def test_ties_kept_counts_equal_peft_exactly():
    from peft.utils.merge_utils import magnitude_based_pruning

    from ordermerge.merge.strategies import trim_plan

    g = _bf16_ties_family(3)
    for density in (0.1, 0.3, 0.5):
        for m in g.models:
            t = m.float() - g.base.float()
            peft_mask = torch.zeros(t.numel(), dtype=torch.bool)
            peft_mask[torch.topk(t.abs().flatten(), int(density * t.numel())).indices] = True
            cut, budget = trim_plan(g.base, m, density, chunk=t.numel())[0]
            ours = int((t.abs() > cut).sum()) + budget
            assert ours == int(peft_mask.sum()) == int(density * t.numel())
            assert int((magnitude_based_pruning(t, density) != 0).sum()) <= ours  # zeros drop out
