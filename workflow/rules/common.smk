import errno
import json
import math
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


def eval_suite(exp, model):
    """The benchmarks one model is evaluated on, with their settings (the evaluate job's params)."""
    return {
        bench: {
            "benchmark": BENCH[bench]["benchmark"],
            "settings": bench_settings(exp, bench),
        }
        for bench in BENCH
        if model in bench_models(exp, bench)
    }


def eval_dirs(exp):
    return [f"{RES}/{exp}/eval/{m}" for m in model_ids(exp) if eval_suite(exp, m)]


def largest_tensor_numel(folder):
    """Elements of the largest tensor in a safetensors folder, read from the headers only."""
    numel = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, spec in header.items():
            if name != "__metadata__":
                numel = max(numel, math.prod(spec["shape"]))
    if not numel:
        # naming the input lets Snakemake defer the resource (<TBD>) until the input exists
        raise FileNotFoundError(errno.ENOENT, "no safetensors files", str(folder))
    return numel


def merge_mem_mb(wildcards, input, attempt):
    """The merge streams one tensor name at a time, so its memory is set by the largest
    tensor: m + 1 inputs, with fp32 work copies (~12 B per element per input), plus 1 GB for
    Python and torch; doubled, tripled... on each retry. Before the base exists (a dry run of
    a fresh DAG) the FileNotFoundError makes Snakemake show <TBD> and ask again at submission.
    """
    numel = largest_tensor_numel(input.base)
    return attempt * (1024 + math.ceil((int(wildcards.m) + 1) * 12 * numel / 2**20))


def eval_model_dir(w):
    return model_dir(w.exp, w.model)


def bench_settings(exp, bench):
    b = BENCH[bench]
    settings = dict(b["settings"])
    if b["benchmark"] in ("response_loss", "gsm8k"):
        settings["data"] = f"{RES}/{exp}/data/{b['split']}.jsonl"
    return settings


def eval_data(w):
    suite = eval_suite(w.exp, w.model).values()
    return sorted({s["settings"]["data"] for s in suite if "data" in s["settings"]})


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
