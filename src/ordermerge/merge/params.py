"""Each strategy's parameters and their checks, importable without torch (config validation
runs in every Snakemake parse, including the two inside each cluster job)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import OrdermergeError


@dataclass(frozen=True)
class Param:
    default: Any
    kind: type
    check: Callable[[Any], bool] = lambda v: True
    expect: str = ""


_LAMBDA = Param(1.0, float, lambda v: v > 0, "a positive number")
_DENSITY = Param(0.2, float, lambda v: 0 < v <= 1, "in (0, 1]")
_DROP = Param(0.9, float, lambda v: 0 <= v < 1, "in [0, 1)")

# method -> its parameters; strategies.register() refuses a method missing here.
PARAMS: dict[str, dict[str, Param]] = {
    "weighted_average": {},
    "parameter_selection": {"resample": Param(False, bool, expect="true or false")},
    "task_arithmetic": {"lambda": _LAMBDA},
    "ties": {"density": _DENSITY, "lambda": _LAMBDA},
    "dare_linear": {"drop_rate": _DROP, "lambda": _LAMBDA},
    "dare_ties": {"drop_rate": _DROP, "lambda": _LAMBDA},
}


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError
    if isinstance(value, bool):
        raise ValueError
    return kind(value)


def parse_params(strategy: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a strategy's parameters, fill defaults; OrdermergeError names the bad one."""
    if strategy not in PARAMS:
        raise OrdermergeError(
            f"unknown strategy {strategy!r}; expected one of {', '.join(sorted(PARAMS))}"
        )
    spec = PARAMS[strategy]
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise OrdermergeError(
            f"strategy {strategy}: unknown parameter {unknown[0]!r} (accepted: {known})"
        )
    out = {}
    for key, p in spec.items():
        value = params.get(key, p.default)
        try:
            value = _coerce(value, p.kind)
            ok = p.check(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise OrdermergeError(
                f"strategy {strategy}: parameter {key}={params.get(key)!r} must be {p.expect}"
            )
        out[key] = value
    return out
