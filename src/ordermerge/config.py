"""Pipeline config: JSON-schema validation (draft 2020-12) with defaults, plus the checks a
schema cannot express. Every problem is reported as ONE line naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from . import OrdermergeError
from .catalog import (
    BENCHMARKS,
    DTYPES,
    FORMATS,
    METHODS,
    defaults,
    params_schema,
    row_fields,
    settings_schema,
)
from .data import check_local_files

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _key(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _fill_defaults(schema: dict[str, Any], value: Any) -> None:
    if not isinstance(value, dict):
        return
    for k, sub in schema.get("properties", {}).items():
        if k not in value and "default" in sub:
            value[k] = copy.deepcopy(sub["default"])
        if k in value:
            _fill_defaults(sub, value[k])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for k, v in value.items():
            if k not in schema.get("properties", {}):
                _fill_defaults(extra, v)


def load_schema(schema_path: Path = SCHEMA) -> dict[str, Any]:
    """The config schema, with its enums and parameter types filled in from the catalogues."""
    schema = yaml.safe_load(schema_path.read_text())
    exp = schema["properties"]["experiments"]["additionalProperties"]["properties"]
    exp["base"]["properties"]["dtype"]["enum"] = list(DTYPES)
    exp["data"]["properties"]["format"]["enum"] = list(FORMATS)
    exp["sft"]["properties"]["dtype"]["enum"] = ["auto", *DTYPES]
    exp["sft"]["properties"]["save_dtype"]["enum"] = [*DTYPES, None]
    merge = schema["properties"]["merges"]["additionalProperties"]["properties"]
    merge["method"]["enum"] = list(METHODS)
    merge["params"] = params_schema()
    merge["dtype"]["enum"] = [*DTYPES, None]
    bench = schema["properties"]["benchmarks"]["additionalProperties"]["properties"]
    bench["benchmark"]["enum"] = list(BENCHMARKS)
    return schema


def check(schema: dict[str, Any], value: Any, where: tuple = (), prefix: str = "config key") -> None:
    """Validate `value` against a JSON schema; the first error (shallowest first) as ONE line
    naming the key (under the path `where`)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        e = errors[0]
        desc = e.schema.get("description", "") if isinstance(e.schema, dict) else ""
        if e.validator == "additionalProperties":
            msg = e.message.replace("Additional properties are not allowed", "unknown key")
        else:
            msg = e.message
        hint = f" ({desc})" if desc else ""
        key = _key((*where, *e.path)) if prefix == "config key" else ".".join(map(str, e.path))
        raise OrdermergeError(f"{prefix} {key}: {msg}{hint}" if key else f"{prefix}: {msg}{hint}")


def method_params(method: str, params: dict[str, Any] | None, where: str = "") -> dict[str, Any]:
    """A merge method's parameters, type- and range-checked, defaults filled in; one line
    naming the bad one otherwise. `where` prefixes messages (a config key or a CLI flag)."""
    at = f"{where}: " if where else ""
    if method not in METHODS:
        raise OrdermergeError(f"{at}unknown method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method].params
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise OrdermergeError(f"{at}method {method}: unknown parameter {unknown[0]!r} "
                              f"(accepted: {', '.join(sorted(spec)) or 'none'})")
    for k, v in params.items():
        check(spec[k].json_schema(), v, prefix=f"{at}method {method}: parameter {k}")
    return defaults(spec, params)


def benchmark_settings(benchmark: str, settings: dict[str, Any], where: str = "--config",
                       key: tuple = ()) -> dict[str, Any]:
    """A benchmark's settings, type- and range-checked, defaults filled in. Messages start with
    `where` (a CLI flag, or "config key" and the settings' `key` path in the config)."""
    at = f"{where} {_key(key)}: " if key else f"{where}: "
    if benchmark not in BENCHMARKS:
        raise OrdermergeError(f"{at}unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    accepted = BENCHMARKS[benchmark].settings
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise OrdermergeError(f"{at}unknown setting {unknown[0]!r} for benchmark {benchmark} "
                              f"(accepted: {', '.join(sorted(accepted))})")
    check(settings_schema(benchmark), settings, key, where)
    return defaults(accepted, settings)


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA) -> dict[str, Any]:
    """Return a validated copy of `config` with every default filled in."""
    schema = load_schema(schema_path)
    if not isinstance(config, dict):
        raise OrdermergeError("config: expected a mapping at the top level")
    check(schema, config)
    config = copy.deepcopy(config)
    _fill_defaults(schema, config)
    _semantic_checks(config)
    return config


# what a results path may hold: Snakemake reads { } as wildcards, and rules pass paths to the
# shell unquoted, so spaces and shell characters would break jobs, not this check
RESULTS_CHARS = re.compile(r"[^A-Za-z0-9_./-]")


def _check_results(results: str) -> None:
    if not results:
        raise OrdermergeError("config key results: empty (a folder: relative to the working "
                              "directory, or absolute)")
    bad = sorted(set(RESULTS_CHARS.findall(results)))
    if bad:
        raise OrdermergeError(
            f"config key results: {results!r} has {' '.join(map(repr, bad))}, which workflow "
            "paths cannot hold (use letters, digits, _ . - and /)")
    if ".." in Path(results).parts:
        raise OrdermergeError(f"config key results: {results!r} leaves the working directory "
                              "through '..' (give an absolute path for a folder outside it)")


def _check_data(exp: str, e: dict[str, Any]) -> None:
    """An experiment's data section against its format's catalogue entry, and its local files
    (read here, never a hub dataset) against what prepare-data will need of them."""
    d, key = e["data"], f"config key experiments.{exp}.data"
    fmt = FORMATS[d["format"]]
    if fmt.needs_path and "path" not in d:
        raise OrdermergeError(f"{key}.path: required for format {d['format']}")
    for k in ("path", "test_path"):
        if k in d and not fmt.needs_path:
            raise OrdermergeError(f"{key}.{k}: format {d['format']} reads no file (it has its "
                                  f"own data: {fmt.doc})")
    if "columns" in d and not fmt.accepts_columns:
        takes = ", ".join(f for f, s in FORMATS.items() if s.accepts_columns)
        raise OrdermergeError(f"{key}.columns: format {d['format']} takes no columns mapping "
                              f"(only {takes} does; its columns are {', '.join(fmt.required)})")
    if e["sft"]["max_length"] < d["max_tokens"]:
        raise OrdermergeError(
            f"config key experiments.{exp}.sft.max_length: {e['sft']['max_length']} is below "
            f"experiments.{exp}.data.max_tokens = {d['max_tokens']} (SFT would truncate samples "
            "the data keeps; raise sft.max_length or lower data.max_tokens)")
    try:
        check_local_files(d)
    except OrdermergeError as err:  # err starts with data.path or data.test_path
        raise OrdermergeError(f"config key experiments.{exp}.{err}") from None


def _check_tuning(cfg: dict[str, Any], name: str, m: dict[str, Any]) -> None:
    """A tuned merge (merges.NAME.tune): known parameters, every grid point valid, a validation
    split to choose on, and a validation benchmark that reads one."""
    if "__" in name:  # tuning.GRID_SEP starts with it: no name can look like a grid point
        raise OrdermergeError(f"config key merges.{name}: names may not contain '__' "
                              "(reserved for the grid points of tuned merges)")
    tune = m.get("tune")
    if not tune:
        return
    from .tuning import grid

    where = f"config key merges.{name}.tune"
    unknown = sorted(set(tune) - set(METHODS[m["method"]].params))
    if unknown:
        raise OrdermergeError(f"{where}: {unknown[0]!r} is not a parameter of method {m['method']} "
                              f"(its parameters: {', '.join(METHODS[m['method']].params) or 'none'})")
    for point in grid(m.get("params") or {}, tune):
        method_params(m["method"], point, where)
    kind = cfg["tuning"]["benchmark"]
    if kind not in BENCHMARKS or not BENCHMARKS[kind].reads_split:
        raise OrdermergeError(f"config key tuning.benchmark: {kind!r} must be a benchmark that reads a "
                              f"split ({', '.join(b for b, v in BENCHMARKS.items() if v.reads_split)})")
    benchmark_settings(kind, cfg["tuning"]["settings"], "config key", ("tuning", "settings"))
    for exp, e in cfg["experiments"].items():
        if not e["data"].get("val_size"):
            raise OrdermergeError(f"config key experiments.{exp}.data.val_size: 0, but merges.{name} "
                                  "is tuned on the validation split (set its size, e.g. 64)")


def _semantic_checks(cfg: dict[str, Any]) -> None:
    _check_results(cfg["results"])
    for name, m in cfg["merges"].items():
        method_params(m["method"], m.get("params"), f"config key merges.{name}.params")
        _check_tuning(cfg, name, m)
    abl = cfg["ablation"]
    for s in abl.get("merges", []):
        if s not in cfg["merges"]:
            raise OrdermergeError(f"config key ablation.merges: {s!r} is not a name under merges ({', '.join(cfg['merges'])})")
    for bname, b in cfg["benchmarks"].items():
        for exp in b.get("experiments", []):
            if exp not in cfg["experiments"]:
                raise OrdermergeError(f"config key benchmarks.{bname}.experiments: {exp!r} is not a name "
                                      f"under experiments ({', '.join(cfg['experiments'])})")
        settings = b.get("settings", {})
        if "data" in settings and BENCHMARKS[b["benchmark"]].reads_split:
            raise OrdermergeError(f"config key benchmarks.{bname}.settings: 'data' is set by the "
                                  f"workflow (the split named by benchmarks.{bname}.split)")
        benchmark_settings(b["benchmark"], settings, "config key", ("benchmarks", bname, "settings"))
    for exp, e in cfg["experiments"].items():
        n = e["orders"]["n"]
        for size in abl["sizes"]:
            if size >= n:
                raise OrdermergeError(f"config key ablation.sizes: {size} must be below experiments.{exp}.orders.n = {n}")
        for name, m in cfg["merges"].items():
            if "weights" in m and len(m["weights"]) != n:
                raise OrdermergeError(
                    f"config key merges.{name}.weights: {len(m['weights'])} weights for {n} orders (experiments.{exp}.orders.n)")
        d = e["data"]
        _check_data(exp, e)
        if not FORMATS[d["format"]].test_ood:
            for bname, b in cfg["benchmarks"].items():
                if exp not in b.get("experiments", cfg["experiments"]):
                    continue
                if BENCHMARKS[b["benchmark"]].reads_split and b["split"] == "test_ood":
                    raise OrdermergeError(
                        f"config key benchmarks.{bname}.split: test_ood exists only for "
                        f"{', '.join(f for f, s in FORMATS.items() if s.test_ood)} (experiments.{exp})")
        for bname, b in cfg["benchmarks"].items():
            need = BENCHMARKS[b["benchmark"]].needs
            if exp in b.get("experiments", cfg["experiments"]) and need and need not in row_fields(d):
                raise OrdermergeError(
                    f"config key benchmarks.{bname}: benchmark {b['benchmark']} needs the field "
                    f"{need!r}, which experiments.{exp}.data (format {d['format']}) does not have "
                    f"(list the experiments it applies to under benchmarks.{bname}.experiments)")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise OrdermergeError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise OrdermergeError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    return validate_config(raw)
