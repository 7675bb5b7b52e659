"""Merge strategies: one short function per method, over the tensors of ONE parameter name.

Notation (as in DESIGN.md): base θ0, sub-models θ1..θN, task vectors τi = θi − θ0, weights w.
Each function receives a `Group` (the base tensor, the N sub-model tensors, cached exact
"changed" masks) plus the weights and a per-tensor generator, and returns the merged tensor.
Arithmetic strategies compute in float32 (or wider); the engine casts to the output dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .params import PARAMS, Param


@dataclass
class Group:
    """The tensors of one parameter name: base and sub-models, all of one dtype and shape."""

    name: str
    base: torch.Tensor
    models: list[torch.Tensor]

    @cached_property
    def changed(self) -> list[torch.Tensor]:
        """changed[i][d] = θi[d] ≠ θ0[d], compared exactly in the stored dtype."""
        return [m != self.base for m in self.models]

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.promote_types(self.base.dtype, torch.float32)

    def task_vectors(self) -> list[torch.Tensor]:
        b = self.base.to(self.compute_dtype)
        return [m.to(self.compute_dtype) - b for m in self.models]


@dataclass
class Merged:
    tensor: torch.Tensor
    picks: torch.Tensor | None = None  # selection only: elements taken from each sub-model


@dataclass(frozen=True)
class Strategy:
    fn: Callable[..., Merged]
    params: dict[str, Param] = field(default_factory=dict)
    normalise_weights: bool = True


REGISTRY: dict[str, Strategy] = {}


def register(name: str, normalise_weights: bool = True):
    def deco(fn: Callable[..., Merged]) -> Callable[..., Merged]:
        REGISTRY[name] = Strategy(fn, PARAMS[name], normalise_weights)
        return fn

    return deco


@register("weighted_average")
def weighted_average(g: Group, w: list[float], gen: torch.Generator) -> Merged:
    """θ = Σ_i w_i θ_i, with w normalised to sum to 1 (uniform by default)."""
    acc = torch.zeros(g.base.shape, dtype=g.compute_dtype)
    for wi, m in zip(w, g.models, strict=True):
        acc.add_(m, alpha=wi)  # mixed-dtype add casts on the fly: no fp32 copy of m
    return Merged(acc)


def _select(g: Group, w: list[float], gen: torch.Generator, resample: bool) -> Merged:
    # Inverse-CDF draw with one uniform per element: k_d = min{k : u_d·S_d < Σ_{i≤k} m_i[d]},
    # where m_i = w_i (plain) or w_i·[θi[d] ≠ θ0[d]] (resampling) and S_d = Σ_i m_i[d].
    # The last candidate with mass also takes u·S == S (fp32 rounding), so no draw is lost.
    u = torch.rand(g.base.shape, generator=gen, dtype=torch.float32)
    mass = [g.changed[i] * wi if resample else torch.tensor(wi) for i, wi in enumerate(w)]
    total = torch.zeros((), dtype=torch.float32)
    for m in mass:
        total = total + m
    r = u * total
    pick = torch.full(g.base.shape, -1, dtype=torch.int16)
    cum = torch.zeros((), dtype=torch.float32)
    for i, m in enumerate(mass):
        cum = cum + m
        hit = (pick < 0) & ((r < cum) | (cum >= total)) & (m > 0)
        pick.masked_fill_(hit, i)
    out = g.base.clone()
    for i, m in enumerate(g.models):
        torch.where(pick == i, m, out, out=out)
    counts = torch.bincount(pick.flatten().long() + 1, minlength=len(w) + 1)[1:]
    return Merged(out, counts)


@register("parameter_selection")
def parameter_selection(
    g: Group, w: list[float], gen: torch.Generator, resample: bool = False
) -> Merged:
    """θ[d] = θ_{k_d}[d] with k_d ~ Categorical(w) independently for every element d.

    resample=True: k_d ~ Categorical(w ⊙ c_d) with c_{d,i} = [θi[d] ≠ θ0[d]] (exact, in the
    stored dtype): a draw never lands on a sub-model that left d at the base value; where no
    sub-model changed d, θ[d] = θ0[d]. Values are copied, never computed: every output element
    is bit-identical to one input element and the dtype is unchanged.
    """
    return _select(g, w, gen, resample)


@register("task_arithmetic", normalise_weights=False)
def task_arithmetic(g: Group, w: list[float], gen: torch.Generator, **p: float) -> Merged:
    """θ = θ0 + λ Σ_i w_i τ_i (weights as given, default 1; Ilharco et al. 2023)."""
    acc = g.base.to(g.compute_dtype).clone()
    for wi, t in zip(w, g.task_vectors(), strict=True):
        acc.add_(t, alpha=p["lambda"] * wi)
    return Merged(acc)


def _trim(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the entries with |t| ≥ the k-th largest |t|, k = int(density·numel) (ties kept)."""
    k = int(density * t.numel())
    if k >= t.numel():
        return t
    if k == 0:
        return torch.zeros_like(t)
    mag = t.abs().flatten()
    threshold = mag.kthvalue(t.numel() - k + 1).values
    return t * (t.abs() >= threshold)


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


@register("ties", normalise_weights=False)
def ties(g: Group, w: list[float], gen: torch.Generator, **p: float) -> Merged:
    """θ = θ0 + λ·disjoint_mean(trim_density(τ_i)) (Yadav et al. 2023, TIES-merging).

    trim keeps each τ_i's top `density` fraction by magnitude; disjoint_mean elects
    γ = sign(Σ_i τ̂_i) and averages w_i τ̂_i over the sub-models whose sign agrees with γ.
    """
    taus = [_trim(t, p["density"]) for t in g.task_vectors()]
    return Merged(g.base.to(g.compute_dtype) + p["lambda"] * _disjoint_mean(taus, w))


def _dare(g: Group, gen: torch.Generator, p: float) -> list[torch.Tensor]:
    # One Bernoulli(1−p) keep-mask per sub-model, drawn in sub-model order from the tensor's
    # generator; survivors rescaled by 1/(1−p) so E[τ̃_i] = τ_i.
    out = []
    for t in g.task_vectors():
        keep = torch.rand(t.shape, generator=gen, dtype=torch.float32) < (1.0 - p)
        out.append(t * keep / (1.0 - p))
    return out


@register("dare_linear", normalise_weights=False)
def dare_linear(g: Group, w: list[float], gen: torch.Generator, **p: float) -> Merged:
    """θ = θ0 + λ Σ_i w_i τ̃_i, τ̃_i = τ_i ⊙ m_i / (1−p), m_i ~ Bernoulli(1−p) (Yu et al. 2024)."""
    acc = g.base.to(g.compute_dtype).clone()
    for wi, t in zip(w, _dare(g, gen, p["drop_rate"]), strict=True):
        acc.add_(t, alpha=p["lambda"] * wi)
    return Merged(acc)


@register("dare_ties", normalise_weights=False)
def dare_ties(g: Group, w: list[float], gen: torch.Generator, **p: float) -> Merged:
    """θ = θ0 + λ·disjoint_mean(τ̃_i): DARE's random drop and rescale, then TIES's sign election."""
    taus = _dare(g, gen, p["drop_rate"])
    return Merged(g.base.to(g.compute_dtype) + p["lambda"] * _disjoint_mean(taus, w))
