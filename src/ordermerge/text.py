"""Prompt formatting, tokenisation with response masks, batching, and per-sample response NLL.

Shared by SFT, per-sample losses and evaluation, so that "the response tokens" mean the same
thing everywhere: the tokens of `response + EOS` after the formatted prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import OrdermergeError

IGNORE = -100


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt becomes model input: ONE per experiment (config key `prompt`), used by the
    data statistics, SFT, sample losses and every benchmark alike.

    system_prompt="" sends an explicit empty system turn, because SmolLM2's template otherwise
    inserts a ~20-token default system prompt; None keeps the template's default."""

    chat_template: bool = True
    system_prompt: str | None = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PromptFormat:
        d = dict(d or {})
        unknown = sorted(set(d) - {"chat_template", "system_prompt"})
        if unknown:
            raise OrdermergeError(f"prompt format: unknown key {unknown[0]!r} (chat_template, system_prompt)")
        return cls(**d)

    def uses_template(self, tokenizer) -> bool:
        return self.chat_template and bool(getattr(tokenizer, "chat_template", None))


DEFAULT_PROMPT = PromptFormat()


def format_prompt(tokenizer, prompt: str, fmt: PromptFormat = DEFAULT_PROMPT) -> str:
    """The model's input text before the response: the chat template (if `fmt` asks for it and
    the tokenizer has one), else the prompt and a newline."""
    if fmt.uses_template(tokenizer):
        messages = [{"role": "user", "content": prompt}]
        if fmt.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": fmt.system_prompt})
        # transformers 5 returns a dict unless return_dict=False
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, return_dict=False
        )
    return prompt + "\n"


def encode(
    tokenizer, prompt: str, response: str, fmt: PromptFormat = DEFAULT_PROMPT,
    max_len: int | None = None,
) -> tuple[list[int], int]:
    """Token ids of prompt+response+EOS and the number of prompt tokens (masked from the loss).

    Prompt and response are tokenised separately so the boundary is exact.
    """
    p = tokenizer(format_prompt(tokenizer, prompt, fmt), add_special_tokens=False)[
        "input_ids"
    ]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = p + r
    if max_len is not None:
        ids = ids[:max_len]
    return ids, len(p)


def collate(
    examples: list[tuple[list[int], int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are IGNORE on prompt and padding tokens."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}


def response_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels), aligned so that logits[:, t] predicts labels[:, t]; labels are IGNORE
    outside responses.

    Logits are computed only from the batch's first response position onward: the LM head and
    softmax over a 49k vocabulary are a large share of a small model's forward and backward,
    and prompts are most of each sequence."""
    labels = batch["labels"]
    answered = (labels != IGNORE).any(0).nonzero()
    first = max(int(answered[0]) if len(answered) else labels.shape[1] - 1, 1)
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        # logits at position t predict token t + 1: keep t = first − 1 … T − 2
        keep = torch.arange(first - 1, labels.shape[1] - 1)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=keep)
        logits = out.logits
    else:  # a model without the option: the full logits, sliced
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, first - 1 : -1]
    return logits, labels[:, first:].to(logits.device)


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample summed NLL over response tokens and the per-sample response-token count."""
    logits, labels = response_logits(model, batch)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE,
        reduction="none",
    ).view(labels.shape)
    mask = labels != IGNORE
    return (nll * mask).sum(1), mask.sum(1)


def batches_by_length(
    encoded: list[tuple[list[int], int]], batch_size: int
) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (less padding); order is deterministic."""
    idx = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0]), i))
    for s in range(0, len(idx), batch_size):
        yield idx[s : s + batch_size]


@torch.no_grad()
def per_sample_nll(
    model, encoded: list[tuple[list[int], int]], pad_id: int, batch_size: int = 16,
    progress: bool = False, desc: str = "loss",
) -> tuple[list[float], list[int]]:
    """Mean response NLL of every sample (fp32 logits), in input order, and its token count."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    sums = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    groups = list(batches_by_length(encoded, batch_size))
    for group in tqdm(groups, desc=desc, unit="batch", disable=not progress):
        batch = collate([encoded[i] for i in group], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        s, c = token_nll(model, batch)
        for j, i in enumerate(group):
            sums[i] = float(s[j])
            counts[i] = int(c[j])
    means = [s / c if c else float("nan") for s, c in zip(sums, counts, strict=True)]
    return means, counts
