"""Evaluation: run a benchmark (one module each, listed in catalog.BENCHMARKS) on a model.

Each run writes `{name}.json` (metric, value, n, bootstrap 95% CI, timing, model fingerprint,
settings) and `{name}.items.jsonl` (id, prompt, completion, reference, score) for paired
statistics between models."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from .. import OrdermergeError, __version__
from ..catalog import BENCHMARKS
from ..config import benchmark_settings
from ..gpu import cap_memory, use_expandable_segments, within_declared_memory
from ..jsonl import write_jsonl
from ..safetensors_io import folder_fingerprint
from ..text import DEFAULT_PROMPT, PromptFormat


def bootstrap_ci(scores: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean (seeded: identical across runs)."""
    if not scores:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1])


def device() -> str:
    from ..models import inference_placement

    return inference_placement()[0]


def compute_dtype() -> str:
    from ..models import inference_placement

    return str(inference_placement()[1]).removeprefix("torch.")


EVAL_META = "ordermerge_eval.json"  # the benchmarks an evaluation folder holds; marks it as ours


def _inputs(model_dir: str | Path, cfg: dict[str, Any]) -> list[str | Path]:
    return [model_dir, *(cfg[k] for k in ("data", "fewshot_path", "include_path") if cfg.get(k))]


def evaluate(model_dir: str | Path, benchmark: str, cfg: dict[str, Any], out_dir: str | Path,
             name: str | None = None, progress: bool = True,
             loaded: tuple[Any, Any] | None = None,
             prompt: PromptFormat = DEFAULT_PROMPT) -> dict[str, Any]:
    """Run one benchmark on one model folder; write `{name}.json` and `{name}.items.jsonl`.

    `loaded` = (model, tokenizer) already in memory (evaluate_suite loads them once, and
    checks its own output folder)."""
    from ..atomic import atomic_file, check_output, say_replacing

    cfg = benchmark_settings(benchmark, cfg, "--config")
    spec = BENCHMARKS[benchmark]
    if spec.reads_split and "data" not in cfg:
        raise OrdermergeError(f"benchmark {benchmark}: setting 'data' (a test JSONL) is required")
    loaded_here = loaded is None
    if loaded_here:
        check_output(out_dir, EVAL_META, _inputs(model_dir, cfg))
    if benchmark == "humaneval":
        from .humaneval import sandbox_isolation

        sandbox_isolation(cfg)  # refuse before loading a model, not after generating
    name = name or benchmark
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    t0 = time.perf_counter()
    if loaded is None and spec.loads_model:
        loaded = _load(model_dir)
    with within_declared_memory("evaluate"):  # beyond its gpu_mem_mb: fails alone, in one line
        items, extra = import_module(spec.module).run(model_dir, loaded, cfg, prompt, progress)
    scores = [it["score"] for it in items]
    value = sum(scores) / len(scores) if scores else float("nan")
    lo, hi = bootstrap_ci(scores)
    result = {
        "benchmark": benchmark, "name": name, "metric": extra.get("metric", spec.metric),
        "value": value, "n": len(items), "ci95": [lo, hi],
        "seconds": round(time.perf_counter() - t0, 3),
        "tokens_per_s": round(extra.get("tokens_per_s", 0.0), 2) or None,
        "model": folder_fingerprint(model_dir), "settings": cfg, "prompt": asdict(prompt),
        "ordermerge_version": __version__,
    }
    if "lm_eval" in extra:
        result["lm_eval"] = extra["lm_eval"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if loaded_here and (out_dir / f"{name}.json").is_file():  # a suite publishes a fresh folder
        say_replacing(out_dir / f"{name}.json", out_dir / f"{name}.json", "ordermerge evaluate")
    write_jsonl(out_dir / f"{name}.items.jsonl", items)
    with atomic_file(out_dir / f"{name}.json") as tmp:  # last: its presence means the items are complete
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    meta = out_dir / EVAL_META
    held = json.loads(meta.read_text())["benchmarks"] if meta.exists() else []
    with atomic_file(meta) as tmp:
        tmp.write_text(json.dumps({"benchmarks": sorted({*held, name})}) + "\n")
    return result


def _load(model_dir: Path) -> tuple[Any, Any]:
    """The model on the job's device, the process capped at the GPU memory the job declared
    (resource gpu_mem_mb, ordermerge.gpu) before anything is allocated."""
    from ..models import load_model, load_tokenizer

    use_expandable_segments()
    cap_memory(torch.device(device()))
    tok = load_tokenizer(str(model_dir))
    with within_declared_memory("evaluate"):
        return load_model(model_dir, dtype=getattr(torch, compute_dtype()), device=device()), tok


def evaluate_suite(model_dir: str | Path, suite: dict[str, dict[str, Any]], out_dir: str | Path,
                   progress: bool = True, prompt: PromptFormat = DEFAULT_PROMPT) -> list[dict[str, Any]]:
    """Every benchmark of `suite` ({name: {"benchmark": ..., "settings": {...}}}) on one model,
    loaded once. The folder is built beside `out_dir` and renamed into place when all are done,
    so it is absent or complete, never half-evaluated."""
    from ..atomic import atomic_dir

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not suite:
        raise OrdermergeError("evaluate --suite: no benchmarks given")
    for name, spec in suite.items():
        if not isinstance(spec, dict) or spec.get("benchmark") not in BENCHMARKS:
            raise OrdermergeError(f"evaluate --suite: {name}: expected {{\"benchmark\": one of "
                                  f"{', '.join(BENCHMARKS)}, \"settings\": {{...}}}}")
        settings = benchmark_settings(spec["benchmark"], spec.get("settings", {}), f"--suite {name}")
        if spec["benchmark"] == "humaneval":
            from .humaneval import sandbox_isolation

            sandbox_isolation(settings)
    inputs = [p for spec in suite.values() for p in _inputs(model_dir, spec.get("settings", {}))]
    with atomic_dir(out_dir, EVAL_META, inputs) as tmp:
        loaded = None
        if any(BENCHMARKS[s["benchmark"]].loads_model for s in suite.values()):
            loaded = _load(model_dir)
        results = [evaluate(model_dir, spec["benchmark"], dict(spec.get("settings", {})), tmp, name,
                            progress, loaded, prompt) for name, spec in suite.items()]
    return results
