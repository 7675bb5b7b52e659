"""Stage subcommands (registered on import by cli): prepare-base, prepare-data, make-order, sft,
sample-losses, evaluate, aggregate, figures."""

from __future__ import annotations

import argparse
import json

from .cli import command


def _prepare_base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="tiny | gguf:<pkg>/<file> | HF folder | hub id")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="init seed (tiny only)")
    p.add_argument("--tiny", default="{}", help="JSON: hidden_size, num_layers, ... (tiny only)")
    p.add_argument("--out", required=True)


@command("prepare-base", _prepare_base_args)
def _prepare_base(a: argparse.Namespace) -> None:
    """Import a base model into an HF folder (safetensors, tokenizer, chat template)."""
    from .models import prepare_base

    out = prepare_base(a.spec, a.out, a.dtype, a.seed, json.loads(a.tiny))
    print(f"base model {a.spec} -> {out}")
