"""The merge methods' code: one short function per method, over the values of ONE parameter
name (what each method is, its parameters included, is its entry in ordermerge.catalog).

Notation: base θ0, sub-models θ1..θN, task vectors τi = θi − θ0, weights w.
Each function receives a `Group` (the N sub-model slices and the base slice, stacked, plus cached
exact "changed" masks), the weights and a generator, and returns the merged slice. The engine
calls it on consecutive chunks of a tensor's flattened elements (see CHUNK); every method
is elementwise given its per-chunk statistics (TIES's trim cut and tie budget, computed over
the whole tensor by the method's `prepare`). Arithmetic methods compute in float32 (or wider);
the engine casts to the output dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..catalog import METHODS

# Elements per work unit of the engine (and of TIES's cut search). Random strategies draw from
# one generator per chunk, so this constant is part of what a seed means: changing it changes
# random merges (never the other strategies).
CHUNK = 1 << 18

# signed integer views of float dtypes, for exact comparisons on the stored bits
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class Rng:
    """Uniform random bits from one PCG64 stream. numpy guarantees the raw output of its bit
    generators (and SeedSequence seeding) stay the same across versions; raw 32-bit draws are
    cheaper than torch.rand's floats on the CPU, and comparisons stay in integers."""

    def __init__(self, seed: int):
        self._bits = np.random.PCG64(seed)

    def int32(self, shape: tuple[int, ...]) -> np.ndarray:
        """Integers uniform over all 2^32 int32 values (two per raw 64-bit output)."""
        n = math.prod(shape)
        return self._bits.random_raw((n + 1) // 2).view("<i4")[:n].reshape(shape)

    @staticmethod
    def cut(p: float) -> int:
        """The c with P(x < c) = p for x = int32(), to within 2^-32 (p = 1 gives 1 − 2^-32)."""
        return min(round(p * 2**32) - 2**31, 2**31 - 1)

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 uniform on [0, 1), a multiple of 2^-24 (exact in float32)."""
        top24 = self.int32(shape) >> 8  # arithmetic shift: uniform on [-2^23, 2^23)
        return (top24.astype(np.float32) + 2**23) * np.float32(2**-24)


@dataclass
class Group:
    """The values of one parameter name: `stack` holds θ1..θN in rows 0..N-1 and θ0 in row N,
    all of one dtype and shape (the engine reads its inputs straight into these rows)."""

    name: str
    stack: torch.Tensor

    @classmethod
    def of(cls, name: str, base: torch.Tensor, models: Sequence[torch.Tensor]) -> Group:
        return cls(name, torch.stack([*models, base]))

    @property
    def base(self) -> torch.Tensor:
        return self.stack[-1]

    @property
    def models(self) -> torch.Tensor:
        return self.stack[:-1]

    @cached_property
    def bits(self) -> np.ndarray:
        """The stack's stored bits as signed integers, in numpy: on CPU its comparison and
        counting kernels are faster than torch's (docs/MEASUREMENTS.md), and the two share memory."""
        return self.stack.view(_INT_VIEW[self.stack.element_size()]).numpy()

    def all_finite(self) -> bool:
        """No NaN or ±Inf anywhere: min and max are NaN or infinite iff some element is."""
        return self.stack.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(self.stack))).all())

    @cached_property
    def changed(self) -> torch.Tensor:
        """changed[i][d] = θi[d] ≠ θ0[d], compared exactly in the stored dtype.

        For finite IEEE values a == b iff their bits are equal or both are ±0, so the bits are
        compared, and +0 vs −0 counts as unchanged."""
        if not self.stack.is_floating_point():
            return self.models != self.base
        bits = self.bits
        magnitude = np.iinfo(bits.dtype).max  # every bit but the sign
        changed = bits[:-1] != bits[-1]
        zero = (bits[-1] & magnitude) == 0
        if zero.any():
            changed[:, zero] &= (bits[:-1][:, zero] & magnitude) != 0
        return torch.from_numpy(changed)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.promote_types(self.stack.dtype, torch.float32)

    def task_vectors(self) -> list[torch.Tensor]:
        b = self.base.to(self.compute_dtype)
        return [m.to(self.compute_dtype) - b for m in self.models]


@dataclass
class Merged:
    tensor: torch.Tensor
    picks: torch.Tensor | None = None  # selection only: elements taken from each sub-model


# prepare(base, model, chunk=…, **params) -> one statistic per chunk, from a sub-model's whole tensor
Prepare = Callable[..., list[Any]]


@dataclass(frozen=True)
class Implementation:
    fn: Callable[..., Merged]
    prepare: Prepare | None = None  # per-chunk statistics, passed to fn as `stats`


# method name -> its code; what the method is (parameters, randomised, weight normalisation,
# what it reports) is its entry in ordermerge.catalog.METHODS
REGISTRY: dict[str, Implementation] = {}


def register(name: str, prepare: Prepare | None = None):
    if name not in METHODS:
        raise KeyError(f"merge method {name!r} has no entry in ordermerge.catalog.METHODS")

    def deco(fn: Callable[..., Merged]) -> Callable[..., Merged]:
        REGISTRY[name] = Implementation(fn, prepare)
        return fn

    return deco


@register("weighted_average")
def weighted_average(g: Group, w: list[float], rng: Rng) -> Merged:
    """θ = Σ_i w_i θ_i, with w normalised to sum to 1 (uniform by default)."""
    acc = torch.zeros(g.base.shape, dtype=g.compute_dtype)
    for wi, m in zip(w, g.models, strict=True):
        acc.add_(m, alpha=wi)  # mixed-dtype add casts on the fly: no fp32 copy of m
    return Merged(acc)


def _select(g: Group, w: list[float], rng: Rng, resample: bool) -> Merged:
    # Inverse CDF, one uniform draw per element: k_d = #{i : C_i[d] ≤ u_d·S_d}, where C_i is the
    # cumulative mass Σ_{j≤i} m_j of m_j = w_j (plain) or w_j·[θj[d] ≠ θ0[d]] (resampling) and
    # S_d = C_N[d]; row k_d of the stack is θ_{k_d+1}, and row N is θ0. In numpy (see `bits`).
    n = len(w)
    if resample:
        changed = g.changed.numpy().reshape(n, -1)
        cum = changed * np.float32(w)[:, None]
        for i in range(1, n):  # (numpy's cumsum over axis 0 is far slower than this loop)
            cum[i] += cum[i - 1]
        total = cum[-1]
        # u ≤ 1 − 2^-24, so u·S < S in float32 for every normal S > 0 (S·(1 − u) is at least
        # half an ulp of S, and exactly half only where the product is representable): k_d
        # lands on a sub-model with mass; where S_d = 0 every C_i ≤ 0 = u·S, so k_d = N: θ0
        below = cum <= rng.uniform(total.shape) * total
    else:  # constant masses: x ≥ cut(C_i/S) for the n−1 inner boundaries, in 32-bit integers
        cum = list(itertools.accumulate(w))
        cuts = np.array([Rng.cut(c / cum[-1]) for c in cum[:-1]], dtype=np.int32)
        below = cuts[:, None] <= rng.int32((g.base.numel(),))
    pick = below.sum(0, dtype=np.uint8)  # fewer than 256 sub-models
    out = torch.gather(torch.from_numpy(g.bits.reshape(n + 1, -1)), 0,
                       torch.from_numpy(pick.astype(np.int64))[None])
    # rows of `below` are nested (C_i grows with i): #{k_d ≥ k} = count(row k−1)
    at_least = [pick.size, *(np.count_nonzero(row) for row in below), 0][: n + 1]
    picks = torch.tensor([at_least[k] - at_least[k + 1] for k in range(n)])
    return Merged(out.view(g.stack.dtype).view(g.base.shape), picks)


@register("parameter_selection")
def parameter_selection(g: Group, w: list[float], rng: Rng, resample: bool = False) -> Merged:
    """θ[d] = θ_{k_d}[d] with k_d ~ Categorical(w) independently for every element d.

    resample=True: k_d ~ Categorical(w ⊙ c_d) with c_{d,i} = [θi[d] ≠ θ0[d]] (exact, in the
    stored dtype): a draw never lands on a sub-model that left d at the base value; where no
    sub-model changed d, θ[d] = θ0[d]. Values are copied, never computed: every output element
    is bit-identical to one input element and the dtype is unchanged.
    """
    return _select(g, w, rng, resample)


@register("task_arithmetic")
def task_arithmetic(g: Group, w: list[float], rng: Rng, **p: float) -> Merged:
    """θ = θ0 + λ Σ_i w_i τ_i (weights as given, default 1; Ilharco et al. 2023)."""
    acc = g.base.to(g.compute_dtype).clone()
    for wi, t in zip(w, g.task_vectors(), strict=True):
        acc.add_(t, alpha=p["lambda"] * wi)
    return Merged(acc)


def _magnitudes(base: torch.Tensor, model: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
    """|τ| chunk by chunk, in the compute dtype the merge uses (float32, or float64)."""
    dt = torch.promote_types(model.dtype, torch.float32)
    for b, m in zip(base.flatten().split(chunk), model.flatten().split(chunk), strict=True):
        yield m.to(dt, copy=True).sub_(b).abs_()


def _kth_largest(base: torch.Tensor, model: torch.Tensor, k: int) -> tuple[float, int, int]:
    """(c, #{|τ| > c}, #{|τ| = c}) for c the k-th largest |τ|, 0 < k < numel.

    An exact radix select rather than a sort: the float32 bits of |τ| ≥ 0 order like the
    values, so a histogram of the high 16 bits, then one of the low 16 bits inside the bin that
    holds the rank, find the (numel − k)-th smallest. Both passes go chunk by chunk, so memory
    beyond the two inputs stays at one chunk (torch.kthvalue copies the tensor and adds int64
    indices: three times the input in float32)."""
    numel = base.numel()
    if model.dtype == torch.float64:  # rare enough for the simple way
        mag = (model - base).abs().flatten()
        cut = mag.kthvalue(numel - k + 1).values
        return float(cut), int((mag > cut).sum()), int((mag == cut).sum())

    def bits() -> Iterator[np.ndarray]:
        for mag in _magnitudes(base, model, CHUNK):
            yield mag.view(torch.int32).numpy()

    rank = numel - k  # 0-based, ascending
    high = sum(np.bincount(x >> 16, minlength=1 << 15) for x in bits())
    h = int(np.searchsorted(np.cumsum(high), rank, side="right"))
    rank -= int(high[:h].sum())
    low = sum(np.bincount(x[(x >> 16) == h] & 0xFFFF, minlength=1 << 16) for x in bits())
    lo = int(np.searchsorted(np.cumsum(low), rank, side="right"))
    cut = float(np.array((h << 16) | lo, dtype=np.int32).view(np.float32))
    return cut, int(high[h + 1:].sum() + low[lo + 1:].sum()), int(low[lo])


def trim_threshold(base: torch.Tensor, model: torch.Tensor, density: float, **_: Any) -> float:
    """TIES's magnitude cut for one sub-model's whole tensor: the k-th largest |τ|,
    k = int(density·numel); 0 keeps everything, +inf nothing."""
    numel = base.numel()
    k = int(density * numel)
    if k >= numel:
        return 0.0
    return _kth_largest(base, model, k)[0] if k else float("inf")


def trim_plan(base: torch.Tensor, model: torch.Tensor, density: float, chunk: int,
              **_: Any) -> list[tuple[float, int]]:
    """TIES's trim of one sub-model's tensor as one (cut c, tie budget) pair per chunk: the
    chunk keeps every entry with |τ| > c and its first `budget` entries with |τ| = c, so the
    tensor keeps exactly k = int(density·numel) entries, ties broken by the lowest flat index
    (whatever the chunk size or thread count)."""
    numel = base.numel()
    n_chunks = max(1, -(-numel // chunk))
    k = int(density * numel)
    if k == 0:
        return [(float("inf"), 0)] * n_chunks
    if k >= numel:
        return [(0.0, chunk)] * n_chunks  # every entry, 0 included
    cut, greater, tied = _kth_largest(base, model, k)
    budget = k - greater  # tied entries to keep, 1 ≤ budget ≤ tied
    if budget == tied:
        return [(cut, chunk)] * n_chunks
    plan = []
    for mag in _magnitudes(base, model, chunk):  # hand the budget out in index order
        here = min(budget, int((mag == cut).sum()))
        plan.append((cut, here))
        budget -= here
    return plan


def _disjoint_mean(taus: list[torch.Tensor], w: list[float]) -> torch.Tensor:
    # TIES sign election: γ = sign(Σ_i τ_i) (+ where the sum is 0); then the mean over the
    # sub-models whose entry agrees with γ: Σ_i w_i τ_i [sign τ_i = γ] / max(1, Σ_i [sign τ_i = γ]).
    total = taus[0].clone()
    for t in taus[1:]:
        total.add_(t)
    gamma = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    acc = torch.zeros_like(total)
    count = torch.zeros_like(total)
    for wi, t in zip(w, taus, strict=True):
        agree = (torch.sign(t) == gamma).to(t.dtype)
        acc.add_(t * agree, alpha=wi)
        count.add_(agree)
    return acc / count.clamp(min=1.0)


@register("ties", prepare=trim_plan)
def ties(
    g: Group, w: list[float], rng: Rng, stats: list[tuple[float, int]] | None = None, **p: float
) -> Merged:
    """θ = θ0 + λ·disjoint_mean(trim_density(τ_i)) (Yadav et al. 2023, TIES-merging).

    trim keeps exactly k = int(density·numel) entries of each τ_i, those of largest |τ_i|
    (ties at the cut: the lowest flat indices first; `stats` holds each sub-model's cut and tie
    budget for this chunk, from trim_plan); disjoint_mean elects γ = sign(Σ_i τ̂_i) and averages
    w_i τ̂_i over the sub-models whose sign agrees with γ.
    """
    if stats is None:  # a whole tensor, called directly rather than chunked by the engine
        stats = [trim_plan(g.base, m, p["density"], chunk=max(1, g.base.numel()))[0] for m in g.models]
    taus = []
    for t, (cut, budget) in zip(g.task_vectors(), stats, strict=True):
        mag = t.abs()
        tied = (mag == cut).flatten()
        if int(tied.sum()) > budget:
            tied &= tied.cumsum(0) <= budget
        taus.append(t * ((mag > cut) | tied.view(mag.shape)))
    return Merged(g.base.to(g.compute_dtype) + p["lambda"] * _disjoint_mean(taus, w))


def _dare(g: Group, rng: Rng, p: float) -> list[torch.Tensor]:
    # One Bernoulli(1−p) keep-mask per sub-model, drawn in sub-model order from the generator;
    # survivors rescaled by 1/(1−p) so E[τ̃_i] = τ_i.
    out = []
    for t in g.task_vectors():
        keep = torch.from_numpy(rng.int32(tuple(t.shape)) < Rng.cut(1.0 - p)) if p > 0 else 1.0
        out.append(t * keep / (1.0 - p))
    return out


@register("dare_linear")
def dare_linear(g: Group, w: list[float], rng: Rng, **p: float) -> Merged:
    """θ = θ0 + λ Σ_i w_i τ̃_i, τ̃_i = τ_i ⊙ m_i / (1−p), m_i ~ Bernoulli(1−p) (Yu et al. 2024)."""
    acc = g.base.to(g.compute_dtype).clone()
    for wi, t in zip(w, _dare(g, rng, p["drop_rate"]), strict=True):
        acc.add_(t, alpha=p["lambda"] * wi)
    return Merged(acc)


@register("dare_ties")
def dare_ties(g: Group, w: list[float], rng: Rng, **p: float) -> Merged:
    """θ = θ0 + λ·disjoint_mean(τ̃_i): DARE's random drop and rescale, then TIES's sign election."""
    taus = _dare(g, rng, p["drop_rate"])
    return Merged(g.base.to(g.compute_dtype) + p["lambda"] * _disjoint_mean(taus, w))
