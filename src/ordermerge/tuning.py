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
import math
from pathlib import Path
from typing import Any

from . import OrdermergeError

GRID_SEP = "__t"  # a grid point of merge M is the internal merge M__t{i}: M's names may not hold "__"


def grid_name(merge: str, i: int) -> str:
    return f"{merge}{GRID_SEP}{i}"


def split_grid_name(name: str) -> tuple[str, int | None]:
    """(the config's merge, the grid point's index) of a merge name; index None for a merge
    that is not a grid point."""
    merge, sep, i = name.partition(GRID_SEP)
    return (merge, int(i)) if sep else (name, None)


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
    for point, score in zip(points, scores, strict=True):
        if not math.isfinite(score):  # NaN compares false both ways: it would win at random
            raise OrdermergeError(f"tuning: grid point {point} scored {score} on the validation split")
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
