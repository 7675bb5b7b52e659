"""Fair baselines: a merge's parameters chosen on the validation split, never on a test split.

A merge with `tune: {param: [values], ...}` in the config is merged once per point of the grid
(the product of the listed values, the other parameters as given), every grid point is
evaluated on the validation split (fresh instances of the training templates, disjoint from
train and both test splits), and the point with the best validation score is the merge's
parameters in that replicate. Ties go to the earlier grid point. Torch-free.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from . import OrdermergeError


def grid(params: dict[str, Any], tune: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every grid point: `params` with each tuned parameter set to one of its values, in the
    order of the product (the first parameter's values vary slowest)."""
    names = list(tune)
    return [{**params, **dict(zip(names, values, strict=True))}
            for values in itertools.product(*(tune[n] for n in names))]


def choose(points: list[dict[str, Any]], scores: list[float], lower_is_better: bool,
           benchmark: str) -> dict[str, Any]:
    """The record of one choice: the grid, its validation scores and the chosen point."""
    if len(points) != len(scores) or not points:
        raise OrdermergeError(f"tuning: {len(points)} grid points but {len(scores)} scores")
    sign = 1.0 if lower_is_better else -1.0
    best = min(range(len(points)), key=lambda i: (sign * scores[i], i))
    return {"chosen": points[best], "grid": points, "validation_scores": scores,
            "validation": benchmark, "lower_is_better": lower_is_better}


def read_choice(path: str | Path) -> dict[str, Any]:
    try:
        choice = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        choice = None
    if not isinstance(choice, dict) or not isinstance(choice.get("chosen"), dict):
        raise OrdermergeError(f"{path}: not a tuning record (ordermerge tune)")
    return choice
