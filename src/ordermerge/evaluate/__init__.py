"""Benchmarks: response_loss, gsm8k, humaneval, lm_eval. Each writes `{name}.json` (metric,
value, n, bootstrap 95% CI, timing, model fingerprint, settings) and `{name}.items.jsonl`
(id, prompt, completion, reference, score) for paired statistics between models."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from .. import OrdermergeError, __version__
from ..config import BENCHMARK_SETTINGS as KEYS
from ..config import BENCHMARKS
from ..safetensors_io import folder_fingerprint
from ..text import encode, format_prompt, read_jsonl, write_jsonl


def bootstrap_ci(scores: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean (seeded: identical across runs)."""
    if not scores:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    return (means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1])


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _response_loss(model, tok, cfg: dict[str, Any], progress: bool):
    from ..text import per_sample_nll

    rows = read_jsonl(cfg["data"])[: cfg.get("limit")]
    sp = cfg.get("system_prompt", "")
    enc = [encode(tok, r["prompt"], r["response"], sp, cfg.get("max_length", 1024)) for r in rows]
    losses, _ = per_sample_nll(model, enc, tok.pad_token_id, cfg.get("batch_size", 16), progress)
    items = [{"id": r["id"], "prompt": r["prompt"], "completion": None, "reference": r["response"],
              "score": loss} for r, loss in zip(rows, losses, strict=True)]
    return "mean_response_nll", items, {}


def _gsm8k(model, tok, cfg: dict[str, Any], progress: bool):
    from .extract import extract_number
    from .generate import BATCH_SIZE, generate

    rows = read_jsonl(cfg["data"])[: cfg.get("limit")]
    if rows and "answer" not in rows[0] and "question" in rows[0]:
        from ..data import adapt_gsm8k

        rows = adapt_gsm8k(rows, cfg["data"])
    shots = ""
    if cfg.get("fewshot_path"):
        ex = read_jsonl(cfg["fewshot_path"])[: cfg.get("fewshot_k", 4)]
        shots = "".join(f"Question: {e.get('question', e.get('prompt'))}\nAnswer: "
                        f"{e.get('answer') if 'question' in e else e['response']}\n\n" for e in ex)
    sp = cfg.get("system_prompt", "")
    prompts = [format_prompt(tok, shots + r["prompt"], sp) for r in rows]
    outs, speed = generate(model, tok, prompts, cfg.get("max_new_tokens", 256),
                           cfg.get("batch_size", BATCH_SIZE), progress=progress)
    items = []
    for r, o in zip(rows, outs, strict=True):
        pred = extract_number(o)
        ref = extract_number(str(r["answer"]))
        items.append({"id": r["id"], "prompt": r["prompt"], "completion": o, "reference": ref,
                      "prediction": pred, "score": float(pred is not None and pred == ref)})
    return "accuracy", items, speed


def _humaneval(model, tok, cfg: dict[str, Any], progress: bool):
    from ..data import humaneval_rows
    from .extract import extract_code, pass_at_k
    from .generate import BATCH_SIZE, generate
    from .sandbox import run_program

    isolate = sandbox_isolation(cfg)
    rows = humaneval_rows()[: cfg.get("limit")]
    n = int(cfg.get("n_samples", 1))
    ks = [k for k in cfg.get("k", [1]) if k <= n]
    chat = cfg.get("chat", False)
    prompts = [format_prompt(tok, "Complete this Python function.\n\n" + r["prompt"]) if chat
               else r["prompt"] for r in rows]
    samples: list[list[str]] = [[] for _ in rows]
    speed: dict[str, float] = {"new_tokens": 0, "seconds": 0.0}
    for s in range(n):
        outs, sp = generate(model, tok, prompts, cfg.get("max_new_tokens", 384),
                            cfg.get("batch_size", BATCH_SIZE), progress=progress, do_sample=n > 1,
                            temperature=cfg.get("temperature", 0.8), seed=cfg.get("seed", 0) + s)
        speed["new_tokens"] += sp["new_tokens"]
        speed["seconds"] += sp["seconds"]
        for i, o in enumerate(outs):
            samples[i].append(o)
    speed["tokens_per_s"] = speed["new_tokens"] / max(speed["seconds"], 1e-9)
    items = []
    for r, outs in zip(rows, samples, strict=True):
        results = [run_program(extract_code(r["prompt"], o, r["entry_point"]), r["tests"],
                               r["entry_point"], cfg.get("timeout", 10.0), prelude=r["prompt"],
                               isolate=isolate) for o in outs]
        c = sum(x.passed for x in results)
        item = {"id": r["id"], "prompt": r["prompt"], "completion": outs[0], "reference": None,
                "status": [x.status for x in results], "n": n, "correct": c,
                "score": pass_at_k(n, c, 1)}
        for k in ks:
            item[f"pass@{k}"] = pass_at_k(n, c, k)
        items.append(item)
    return "pass@1", items, speed


def sandbox_isolation(cfg: dict[str, Any]) -> bool:
    """True where generated code can run isolated. Where it cannot, fail closed: one line
    naming what is missing, unless the benchmark's settings say `allow_unsandboxed: true`
    (then one warning, and the code runs with rlimits only)."""
    import sys

    from .sandbox import isolation_problem

    problem = isolation_problem()
    if problem is None:
        return True
    if not cfg.get("allow_unsandboxed", False):
        raise OrdermergeError(
            f"benchmark humaneval: cannot sandbox generated code: {problem} (set "
            "allow_unsandboxed: true in this benchmark's settings to run it without isolation)")
    if not _WARNED:
        _WARNED.append(True)
        sys.stderr.write(f"ordermerge: WARNING: running generated code WITHOUT isolation "
                         f"({problem}); it can read and write your files and reach the network\n")
    return False


_WARNED: list[bool] = []  # one warning per process


def _lm_eval(model_dir: Path, cfg: dict[str, Any]):
    """lm-evaluation-harness on the model folder. Items are its per-document scores (for the
    first task's first metric unless `metric` names one), so paired statistics work as for the
    built-in benchmarks; the harness's own aggregates are kept in the result as `lm_eval`."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise OrdermergeError("benchmark lm_eval: install the extra: pip install 'ordermerge[lm_eval]'") from None
    tasks = cfg.get("tasks")
    if not tasks or not isinstance(tasks, list):
        raise OrdermergeError("benchmark lm_eval: setting 'tasks' (a list of task names) is required")
    tm = TaskManager(include_path=cfg.get("include_path"))
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        where = f" (include_path {cfg['include_path']})" if cfg.get("include_path") else ""
        raise OrdermergeError(f"benchmark lm_eval: unknown task {unknown[0]!r}{where}")
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                  tasks=tasks, task_manager=tm, limit=cfg.get("limit"),
                                  batch_size=cfg.get("batch_size", 8), device=_device(),
                                  log_samples=True, bootstrap_iters=0)
    aggregates = {t: {k: v for k, v in m.items() if isinstance(v, int | float)}
                  for t, m in res["results"].items()}
    first = tasks[0]
    # the harness names metrics "<metric>,<filter>" (e.g. "acc,none"); other numbers are counts
    metric = cfg.get("metric") or next(k.split(",")[0] for k in aggregates[first]
                                       if "," in k and "_stderr" not in k)
    items = []
    for task in tasks:
        for sample in sorted(res["samples"][task], key=lambda x: x["doc_id"]):
            if metric not in sample:
                raise OrdermergeError(f"benchmark lm_eval: task {task} has no per-document "
                                      f"metric {metric!r}")
            items.append({"id": f"{task}/{sample['doc_id']}", "prompt": None,
                          "completion": None, "reference": str(sample.get("target")),
                          "score": float(sample[metric])})
    return f"{first}/{metric}", items, {"lm_eval": aggregates}


EVAL_META = "ordermerge_eval.json"  # the benchmarks an evaluation folder holds; marks it as ours


def _inputs(model_dir: str | Path, cfg: dict[str, Any]) -> list[str | Path]:
    return [model_dir, *(cfg[k] for k in ("data", "fewshot_path", "include_path") if cfg.get(k))]


def evaluate(model_dir: str | Path, benchmark: str, cfg: dict[str, Any], out_dir: str | Path,
             name: str | None = None, progress: bool = True,
             loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run one benchmark on one model folder; write `{name}.json` and `{name}.items.jsonl`.

    `loaded` = (model, tokenizer) already in memory (evaluate_suite loads them once, and
    checks its own output folder)."""
    from ..atomic import atomic_file, check_output

    if loaded is None:
        check_output(out_dir, EVAL_META, _inputs(model_dir, cfg))

    if benchmark not in BENCHMARKS:
        raise OrdermergeError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    unknown = sorted(set(cfg) - KEYS[benchmark])
    if unknown:
        raise OrdermergeError(f"benchmark {benchmark}: unknown setting {unknown[0]!r} "
                              f"(accepted: {', '.join(sorted(KEYS[benchmark]))})")
    if benchmark == "humaneval":
        sandbox_isolation(cfg)  # refuse before loading a model, not after generating
    name = name or benchmark
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    t0 = time.perf_counter()
    if benchmark == "lm_eval":
        metric, items, speed = _lm_eval(model_dir, cfg)
    else:
        if benchmark in ("response_loss", "gsm8k") and "data" not in cfg:
            raise OrdermergeError(f"benchmark {benchmark}: setting 'data' (a test JSONL) is required")
        model, tok = loaded or _load(model_dir)
        fn = {"response_loss": _response_loss, "gsm8k": _gsm8k, "humaneval": _humaneval}[benchmark]
        metric, items, speed = fn(model, tok, cfg, progress)
    scores = [it["score"] for it in items]
    value = sum(scores) / len(scores) if scores else float("nan")
    lo, hi = bootstrap_ci(scores)
    result = {
        "benchmark": benchmark, "name": name, "metric": metric, "value": value, "n": len(items),
        "ci95": [lo, hi], "seconds": round(time.perf_counter() - t0, 3),
        "tokens_per_s": round(speed.get("tokens_per_s", 0.0), 2) or None,
        "model": folder_fingerprint(model_dir), "settings": cfg,
        "ordermerge_version": __version__,
    }
    if "lm_eval" in speed:
        result["lm_eval"] = speed["lm_eval"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / f"{name}.items.jsonl") as tmp:
        write_jsonl(tmp, items)
    with atomic_file(out_dir / f"{name}.json") as tmp:  # last: its presence means the items are complete
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    meta = out_dir / EVAL_META
    held = json.loads(meta.read_text())["benchmarks"] if meta.exists() else []
    with atomic_file(meta) as tmp:
        tmp.write_text(json.dumps({"benchmarks": sorted({*held, name})}) + "\n")
    return result


def _load(model_dir: Path) -> tuple[Any, Any]:
    from ..models import load_model, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    return load_model(model_dir, dtype=torch.float32, device=_device()), tok  # fp32: see DESIGN


def evaluate_suite(model_dir: str | Path, suite: dict[str, dict[str, Any]], out_dir: str | Path,
                   progress: bool = True) -> list[dict[str, Any]]:
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
    for spec in suite.values():
        if spec["benchmark"] == "humaneval":
            sandbox_isolation(spec.get("settings", {}))
    inputs = [p for spec in suite.values() for p in _inputs(model_dir, spec.get("settings", {}))]
    with atomic_dir(out_dir, EVAL_META, inputs) as tmp:
        loaded = None
        if any(s["benchmark"] != "lm_eval" for s in suite.values()):
            loaded = _load(model_dir)
        results = [evaluate(model_dir, spec["benchmark"], dict(spec.get("settings", {})), tmp, name,
                            progress, loaded) for name, spec in suite.items()]
    return results
