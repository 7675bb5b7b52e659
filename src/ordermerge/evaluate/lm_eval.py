"""lm_eval: lm-evaluation-harness on the model folder. Items are its per-document scores (for
the first task's first metric unless `metric` names one), so paired statistics work as for the
built-in benchmarks; the harness's own aggregates are kept in the result as `lm_eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import OrdermergeError
from ..text import PromptFormat


def run(model_dir: Path, loaded: Any, cfg: dict[str, Any], prompt: PromptFormat,
        progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise OrdermergeError("benchmark lm_eval: install the extra: pip install 'ordermerge[lm_eval]'") from None
    from . import compute_dtype, device

    tasks = cfg.get("tasks")
    if not tasks:
        raise OrdermergeError("benchmark lm_eval: setting 'tasks' (a list of task names) is required")
    tm = TaskManager(include_path=cfg.get("include_path"))
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        where = f" (include_path {cfg['include_path']})" if cfg.get("include_path") else ""
        raise OrdermergeError(f"benchmark lm_eval: unknown task {unknown[0]!r}{where}")
    res = lm_eval.simple_evaluate(
        model=cfg["model_backend"], model_args=f"pretrained={model_dir},dtype={compute_dtype()}",
        tasks=tasks, task_manager=tm, limit=cfg.get("limit"), batch_size=cfg["batch_size"],
        device=device(), log_samples=True, bootstrap_iters=0)
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
    return items, {"metric": f"{first}/{metric}", "lm_eval": aggregates}
