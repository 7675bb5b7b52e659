"""Merging N sub-models of one base: the method implementations (strategies) and the
streaming engine. Each method's description (parameters, randomised or not) is its entry in
ordermerge.catalog.METHODS."""

from .engine import MergePlan, chunk_rng, merge
from .strategies import CHUNK, REGISTRY, Group, Merged, Rng

__all__ = ["CHUNK", "REGISTRY", "Group", "MergePlan", "Merged", "Rng", "chunk_rng", "merge"]
