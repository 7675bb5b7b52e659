"""response_loss: the teacher-forced mean NLL of each reference response (lower is better)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..jsonl import read_jsonl
from ..text import PromptFormat, encode, per_sample_nll


def run(model_dir: Path, loaded: tuple[Any, Any], cfg: dict[str, Any], prompt: PromptFormat,
        progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model, tok = loaded
    rows = read_jsonl(cfg["data"])[: cfg.get("limit")]
    enc = [encode(tok, r["prompt"], r["response"], prompt, cfg["max_length"]) for r in rows]
    losses, _ = per_sample_nll(model, enc, tok.pad_token_id, cfg["batch_size"], progress)
    items = [{"id": r["id"], "prompt": r["prompt"], "completion": None, "reference": r["response"],
              "score": loss} for r, loss in zip(rows, losses, strict=True)]
    return items, {}
