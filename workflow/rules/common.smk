import errno
import json
import math
import re
import sys

from snakemake.exceptions import WorkflowError

from ordermerge import OrdermergeError
from ordermerge.catalog import BENCHMARKS, METHODS
from ordermerge.config import validate_config
from ordermerge.layout import Layout, ModelId, front_page
from ordermerge.plan import GiB, choose_gpus, model_shape

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
# the paths of every job, with wildcards for the fields (ordermerge.layout owns them)
L = Layout(RES, "{exp}")


wildcard_constraints:
    exp="[A-Za-z0-9_]+",
    k=r"\d+",
    m=r"\d+",
    seed=r"\d+",
    merge="[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_.\-]+",


def layout(exp):
    return Layout(RES, exp)


def as_json(value):
    """Deterministic JSON for params: a changed value reruns the rule, nothing else does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def n_orders(exp):
    return EXPS[exp]["orders"]["n"]


def sizes(exp, merge):
    abl = config["ablation"]
    chosen = abl.get("merges", list(MERGES))
    extra = [m for m in abl["sizes"] if merge in chosen]
    return sorted(set(extra + [n_orders(exp)]))


def seeds(merge):
    if METHODS[MERGES[merge]["method"]].randomised:
        return config["merge_seeds"]
    return config["merge_seeds"][:1]


def merged_ids(exp):
    return [
        ModelId("merge", merge=s, m=m, seed=seed)
        for s in MERGES
        for m in sizes(exp, s)
        for seed in seeds(s)
    ]


def model_ids(exp):
    orders = [ModelId("order", k=k) for k in range(1, n_orders(exp) + 1)]
    return [ModelId("base"), *orders, *merged_ids(exp)]


def main_ids(exp):
    """Base, every order, and every merge at m = N with the first merge seed."""
    n, first = n_orders(exp), config["merge_seeds"][0]
    main = {ModelId("merge", merge=s, m=n, seed=first) for s in MERGES}
    return [i for i in model_ids(exp) if i.kind != "merge" or i in main]


def main_merges(exp):
    """Each merge of all N orders with the first merge seed (claim f's merges)."""
    return [i for i in main_ids(exp) if i.kind == "merge"]


def main_merge_losses(exp):
    """Per-sample training losses of the main merges."""
    return [
        layout(exp).merge_sample_losses(i.merge, i.m, i.seed) for i in main_merges(exp)
    ]


def benches(exp):
    """The benchmarks that evaluate experiment `exp` (benchmarks.*.experiments; default all)."""
    return [b for b, v in BENCH.items() if exp in v.get("experiments", EXPS)]


def local_files(*paths):
    """Those of `paths` that name local files or folders (a hub id is fetched, not declared):
    declared as inputs, a missing local file stops the run before any job."""
    suffixes = (".jsonl", ".json", ".parquet")
    return [p for p in paths if p and (Path(p).exists() or Path(p).suffix in suffixes)]


def data_sources(w):
    data = EXPS[w.exp]["data"]
    return local_files(data.get("path"), data.get("test_path"))


def bench_models(exp, bench):
    return model_ids(exp) if BENCH[bench]["models"] == "all" else main_ids(exp)


def bench_settings(exp, bench):
    b = BENCH[bench]
    settings = dict(b["settings"])
    if BENCHMARKS[b["benchmark"]].reads_split:
        settings["data"] = layout(exp).data(b["split"])
    return settings


def eval_suite(exp, model):
    """The benchmarks one model is evaluated on, with their settings (the evaluate job's params)."""
    mid = ModelId.parse(str(model))
    return {
        bench: {
            "benchmark": BENCH[bench]["benchmark"],
            "settings": bench_settings(exp, bench),
        }
        for bench in benches(exp)
        if mid in bench_models(exp, bench)
    }


def eval_dirs(exp):
    return [layout(exp).eval_dir(m) for m in model_ids(exp) if eval_suite(exp, m)]


def eval_model_dir(w):
    return layout(w.exp).model(w.model)


def eval_data(w):
    suite = [s["settings"] for s in eval_suite(w.exp, w.model).values()]
    read = [s.get(k) for s in suite for k in ("data", "fewshot_path", "include_path")]
    return sorted(set(local_files(*read)))


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


def sft_plan(wildcards, input):
    """The memory plan of one SFT job on the fewest GPUs of `gpu_memory_gb` that fit it
    (ordermerge.plan); before the base exists the FileNotFoundError defers it (<TBD>).
    """
    if not Path(input.base, "config.json").exists():
        raise FileNotFoundError(errno.ENOENT, "no config.json", str(input.base))
    try:
        return choose_gpus(
            model_shape(input.base),
            EXPS[wildcards.exp]["sft"],
            int(config["gpu_memory_gb"] * GiB),
        )
    except OrdermergeError as err:
        gb = config["gpu_memory_gb"]
        raise WorkflowError(
            f"experiment {wildcards.exp}, gpu_memory_gb {gb}: {err}"
        ) from None


def sft_gpus(wildcards, input):
    """GPUs of one SFT job: what its memory plan needs; none (CPU) without gpu_memory_gb."""
    return sft_plan(wildcards, input).gpus if config["gpu_memory_gb"] else 0


def sft_mem_mb(wildcards, input, attempt):
    """Host memory of one SFT job: the plan's (every rank loads the model), 8 GB on CPU."""
    if not config["gpu_memory_gb"]:
        return 8000 * attempt
    return attempt * math.ceil(sft_plan(wildcards, input).host / 2**20)


def sft_nproc(wildcards, resources):
    """Processes (torchrun ranks) of one SFT job: `ranks` if set, else one per GPU (`gpu`, or
    the count in a `gres` of gpu[:type]:N), else one."""
    if not isinstance(resources.gpu, int):
        return resources.gpu  # <TBD> in a dry run before the base exists
    gres = re.fullmatch(r"gpu(?::[\w.]+)?:(\d+)", str(resources.get("gres", "")))
    return resources.ranks or resources.gpu or (int(gres.group(1)) if gres else 1)


def merge_config(w):
    """The merge job's --config: the method's parameters as the config gives them."""
    return as_json(MERGES[w.merge]["params"])


def setup_summary(exp):
    """What was run, for the report's front page."""
    e, n = EXPS[exp], n_orders(exp)
    data = e["data"]
    merges = ", ".join(MERGES)
    evaluated = ", ".join(
        f"{b} ({BENCH[b]['benchmark']}"
        + (
            f", {BENCH[b]['split']}"
            if BENCHMARKS[BENCH[b]["benchmark"]].reads_split
            else ""
        )
        + ")"
        for b in benches(exp)
    )
    return {
        "base": f"{e['base']['spec']} (stored in {e['base']['dtype']})",
        "data": f"{data['format']}, {data.get('train_size')} training rows asked, "
        f"{data.get('test_size')} test items per split",
        "orders": f"{n} x {e['orders']['epochs']} epochs ({e['orders']['mode']})",
        "merges": f"{merges}; seeds {config['merge_seeds']}",
        "benchmarks": evaluated,
    }


def front_page_report():
    """The HTML report opens on the claims once the pipeline has written them."""
    page = Path(front_page(RES))
    return str(page.resolve()) if page.exists() else "workflow/report/workflow.rst"


FIGURES = ["imbalance", "main", "ablation", "zero_fraction", "training"]


def all_targets():
    out = [front_page(RES)]
    for exp in EXPS:
        out += [layout(exp).table(t) for t in ("main.md", "paired.md", "claims.md")]
        out += [layout(exp).figure(f) for f in FIGURES]
    return out


def manifest(exp):
    """Everything aggregation and figures need to know about the models of one experiment."""
    models = []
    for mid in model_ids(exp):
        entry = {"id": str(mid), "kind": mid.kind}
        if mid.kind == "order":
            entry["k"] = mid.k
        elif mid.kind == "merge":
            method = MERGES[mid.merge]["method"]
            entry.update(merge=mid.merge, method=method, m=mid.m, seed=mid.seed)
        models.append(entry)
    return {
        "results": RES,
        "experiment": exp,
        "n_orders": n_orders(exp),
        "models": models,
        "benchmarks": {b: BENCH[b]["benchmark"] for b in benches(exp)},
        "bench_models": {
            b: [str(m) for m in bench_models(exp, b)] for b in benches(exp)
        },
        "merges": list(MERGES),
        "merge_specs": {
            s: {"method": v["method"], "params": v["params"]} for s, v in MERGES.items()
        },
        "ablation": [s for s in MERGES if len(sizes(exp, s)) > 1],
        "main_merges": [str(i) for i in main_merges(exp)],
        "epochs": EXPS[exp]["orders"]["epochs"],
    }
