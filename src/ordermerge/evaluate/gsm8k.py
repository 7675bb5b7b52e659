"""gsm8k: greedy generation, the final number (extract.extract_number) against the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..jsonl import read_jsonl
from ..text import PromptFormat, format_prompt
from .extract import extract_number
from .generate import generate

# lm-evaluation-harness's gsm8k `until`: a raw model goes on to write the next few-shot
# question; a chat model ends at EOS (which generate() stops at anyway)
STOP = ("Question:", "</s>", "<|im_end|>")


def run(model_dir: Path, loaded: tuple[Any, Any], cfg: dict[str, Any], prompt: PromptFormat,
        progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model, tok = loaded
    rows = read_jsonl(cfg["data"])[: cfg.get("limit")]
    if rows and "answer" not in rows[0] and "question" in rows[0]:
        from ..data import adapt_gsm8k

        rows = adapt_gsm8k(rows, cfg["data"])
    shots = ""
    if cfg.get("fewshot_path"):
        ex = read_jsonl(cfg["fewshot_path"])[: cfg["fewshot_k"]]
        shots = "".join(f"Question: {e.get('question', e.get('prompt'))}\nAnswer: "
                        f"{e.get('answer') if 'question' in e else e['response']}\n\n" for e in ex)
    prompts = [format_prompt(tok, shots + r["prompt"], prompt) for r in rows]
    outs, speed = generate(model, tok, prompts, cfg["max_new_tokens"], cfg["batch_size"],
                           stop=STOP, progress=progress)
    items = []
    for r, o in zip(rows, outs, strict=True):
        pred = extract_number(o)
        ref = extract_number(str(r["answer"]))
        items.append({"id": r["id"], "prompt": r["prompt"], "completion": o, "reference": ref,
                      "prediction": pred, "score": float(pred is not None and pred == ref)})
    return items, speed
