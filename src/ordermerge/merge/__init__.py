"""Merging N sub-models of one base: strategy registry and streaming engine."""

from .engine import merge, parse_params, tensor_generator
from .strategies import REGISTRY, Group, Merged

__all__ = ["REGISTRY", "Group", "Merged", "merge", "parse_params", "tensor_generator"]
