"""Pipeline config: JSON-schema validation (draft 2020-12) with defaults, plus the checks a
schema cannot express. Every problem is reported as ONE line naming the key."""

from __future__ import annotations

import copy
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


def _semantic_checks(cfg: dict[str, Any]) -> None:
    res = Path(cfg["results"])
    if res.is_absolute() or ".." in res.parts:
        raise OrdermergeError(f"config key results: {cfg['results']!r} must be a relative path inside the working directory")
    for name, m in cfg["merges"].items():
        method_params(m["method"], m.get("params"), f"config key merges.{name}.params")
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
        if d["format"] in ("gsm8k", "alpaca", "generic") and "path" not in d:
            raise OrdermergeError(f"config key experiments.{exp}.data.path: required for format {d['format']}")
        for key in ("path", "test_path"):
            p = d.get(key)
            if p and Path(p).suffix in (".json", ".jsonl", ".parquet") and not Path(p).exists():
                raise OrdermergeError(f"config key experiments.{exp}.data.{key}: file {p} does not exist")
        if d["format"] != "gsm_symbolic":
            for bname, b in cfg["benchmarks"].items():
                if exp not in b.get("experiments", cfg["experiments"]):
                    continue
                if BENCHMARKS[b["benchmark"]].reads_split and b["split"] == "test_ood":
                    raise OrdermergeError(
                        f"config key benchmarks.{bname}.split: test_ood exists only for gsm_symbolic (experiments.{exp})")
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
