"""Merging N sub-models of one base: strategy registry and streaming engine.

Attributes load lazily so that `ordermerge.merge.params` (config validation) does not import
torch."""

from importlib import import_module
from typing import Any

_WHERE = {
    "merge": "engine",
    "chunk_rng": "engine",
    "CHUNK": "strategies",
    "parse_params": "params",
    "REGISTRY": "strategies",
    "Group": "strategies",
    "Merged": "strategies",
    "Rng": "strategies",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
