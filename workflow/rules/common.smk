import json
import sys

from ordermerge import OrdermergeError
from ordermerge.config import RANDOM_METHODS, validate_config

try:
    config = validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except OrdermergeError as err:
    # One line, before any job: the key and what was expected.
    sys.stderr.write(f"ordermerge: {err}\n")
    sys.exit(1)

RES = config["results"]
EXPS = config["experiments"]
MERGES = config["merges"]
BENCH = config["benchmarks"]


wildcard_constraints:
    exp="[A-Za-z0-9_]+",
    k=r"\d+",
    m=r"\d+",
    seed=r"\d+",
    strategy="[A-Za-z0-9_]+",
    bench="[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_.\-]+",


def as_json(value):
    """Deterministic JSON for params: a changed value reruns the rule, nothing else does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def n_orders(exp):
    return EXPS[exp]["orders"]["n"]


def sizes(exp, strategy):
    abl = config["ablation"]
    chosen = abl.get("strategies", list(MERGES))
    extra = [m for m in abl["sizes"] if strategy in chosen]
    return sorted(set(extra + [n_orders(exp)]))


def seeds(strategy):
    if MERGES[strategy]["method"] in RANDOM_METHODS:
        return config["merge_seeds"]
    return config["merge_seeds"][:1]


def merged_ids(exp):
    return [
        f"{s}-n{m}-s{seed}" for s in MERGES for m in sizes(exp, s) for seed in seeds(s)
    ]


def model_ids(exp):
    return (
        ["base"] + [f"order{k}" for k in range(1, n_orders(exp) + 1)] + merged_ids(exp)
    )


def model_dir(exp, model):
    if model == "base":
        return f"{RES}/{exp}/base"
    if model.startswith("order"):
        return f"{RES}/{exp}/sft/{model}/model"
    strategy, m, seed = model.rsplit("-", 2)
    return f"{RES}/{exp}/merged/{strategy}/{m}/{seed}/model"


def main_ids(exp):
    """Base, every order, and every strategy at m = N with the first merge seed."""
    n = n_orders(exp)
    first = config["merge_seeds"][0]
    return (
        ["base"]
        + [f"order{k}" for k in range(1, n + 1)]
        + [f"{s}-n{n}-s{first}" for s in MERGES]
    )


def bench_models(exp, bench):
    return model_ids(exp) if BENCH[bench]["models"] == "all" else main_ids(exp)


def eval_files(exp):
    return [
        f"{RES}/{exp}/eval/{model}/{bench}.json"
        for bench in BENCH
        for model in bench_models(exp, bench)
    ]


def eval_model_dir(w):
    return model_dir(w.exp, w.model)


def eval_settings(w):
    b = BENCH[w.bench]
    settings = dict(b["settings"])
    if b["benchmark"] in ("response_loss", "gsm8k"):
        settings["data"] = f"{RES}/{w.exp}/data/{b['split']}.jsonl"
    return settings


FIGURES = ["imbalance", "main", "ablation", "zero_fraction", "training"]


def all_targets():
    out = []
    for exp in EXPS:
        out += [f"{RES}/{exp}/tables/main.md", f"{RES}/{exp}/tables/paired.md"]
        out += [f"{RES}/{exp}/figures/{f}.png" for f in FIGURES]
    return out


def manifest(exp):
    """Everything aggregation and figures need to know about the models of one experiment."""
    models = []
    for model in model_ids(exp):
        entry = {"id": model, "dir": model_dir(exp, model)}
        if model.startswith("order"):
            entry.update(kind="order", k=int(model[5:]))
        elif model != "base":
            strategy, m, seed = model.rsplit("-", 2)
            entry.update(
                kind="merge",
                strategy=strategy,
                method=MERGES[strategy]["method"],
                m=int(m[1:]),
                seed=int(seed[1:]),
            )
        else:
            entry["kind"] = "base"
        models.append(entry)
    return {
        "experiment": exp,
        "n_orders": n_orders(exp),
        "models": models,
        "benchmarks": {b: v["benchmark"] for b, v in BENCH.items()},
        "bench_models": {b: bench_models(exp, b) for b in BENCH},
        "strategies": list(MERGES),
    }
