"""Data orders: order k is one permutation of the training set per epoch.

Every permutation is derived from (seed, k, epoch) by SHA-256, so an order file is a pure
function of its inputs and byte-identical across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from . import OrdermergeError

MODES = ("shuffle", "fixed", "batch_shuffle")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def make_order(
    ids: list[str], k: int, epochs: int, mode: str = "shuffle", seed: int = 0, batch_size: int = 8,
    replicate: int = 1,
) -> dict[str, Any]:
    """Order k of `ids` in training replicate `replicate`: shuffle (new permutation each epoch),
    fixed (one reused), or batch_shuffle (batches of `batch_size` fixed once for all orders of
    a replicate; only their positions move). Replicate 1 draws from (seed, k, epoch) alone, so
    its orders are those of a run without replicates; replicate r > 1 adds r to every draw."""
    if mode not in MODES:
        raise OrdermergeError(f"order mode {mode!r}: expected one of {', '.join(MODES)}")
    if epochs < 1 or batch_size < 1:
        raise OrdermergeError("order: epochs and batch_size must be ≥ 1")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise OrdermergeError(f"order: dataset id {i!r} occurs more than once (ids must be unique)")
        seen.add(i)
    rep = () if replicate == 1 else (f"replicate{replicate}",)
    perms = []
    if mode == "batch_shuffle":
        base = list(ids)
        _rng(seed, *rep, "batches").shuffle(base)  # shared by every order: composition is fixed
        batches = [base[i : i + batch_size] for i in range(0, len(base), batch_size)]
    for e in range(epochs):
        if mode == "shuffle":
            p = list(ids)
            _rng(seed, *rep, k, e).shuffle(p)
        elif mode == "fixed":
            p = list(ids)
            _rng(seed, *rep, k, 0).shuffle(p)
        else:
            pos = list(range(len(batches)))
            _rng(seed, *rep, k, e).shuffle(pos)
            p = [x for b in pos for x in batches[b]]
        perms.append(p)
    extra = {"replicate": replicate} if replicate != 1 else {}
    return {"order": k, **extra, "mode": mode, "seed": seed, "batch_size": batch_size, "n": len(ids),
            "dataset_ids_sha256": ids_digest(sorted(ids)), "epochs": perms}


def write_order(order: dict[str, Any], path: str | Path) -> None:
    """Human-readable JSON: one line per epoch; byte-identical for the same order."""
    head = {k: v for k, v in order.items() if k != "epochs"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in sorted(head.items())]
    lines.append('  "epochs": [')
    lines += [f"    {json.dumps(p)}{',' if i < len(order['epochs']) - 1 else ''}"
              for i, p in enumerate(order["epochs"])]
    lines += ["  ]", "}"]
    from .atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_order(path: str | Path, ids: list[str]) -> dict[str, Any]:
    """Load an order file and check it is a permutation of `ids` in every epoch."""
    path = Path(path)
    try:
        order = json.loads(path.read_text())
        epochs = order["epochs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise OrdermergeError(f"{path}: not an ordermerge order file") from None
    if order.get("dataset_ids_sha256") != ids_digest(sorted(ids)):
        raise OrdermergeError(f"{path}: was made for another dataset (ids digest differs)")
    want = sorted(ids)
    for e, p in enumerate(epochs):
        if sorted(p) != want:
            raise OrdermergeError(
                f"{path}: epoch {e + 1} is not a permutation of the dataset's {len(ids)} ids"
            )
    return order


def ablation_subsets(n: int, m: int, count: int, seed: int, replicate: int = 1) -> list[tuple[int, ...]]:
    """The order subsets of size m < n that an ablation merges in one replicate: `count` of the
    C(n, m) subsets of orders 1..n drawn without replacement from (seed, replicate, m), sorted;
    all of them where `count` ≥ C(n, m). Claim e averages over them (and over replicates), so
    no single nested subset (orders 1..m) stands for "m orders"."""
    from itertools import combinations

    if not 1 <= m < n:
        raise OrdermergeError(f"ablation size {m}: expected 1 ≤ m < {n} (the number of orders)")
    every = list(combinations(range(1, n + 1), m))
    if count >= len(every):
        return every
    return sorted(_rng(seed, f"replicate{replicate}", "ablation", m).sample(every, count))
