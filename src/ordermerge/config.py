"""Pipeline config: JSON-schema validation (draft 2020-12) with defaults, plus the checks a
schema cannot express. Every problem is reported as ONE line naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from . import OrdermergeError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
RANDOM_METHODS = {"parameter_selection", "dare_linear", "dare_ties"}
BENCHMARKS = ("response_loss", "gsm8k", "humaneval", "lm_eval")
# The settings each benchmark accepts (checked at config time, before any job runs).
BENCHMARK_SETTINGS = {
    "response_loss": {"data", "batch_size", "max_length", "system_prompt", "limit"},
    "gsm8k": {"data", "batch_size", "max_new_tokens", "system_prompt", "limit", "fewshot_path",
              "fewshot_k"},
    "humaneval": {"batch_size", "max_new_tokens", "limit", "n_samples", "k", "temperature",
                  "timeout", "chat", "seed", "allow_unsandboxed"},
    "lm_eval": {"tasks", "include_path", "limit", "batch_size", "metric"},
}


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


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA) -> dict[str, Any]:
    """Return a validated copy of `config` with every default filled in."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    if not isinstance(config, dict):
        raise OrdermergeError("config: expected a mapping at the top level")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        e = errors[0]
        desc = e.schema.get("description", "") if isinstance(e.schema, dict) else ""
        if e.validator == "additionalProperties":
            msg = e.message.replace("Additional properties are not allowed", "unknown key")
        else:
            msg = e.message
        hint = f" ({desc})" if desc else ""
        raise OrdermergeError(f"config key {_key(e.path)}: {msg}{hint}")
    config = copy.deepcopy(config)
    _fill_defaults(schema, config)
    _semantic_checks(config)
    return config


def _semantic_checks(cfg: dict[str, Any]) -> None:
    from .merge.params import parse_params

    res = Path(cfg["results"])
    if res.is_absolute() or ".." in res.parts:
        raise OrdermergeError(f"config key results: {cfg['results']!r} must be a relative path inside the working directory")
    for name, m in cfg["merges"].items():
        try:
            parse_params(m["method"], m.get("params"))
        except OrdermergeError as e:
            raise OrdermergeError(f"config key merges.{name}.params: {e}") from None
    abl = cfg["ablation"]
    for s in abl.get("strategies", []):
        if s not in cfg["merges"]:
            raise OrdermergeError(f"config key ablation.strategies: {s!r} is not a name under merges ({', '.join(cfg['merges'])})")
    for bname, b in cfg["benchmarks"].items():
        accepted = BENCHMARK_SETTINGS[b["benchmark"]] - {"data"}  # data: set by the workflow
        unknown = sorted(set(b.get("settings", {})) - accepted)
        if unknown:
            raise OrdermergeError(
                f"config key benchmarks.{bname}.settings: unknown setting {unknown[0]!r} for "
                f"benchmark {b['benchmark']} (accepted: {', '.join(sorted(accepted))})")
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
                if b["benchmark"] in ("response_loss", "gsm8k") and b["split"] == "test_ood":
                    raise OrdermergeError(
                        f"config key benchmarks.{bname}.split: test_ood exists only for gsm_symbolic (experiments.{exp})")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise OrdermergeError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise OrdermergeError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    return validate_config(raw)
