"""Malformed configs are refused before any job with one line naming the key; schema and code
agree on every key."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from conftest import ROOT

from ordermerge import OrdermergeError
from ordermerge.catalog import BENCHMARKS, DTYPES, METHODS
from ordermerge.cli import README_END, README_START
from ordermerge.config import SCHEMA, load_config, load_schema, validate_config

TINY = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
E = ("experiments", "tiny")


def setp(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        d = c
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return mutate


def rename_experiment(c: dict) -> None:
    c["experiments"]["my-exp"] = c["experiments"].pop("tiny")


def add_merge(name: str, spec: dict) -> Callable[[dict], None]:
    return lambda c: c["merges"].__setitem__(name, spec)


def set_data(**kv: Any) -> Callable[[dict], None]:
    return lambda c: c["experiments"]["tiny"]["data"].update(kv)


def alpaca_without_ood(c: dict) -> None:
    c["experiments"]["tiny"]["data"].update(format="alpaca", path="tatsu-lab/alpaca")
    del c["benchmarks"]["loss_ood"]


# (case, mutation of the tiny config, the message's exact start)
CASES = [
    ("results is a number", setp(("results",), 3), "config key results: 3 is not of type 'string'"),
    ("results escapes the working directory", setp(("results",), "../elsewhere"),
     "config key results: '../elsewhere' leaves the working directory through '..' (give an "
     "absolute path for a folder outside it)"),
    ("results breaks wildcards", setp(("results",), "/scratch/{user} runs"),
     "config key results: '/scratch/{user} runs' has ' ' '{' '}', which workflow paths cannot "
     "hold (use letters, digits, _ . - and /)"),
    ("results is empty", setp(("results",), ""),
     "config key results: empty (a folder: relative to the working directory, or absolute)"),
    ("unknown top-level key", setp(("reslts",), "x"), "config key (top level): unknown key ('reslts' was unexpected)"),
    ("unknown experiment key", setp((*E, "sfft"), {}), "config key experiments.tiny: unknown key ('sfft' was unexpected)"),
    ("unknown SFT key", setp((*E, "sft", "learning_rate"), 1e-4),
     "config key experiments.tiny.sft: unknown key ('learning_rate' was unexpected)"),
    ("no experiments", setp(("experiments",), {}), "config key experiments: {} should be non-empty"),
    ("experiments is a list", setp(("experiments",), ["tiny"]), "config key experiments: ['tiny'] is not of type 'object'"),
    ("experiment name breaks wildcards", rename_experiment, "config key experiments: 'my-exp' does not match"),
    ("zero orders", setp((*E, "orders", "n"), 0), "config key experiments.tiny.orders.n: 0 is less than the minimum of 2"),
    ("negative orders", setp((*E, "orders", "n"), -3), "config key experiments.tiny.orders.n: -3 is less than the minimum of 2"),
    ("orders as a word", setp((*E, "orders", "n"), "three"), "config key experiments.tiny.orders.n: 'three' is not of type 'integer'"),
    ("fractional orders", setp((*E, "orders", "n"), 3.5), "config key experiments.tiny.orders.n: 3.5 is not of type 'integer'"),
    ("zero epochs", setp((*E, "orders", "epochs"), 0), "config key experiments.tiny.orders.epochs: 0 is less than the minimum of 1"),
    ("unknown order mode", setp((*E, "orders", "mode"), "random"), "config key experiments.tiny.orders.mode: 'random' is not one of"),
    ("zero learning rate", setp((*E, "sft", "lr"), 0), "config key experiments.tiny.sft.lr: 0 is less than or equal to the minimum of 0"),
    ("learning rate as text", setp((*E, "sft", "lr"), "1e-3x"), "config key experiments.tiny.sft.lr: '1e-3x' is not of type 'number'"),
    ("zero batch size", setp((*E, "sft", "batch_size"), 0), "config key experiments.tiny.sft.batch_size: 0 is less than the minimum of 1"),
    ("misspelled schedule", setp((*E, "sft", "schedule"), "cosin"), "config key experiments.tiny.sft.schedule: 'cosin' is not one of"),
    ("zero training samples", setp((*E, "data", "train_size"), 0),
     "config key experiments.tiny.data.train_size: 0 is less than the minimum of 1"),
    ("unknown data format", setp((*E, "data", "format"), "csv"), "config key experiments.tiny.data.format: 'csv' is not one of"),
    ("missing dataset file", set_data(format="alpaca", path="data/missing.jsonl"),
     "config key experiments.tiny.data.path: file data/missing.jsonl does not exist"),
    ("dataset path missing", set_data(format="alpaca"), "config key experiments.tiny.data.path: required for format alpaca"),
    ("unknown base dtype", setp((*E, "base", "dtype"), "fp8"), "config key experiments.tiny.base.dtype: 'fp8' is not one of"),
    ("misspelled strategy", setp(("merges", "ties", "method"), "tie"), "config key merges.ties.method: 'tie' is not one of"),
    ("misspelled selection", setp(("merges", "selection", "method"), "parameter_selections"),
     "config key merges.selection.method: 'parameter_selections' is not one of"),
    ("misspelled merge parameter", setp(("merges", "ties", "params"), {"densty": 0.5}),
     "config key merges.ties.params: unknown key ('densty' was unexpected)"),
    ("parameter of another method", setp(("merges", "ties", "params"), {"resample": True}),
     "config key merges.ties.params: method ties: unknown parameter 'resample' (accepted: density, lambda)"),
    ("resample as text", setp(("merges", "selection", "params"), {"resample": "yes"}),
     "config key merges.selection.params.resample: 'yes' is not of type 'boolean'"),
    ("TIES density 1.5", setp(("merges", "ties", "params"), {"density": 1.5}),
     "config key merges.ties.params.density: 1.5 is greater than the maximum of 1"),
    ("DARE drop rate 1", add_merge("dare", {"method": "dare_ties", "params": {"drop_rate": 1.0}}),
     "config key merges.dare.params.drop_rate: 1.0 is greater than or equal to the maximum of 1"),
    ("negative DARE drop rate", add_merge("dare", {"method": "dare_linear", "params": {"drop_rate": -0.1}}),
     "config key merges.dare.params.drop_rate: -0.1 is less than the minimum of 0"),
    ("weights of the wrong length", setp(("merges", "average", "weights"), [0.5, 0.5]),
     "config key merges.average.weights: 2 weights for 3 orders (experiments.tiny.orders.n)"),
    ("negative weight", setp(("merges", "average", "weights"), [1, -1, 1]),
     "config key merges.average.weights.1: -1 is less than or equal to the minimum of 0"),
    ("no merges", setp(("merges",), {}), "config key merges: {} should be non-empty"),
    ("merge name breaks wildcards", add_merge("my-merge", {"method": "ties"}), "config key merges: 'my-merge' does not match"),
    ("duplicate merge seeds", setp(("merge_seeds",), [0, 0]), "config key merge_seeds: [0, 0] has non-unique elements"),
    ("no merge seeds", setp(("merge_seeds",), []), "config key merge_seeds: [] should be non-empty"),
    ("duplicate ablation sizes", setp(("ablation", "sizes"), [2, 2]), "config key ablation.sizes: [2, 2] has non-unique elements"),
    ("ablation size = N", setp(("ablation", "sizes"), [3]), "config key ablation.sizes: 3 must be below experiments.tiny.orders.n = 3"),
    ("unknown ablation merge", setp(("ablation", "merges"), ["selection_resampl"]),
     "config key ablation.merges: 'selection_resampl' is not a name under merges"),
    ("unknown benchmark", setp(("benchmarks", "gsm_id", "benchmark"), "gsm9k"), "config key benchmarks.gsm_id.benchmark: 'gsm9k' is not one of"),
    ("unknown benchmark setting", setp(("benchmarks", "gsm_id", "settings"), {"limt": 4}),
     "config key benchmarks.gsm_id.settings: unknown setting 'limt' for benchmark gsm8k"),
    ("benchmark limit as text", setp(("benchmarks", "gsm_id", "settings"), {"limit": "abc"}),
     "config key benchmarks.gsm_id.settings.limit: 'abc' is not of type 'integer'"),
    ("zero new tokens", setp(("benchmarks", "gsm_id", "settings"), {"max_new_tokens": 0}),
     "config key benchmarks.gsm_id.settings.max_new_tokens: 0 is less than the minimum of 1"),
    ("batch size as text", setp(("benchmarks", "loss_id", "settings"), {"batch_size": "8"}),
     "config key benchmarks.loss_id.settings.batch_size: '8' is not of type 'integer'"),
    ("data set by hand", setp(("benchmarks", "loss_id", "settings"), {"data": "x.jsonl"}),
     "config key benchmarks.loss_id.settings: 'data' is set by the workflow"),
    ("unknown prompt key", setp((*E, "prompt"), {"system": "hi"}),
     "config key experiments.tiny.prompt: unknown key ('system' was unexpected)"),
    ("GSM accuracy on data without answers", alpaca_without_ood,
     "config key benchmarks.gsm_id: benchmark gsm8k needs the field 'answer', which "
     "experiments.tiny.data (format alpaca) does not have"),
    ("benchmark for an unknown experiment", setp(("benchmarks", "gsm_id", "experiments"), ["tiny2"]),
     "config key benchmarks.gsm_id.experiments: 'tiny2' is not a name under experiments"),
    ("unknown split", setp(("benchmarks", "loss_id", "split"), "test"), "config key benchmarks.loss_id.split: 'test' is not one of"),
    ("unknown model set", setp(("benchmarks", "gsm_id", "models"), "some"), "config key benchmarks.gsm_id.models: 'some' is not one of"),
    ("test_ood without gsm_symbolic", set_data(format="alpaca", path="tatsu-lab/alpaca"),
     "config key benchmarks.loss_ood.split: test_ood exists only for gsm_symbolic (experiments.tiny)"),
    ("SFT would truncate what the data keeps", setp((*E, "sft", "max_length"), 256),
     "config key experiments.tiny.sft.max_length: 256 is below experiments.tiny.data.max_tokens "
     "= 320 (SFT would truncate samples the data keeps; raise sft.max_length or lower "
     "data.max_tokens)"),
    ("SFT's default max_length below max_tokens", lambda c: (c["experiments"]["tiny"]["sft"].pop("max_length"),
                                                          set_data(max_tokens=1024)(c)),
     "config key experiments.tiny.sft.max_length: 512 is below experiments.tiny.data.max_tokens = 1024"),
    ("columns on alpaca", set_data(format="alpaca", path="tatsu-lab/alpaca", columns={"prompt": "q"}),
     "config key experiments.tiny.data.columns: format alpaca takes no columns mapping (only generic "
     "does; its columns are instruction, output)"),
    ("a path for a generated format", set_data(path="data/gsm.jsonl"),
     "config key experiments.tiny.data.path: format gsm_symbolic reads no file (it has its own data: "
     "reasoning-gym gsm_symbolic, drawn per split; test_ood = held-out templates)"),
    ("existing file of an unsupported type", set_data(format="alpaca", path="configs/tiny.yaml"),
     "config key experiments.tiny.data.path: configs/tiny.yaml: unsupported extension '.yaml'; "
     "expected a dataset file (.jsonl, .json, .csv, .tsv, .parquet)"),
    ("extensionless existing file", set_data(format="alpaca", path="Snakefile"),
     "config key experiments.tiny.data.path: Snakefile: no extension; expected a dataset file "
     "(.jsonl, .json, .csv, .tsv, .parquet)"),
    ("a folder as the dataset", set_data(format="alpaca", path="configs"),
     "config key experiments.tiny.data.path: configs is a folder; expected a dataset file (.jsonl, "
     ".json, .csv, .tsv, .parquet) or a hub dataset name"),
    ("extensionless path in a local folder", set_data(format="alpaca", path="configs/alpaca_mine"),
     "config key experiments.tiny.data.path: file configs/alpaca_mine does not exist (a local path, "
     "not a hub dataset name: configs/ is a local folder)"),
    ("relative extensionless path", set_data(format="alpaca", path="./alpaca_mine"),
     "config key experiments.tiny.data.path: file ./alpaca_mine does not exist (a local path, not a "
     "hub dataset name: it starts with ./)"),
    ("a merge name with the grid separator", add_merge("ties__t0", {"method": "ties"}),
     "config key merges.ties__t0: names may not contain '__' (reserved for the grid points of "
     "tuned merges)"),
    ("tuning a parameter the method lacks",
     add_merge("ta", {"method": "task_arithmetic", "tune": {"density": [0.2, 0.5]}}),
     "config key merges.ta.tune: 'density' is not a parameter of method task_arithmetic (its "
     "parameters: lambda)"),
    ("a grid value out of range",
     add_merge("t2", {"method": "ties", "tune": {"density": [0.5, 1.5]}}),
     "config key merges.t2.tune: method ties: parameter density: 1.5 is greater than the maximum of 1"),
    ("a grid of one value", add_merge("ta", {"method": "task_arithmetic", "tune": {"lambda": [1.0]}}),
     "config key merges.ta.tune.lambda: [1.0] is too short"),
    ("tuning without a validation split", set_data(val_size=0),
     "config key experiments.tiny.data.val_size: 0, but merges.ties is tuned on the validation split "
     "(set its size, e.g. 64)"),
    ("a validation benchmark that reads no split",
     lambda c: (set_data(val_size=8)(c),
                add_merge("ta", {"method": "task_arithmetic", "tune": {"lambda": [0.5, 1.0]}})(c),
                c.__setitem__("tuning", {"benchmark": "humaneval"})),
     "config key tuning.benchmark: 'humaneval' must be a benchmark that reads a split "
     "(response_loss, gsm8k)"),
]


@pytest.mark.parametrize("mutate,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_is_one_line_naming_the_key(mutate, expect, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative dataset paths resolve against the working directory
    cfg = copy.deepcopy(TINY)
    mutate(cfg)
    with pytest.raises(OrdermergeError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert msg.startswith(expect) and "\n" not in msg, msg


def test_at_least_25_distinct_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def test_a_config_that_is_not_a_mapping_and_unreadable_files(tmp_path):
    with pytest.raises(OrdermergeError, match=r"^config: expected a mapping at the top level$"):
        validate_config(["tiny"])
    (tmp_path / "bad.yaml").write_text("experiments: [unclosed\n")
    with pytest.raises(OrdermergeError, match=r"bad.yaml: invalid YAML \(while parsing"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(OrdermergeError, match=r"nope.yaml: cannot read \(No such file or directory\)"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_validate(monkeypatch):
    monkeypatch.chdir(ROOT)
    for f in ("config.yaml", "configs/tiny.yaml", "configs/paper.yaml", "configs/study.yaml"):
        load_config(ROOT / f)


def _properties(schema: dict, path: str = "") -> list[tuple[str, dict, bool]]:
    """(dotted key, its schema, required?) for every named property, at every depth."""
    out = []
    required = set(schema.get("required", []))
    for k, sub in schema.get("properties", {}).items():
        out.append((f"{path}{k}", sub, k in required))
        out += _properties(sub, f"{path}{k}.")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out += _properties(extra, f"{path}*.")
    return out


# Optional keys without a default, and why: their absence means something a default can't say.
NO_DEFAULT = {
    "experiments.*.base.tiny": "only for spec: tiny",
    "experiments.*.data.path": "required or not depending on the format (checked in code)",
    "experiments.*.data.test_path": "absent = held out from path",
    "experiments.*.data.columns": "absent = the format's own column names",
    "merges.*.params.resample": "per-method defaults live in ordermerge.catalog.METHODS",
    "merges.*.params.lambda": "per-method defaults live in ordermerge.catalog.METHODS",
    "merges.*.params.density": "per-method defaults live in ordermerge.catalog.METHODS",
    "merges.*.params.drop_rate": "per-method defaults live in ordermerge.catalog.METHODS",
    "merges.*.weights": "absent = uniform",
    "merges.*.tune": "absent = the merge's params as given, nothing tuned",
    "ablation.merges": "absent = every merge",
    "benchmarks.*.experiments": "absent = every experiment",
}


def test_every_schema_key_has_a_description_and_optional_keys_a_default():
    schema = load_schema()
    props = _properties(schema)
    assert len(props) > 50
    missing_desc = [k for k, s, _ in props if not s.get("description")]
    assert not missing_desc
    no_default = {k for k, s, req in props if not req and "default" not in s and s.get("type") != "object"}
    no_default |= {k for k, s, req in props if not req and "default" not in s and s.get("type") == "object"
                   and "properties" not in s}
    assert no_default <= set(NO_DEFAULT) | {k for k in no_default if k.startswith("experiments.*.base.tiny.")}, \
        no_default - set(NO_DEFAULT)


def test_schema_and_code_agree():
    """The schema's enums and parameter types are the catalogues' (ordermerge.catalog): the
    YAML file names none of them, load_schema fills them in."""
    from ordermerge.merge import REGISTRY
    from ordermerge.sft import SFTConfig

    def enums(node):
        if isinstance(node, dict):
            yield from ([node["enum"]] if "enum" in node else [])
            for v in node.values():
                yield from enums(v)

    written = {x for e in enums(yaml.safe_load(SCHEMA.read_text())) for x in e}
    assert not written & {*METHODS, *DTYPES, "response_loss", "lm_eval"}, "enums belong to the catalogue"
    schema = load_schema()
    exp = schema["properties"]["experiments"]["additionalProperties"]["properties"]
    sft_keys = set(exp["sft"]["properties"])
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    # epochs comes from the order file (orders.epochs); max_steps is a library-only cap that
    # the benchmarks use to time a few steps
    assert sft_keys == fields - {"epochs", "max_steps"}, sft_keys ^ fields
    for f in dataclasses.fields(SFTConfig):
        if f.name in sft_keys:
            assert exp["sft"]["properties"][f.name]["default"] == f.default, f.name
    merge = schema["properties"]["merges"]["additionalProperties"]["properties"]
    assert merge["method"]["enum"] == list(METHODS) and set(REGISTRY) == set(METHODS)
    assert set(merge["params"]["properties"]) == {p for m in METHODS.values() for p in m.params}
    assert merge["dtype"]["enum"] == [*DTYPES, None]
    bench = schema["properties"]["benchmarks"]["additionalProperties"]["properties"]
    assert bench["benchmark"]["enum"] == list(BENCHMARKS)
    assert exp["base"]["properties"]["dtype"]["enum"] == list(DTYPES)


def test_validating_a_config_does_not_import_torch():
    # Every Snakemake parse validates the config (twice inside each cluster job): keep it light.
    code = ("import sys; from ordermerge.config import load_config; load_config('configs/paper.yaml');"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_readme_describes_the_default_config() -> None:
    """The README's account of the default run follows config.yaml (sizes, seeds, splits)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    (exp,) = cfg["experiments"].values()
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## What the default run produces")
    intro = " ".join(readme[start : readme.index("Wall time", start)].split())
    seeds = len(cfg["merge_seeds"])
    expected = [
        f"of {exp['data']['train_size']} `{exp['data']['format']}`",
        f"fit {exp['sft']['max_length']} tokens",
        f"{exp['orders']['n']} orders × {exp['orders']['epochs']} epochs",
        f"batch {exp['sft']['batch_size']}",
        f"{len(cfg['merges'])} methods" if len(cfg["merges"]) != 6 else "six methods",
        "one merge seed" if seeds == 1 else f"{seeds} merge seeds",
        "one replicate" if exp["orders"]["replicates"] == 1 else f"{exp['orders']['replicates']} replicates",
        f"chosen on {exp['data']['val_size']} validation items",
        f"{'one random subset' if cfg['ablation'].get('subsets', 1) == 1 else 'random subsets'} of "
        f"{cfg['ablation']['sizes'][0]} orders",
        f"on {exp['data']['test_size']} new instances",
        f"{exp['data']['test_size']} problems from {exp['data']['heldout_templates']} held-out templates",
    ]
    assert [e for e in expected if e not in intro] == []
    # the generated claims table is from a run of this config: its n is the test size
    table = readme[readme.index(README_START) : readme.index(README_END)]
    ns = {line.split(" | ")[4] for line in table.splitlines() if " | b: " in line}
    assert ns == {str(exp["data"]["test_size"])}


def _data_config(**data: Any) -> dict:
    """The tiny config on another dataset, without the benchmarks only gsm_symbolic supports."""
    cfg = copy.deepcopy(TINY)
    cfg["experiments"]["tiny"]["data"] = {"train_size": 4, "test_size": 2, "max_tokens": 320, **data}
    del cfg["merges"]["ties"]["tune"]  # no validation split in these datasets
    for b in ("loss_ood", "gsm_id"):
        del cfg["benchmarks"][b]
    return cfg


def _lines(path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _refused(cfg: dict) -> str:
    with pytest.raises(OrdermergeError) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_local_dataset_files_are_checked_at_config_time(tmp_path):
    """Wrong columns, repeated ids and bad bytes are named with file and line before any job."""
    key = "config key experiments.tiny.data"
    train = _lines(tmp_path / "train.jsonl", '{"id": "a", "q": "1?", "r": "1"}',
                   '{"id": "b", "q": "2?", "r": "2"}', "", '{"id": "a", "q": "3?", "r": "3"}')
    generic = {"format": "generic", "columns": {"prompt": "q", "response": "r", "id": "id"}}
    assert _refused(_data_config(path=train, **generic)) == (
        f"{key}.path: {train}:4: duplicate id 'a' (also at {train}:1); ids must be unique within "
        "and across splits")
    good = _lines(tmp_path / "good.jsonl", '{"id": "a", "q": "1?", "r": "1"}', '{"id": "b", "q": "2?", "r": "2"}')
    test = _lines(tmp_path / "test.csv", "id,q,r", "c,3?,3", "b,4?,4")
    assert _refused(_data_config(path=good, test_path=test, **generic)) == (
        f"{key}.test_path: {test}:3: duplicate id 'b' (also at {good}:2); ids must be unique within "
        "and across splits")
    assert _refused(_data_config(path=good, format="generic", columns={"prompt": "question", "response": "r"})) == (
        f"{key}.path: {good}:1: missing column 'question', which data.columns maps to prompt "
        "(columns present: id, q, r)")
    assert _refused(_data_config(path=good, format="generic")) == (
        f"{key}.path: {good}:1: missing column 'prompt' (columns present: id, q, r)")
    gsm = _lines(tmp_path / "gsm.jsonl", '{"question": "1?", "answer": "#### 1"}', '{"question": "2?"}')
    assert _refused(_data_config(path=gsm, format="gsm8k")) == (
        f"{key}.path: {gsm}:2: missing column 'answer' (columns present: question)")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "1?", "answer": "#### 1"}\n{"question": "caf\xe9"}\n')
    assert _refused(_data_config(path=str(bad), format="gsm8k")) == (
        f"{key}.path: {bad}:2: not UTF-8 (byte 18 of the line)")
    assert _refused(_data_config(path=str(tmp_path / "gone.csv"), format="gsm8k")) == (
        f"{key}.path: file {tmp_path / 'gone.csv'} does not exist")
    # a CSV with the format's columns, and a hub dataset name (not fetched), pass
    csv = _lines(tmp_path / "alpaca.csv", "instruction,input,output", 'Say hi,"to a, b",hi')
    assert validate_config(_data_config(path=csv, format="alpaca"))["results"] == "results"
    validate_config(_data_config(path="tatsu-lab/alpaca", test_path="tatsu-lab/alpaca", format="alpaca"))


def test_results_may_be_an_absolute_folder_and_snakemake_plans_into_it(tmp_path):
    """Cluster users keep results on scratch storage: an absolute results folder validates and
    the workflow dry-runs with every output under it."""
    from conftest import make_workdir, smk

    results = tmp_path / "scratch" / "om_results"
    assert validate_config({**copy.deepcopy(TINY), "results": str(results)})["results"] == str(results)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    wd = make_workdir(tmp_path / "wd", cfg)
    (wd / "abs.yaml").write_text(yaml.safe_dump({**cfg, "results": str(results)}, sort_keys=False))
    res = smk(wd, "-n", "--configfile", "abs.yaml")
    planned = re.findall(r"^    output: (.+)$", res.stdout, re.M)
    outputs = [p for line in planned for p in line.split(", ")]
    assert outputs and all(p.startswith(f"{results}/") for p in outputs), outputs[:5]
    assert "prepare_data" in res.stdout and not results.exists() and not (wd / "results").exists()
