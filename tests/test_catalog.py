"""Adding a merge method or a benchmark touches two places: its code and its catalogue entry.
A toy of each, registered through that path only, runs through config validation and the CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_family

from ordermerge import OrdermergeError, catalog
from ordermerge.catalog import Benchmark, Method, Param
from ordermerge.cli import main
from ordermerge.config import validate_config
from ordermerge.merge.strategies import REGISTRY, Merged, register

TINY = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())


@pytest.fixture
def toy_method(monkeypatch):
    """θ = θ_last + 0·… : takes the last sub-model, scaled by a parameter `keep` in (0, 1]."""
    monkeypatch.setitem(catalog.METHODS, "take_last", Method(
        "θ = keep · θ_N", {"keep": Param(1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                        "Scale of the last sub-model.")}, normalise_weights=False))
    monkeypatch.delitem(REGISTRY, "take_last", raising=False)

    @register("take_last")
    def take_last(g, w, rng, keep: float) -> Merged:
        return Merged(g.models[-1].float() * keep)

    yield "take_last"
    REGISTRY.pop("take_last", None)


def test_a_toy_method_through_config_and_cli(toy_method, tmp_path, capsys):
    cfg = {**TINY, "merges": {"mine": {"method": toy_method, "params": {"keep": 0.5}}},
           "ablation": {"sizes": [2], "merges": ["mine"]}}
    validated = validate_config(cfg)
    assert validated["merges"]["mine"]["params"] == {"keep": 0.5}
    with pytest.raises(OrdermergeError, match=r"merges.mine.params.keep: 2 is greater than the maximum of 1"):
        validate_config({**cfg, "merges": {"mine": {"method": toy_method, "params": {"keep": 2}}}})
    base, models = make_family(tmp_path / "in", dtype=__import__("torch").float32)
    out = tmp_path / "o"
    assert main(["-q", "merge", "--base", str(base), "--models", *map(str, models), "--method",
                 toy_method, "--config", '{"keep": 0.5}', "--name", "mine", "--out", str(out)]) == 0
    meta = json.loads((out / "merge.json").read_text())
    assert (meta["method"], meta["name"], meta["parameters"]) == (toy_method, "mine", {"keep": 0.5})
    from safetensors.torch import load_file

    got, last = load_file(str(out / "model.safetensors")), load_file(str(models[-1] / "model.safetensors"))
    assert all((got[k] == last[k] * 0.5).all() for k in got)
    assert main(["-q", "methods"]) == 0
    assert "θ = keep · θ_N" in capsys.readouterr().out


def test_registering_code_without_a_catalogue_entry_is_refused():
    with pytest.raises(KeyError, match=r"no entry in ordermerge\.catalog\.METHODS"):
        register("not_in_catalogue")


@pytest.fixture
def toy_benchmark(monkeypatch):
    """'prompt_length': the mean prompt length in characters of a test split (lower is better)."""
    module = types.ModuleType("toy_prompt_length")

    def run(model_dir, loaded, cfg, prompt, progress):
        from ordermerge.jsonl import read_jsonl

        rows = read_jsonl(cfg["data"])[: cfg.get("limit")]
        return [{"id": r["id"], "prompt": r["prompt"], "completion": None, "reference": None,
                 "score": float(len(r["prompt"]) * cfg["scale"])} for r in rows], {}

    module.run = run
    monkeypatch.setitem(sys.modules, "toy_prompt_length", module)
    monkeypatch.setitem(catalog.BENCHMARKS, "prompt_length", Benchmark(
        "toy_prompt_length", "chars", True,
        {"data": catalog.DATA, "limit": catalog.LIMIT,
         "scale": Param(1.0, {"type": "number"}, "Multiplier.")},
        reads_split=True, loads_model=False))
    return "prompt_length"


def test_a_toy_benchmark_through_config_and_cli(toy_benchmark, tiny_base, tiny_data, tmp_path):
    cfg = {**TINY, "benchmarks": {"len": {"benchmark": toy_benchmark, "settings": {"scale": 2.0}}}}
    assert validate_config(cfg)["benchmarks"]["len"]["settings"] == {"scale": 2.0}
    with pytest.raises(OrdermergeError, match=r"benchmarks.len.settings.scale: 'x' is not of type 'number'"):
        validate_config({**cfg, "benchmarks": {"len": {"benchmark": toy_benchmark,
                                                        "settings": {"scale": "x"}}}})
    out = tmp_path / "ev"
    settings = {"data": str(tiny_data / "test_id.jsonl"), "scale": 2.0}
    assert main(["-q", "evaluate", "--model", str(tiny_base), "--benchmark", toy_benchmark,
                 "--config", json.dumps(settings), "--out-dir", str(out)]) == 0
    res = json.loads((out / f"{toy_benchmark}.json").read_text())
    rows = [json.loads(x) for x in (tiny_data / "test_id.jsonl").read_text().splitlines()]
    assert res["metric"] == "chars" and res["n"] == len(rows)
    assert res["value"] == pytest.approx(2.0 * sum(len(r["prompt"]) for r in rows) / len(rows))
    assert Path(out / f"{toy_benchmark}.items.jsonl").exists()
