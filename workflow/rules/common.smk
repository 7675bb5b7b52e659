import errno
import json
import math
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from ordermerge import OrdermergeError
from ordermerge.catalog import BENCHMARKS, DATA_EXTENSIONS, METHODS
from ordermerge.config import method_params, validate_config
from ordermerge.layout import SUB, Layout, ModelId, config_digest, front_page
from ordermerge.orders import ablation_subsets
from ordermerge.tuning import grid as tuning_grid
from ordermerge.tuning import grid_name, split_grid_name
from ordermerge.plan import GiB, choose_gpus, model_shape, plan_inference, plan_memory
from ordermerge.sft_config import compute_bytes
from ordermerge.safetensors_header import has_weights, tensor_numels

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
L = Layout(RES, "{exp}", "{rep}")


wildcard_constraints:
    exp="[A-Za-z0-9_]+",
    rep=r"\d+",
    k=r"\d+",
    sub=SUB,
    seed=r"\d+",
    merge="[A-Za-z0-9_]+",
    model=r"[A-Za-z0-9_.\-]+",


def layout(exp, rep=1):
    return Layout(RES, exp, rep)


def as_json(value):
    """Deterministic JSON for params: a changed value reruns the rule, nothing else does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def n_orders(exp):
    return EXPS[exp]["orders"]["n"]


def replicates(exp):
    """The experiment's training replicates, 1..R."""
    return list(range(1, EXPS[exp]["orders"]["replicates"] + 1))


def sft_config(exp, rep):
    """Replicate r trains with seed sft.seed + r - 1 (replicate 1: the configured seed)."""
    sft = dict(EXPS[exp]["sft"])
    sft["seed"] = sft["seed"] + int(rep) - 1
    return sft


def sizes(exp, merge):
    abl = config["ablation"]
    chosen = abl.get("merges", list(MERGES))
    extra = [m for m in abl["sizes"] if merge in chosen]
    return sorted(set(extra + [n_orders(exp)]))


def subsets(exp, rep, m):
    """The order subsets merged at size m in replicate rep: () for all N orders, else
    ablation.subsets of the C(N, m) subsets (ordermerge.orders.ablation_subsets)."""
    if m == n_orders(exp):
        return [()]
    count, seed = config["ablation"]["subsets"], EXPS[exp]["orders"]["seed"]
    return ablation_subsets(n_orders(exp), m, count, seed, int(rep))


def seeds(merge):
    if METHODS[MERGES[merge]["method"]].randomised:
        return config["merge_seeds"]
    return config["merge_seeds"][:1]


def merged_ids(exp, rep):
    return [
        ModelId("merge", merge=s, m=m, seed=seed, orders=sub)
        for s in MERGES
        for m in sizes(exp, s)
        for sub in subsets(exp, rep, m)
        for seed in seeds(s)
    ]


def model_ids(exp, rep):
    """The models of one replicate; the base, shared by every replicate, is in replicate 1."""
    orders = [ModelId("order", k=k) for k in range(1, n_orders(exp) + 1)]
    base = [ModelId("base")] if int(rep) == 1 else []
    return [*base, *orders, *merged_ids(exp, rep)]


def main_ids(exp, rep):
    """Base, every order, and every merge of all N orders with the first merge seed."""
    n, first = n_orders(exp), config["merge_seeds"][0]
    main = {ModelId("merge", merge=s, m=n, seed=first) for s in MERGES}
    return [i for i in model_ids(exp, rep) if i.kind != "merge" or i in main]


def main_merges(exp, rep):
    """Each merge of all N orders with the first merge seed (claim f's merges)."""
    return [i for i in main_ids(exp, rep) if i.kind == "merge"]


def main_merge_losses(exp):
    """Per-sample training losses of the main merges of every replicate."""
    return [
        layout(exp, r).merge_sample_losses(i.merge, i.sub, i.seed)
        for r in replicates(exp)
        for i in main_merges(exp, r)
    ]


# Tuned merges (merges.*.tune): every grid point is an internal merge (tuning.grid_name),
# merged from all N orders with the first merge seed and evaluated on the validation split only.
TUNED = [s for s, v in MERGES.items() if v.get("tune")]


def grid_points(merge):
    spec = MERGES[merge]
    return tuning_grid(method_params(spec["method"], spec["params"]), spec["tune"])


def grid_ids(exp, merge):
    n, first = n_orders(exp), config["merge_seeds"][0]
    return [
        ModelId("merge", merge=grid_name(merge, i), m=n, seed=first)
        for i in range(len(grid_points(merge)))
    ]


def config_merge(name):
    """The config's merge behind a merge wildcard (a grid point's belongs to its merge)."""
    return split_grid_name(name)[0]


def validation_suite(exp):
    """What a grid point is evaluated on: the tuning benchmark on the validation split."""
    tune = config["tuning"]
    settings = {**tune["settings"], "data": layout(exp).data("val")}
    return {"val": {"benchmark": tune["benchmark"], "settings": settings}}


def benches(exp):
    """The benchmarks that evaluate experiment `exp` (benchmarks.*.experiments; default all)."""
    return [b for b, v in BENCH.items() if exp in v.get("experiments", EXPS)]


def local_files(*paths):
    """Those of `paths` that name local files or folders (a hub id is fetched, not declared):
    declared as inputs, a missing local file stops the run before any job."""
    return [
        p
        for p in paths
        if p and (Path(p).exists() or Path(p).suffix in DATA_EXTENSIONS)
    ]


def data_sources(w):
    data = EXPS[w.exp]["data"]
    return local_files(data.get("path"), data.get("test_path"))


def bench_models(exp, rep, bench):
    if BENCH[bench]["models"] == "all":
        return model_ids(exp, rep)
    return main_ids(exp, rep)


def bench_settings(exp, bench):
    b = BENCH[bench]
    settings = dict(b["settings"])
    if BENCHMARKS[b["benchmark"]].reads_split:
        settings["data"] = layout(exp).data(b["split"])
    return settings


def eval_suite(exp, rep, model):
    """The benchmarks one model is evaluated on, with their settings (the evaluate job's params)."""
    mid = ModelId.parse(str(model))
    if split_grid_name(mid.merge)[1] is not None:
        return validation_suite(exp)
    return {
        bench: {
            "benchmark": BENCH[bench]["benchmark"],
            "settings": bench_settings(exp, bench),
        }
        for bench in benches(exp)
        if mid in bench_models(exp, rep, bench)
    }


def eval_dirs(exp):
    return [
        layout(exp, r).eval_dir(m)
        for r in replicates(exp)
        for m in model_ids(exp, r)
        if eval_suite(exp, r, m)
    ]


def eval_model_dir(w):
    return layout(w.exp, w.rep).model(w.model)


def eval_data(w):
    suite = [s["settings"] for s in eval_suite(w.exp, w.rep, w.model).values()]
    read = [s.get(k) for s in suite for k in ("data", "fewshot_path", "include_path")]
    return sorted(set(local_files(*read)))


def largest_tensor_numel(folder):
    """Elements of the largest tensor in a safetensors folder, read from the headers only."""
    if not has_weights(folder):
        # naming the input lets Snakemake defer the resource (<TBD>) until the input exists
        raise FileNotFoundError(errno.ENOENT, "no safetensors files", str(folder))
    return max(tensor_numels(folder).values(), default=0)


def merge_mem_mb(wildcards, input, attempt):
    """The merge streams one tensor name at a time, so its memory is set by the largest
    tensor: m + 1 inputs, with fp32 work copies (~12 B per element per input), plus 1 GB for
    Python and torch; doubled, tripled... on each retry. Before the base exists (a dry run of
    a fresh DAG) the FileNotFoundError makes Snakemake show <TBD> and ask again at submission.
    """
    numel = largest_tensor_numel(input.base)
    m = len(input.models)
    return attempt * (1024 + math.ceil((m + 1) * 12 * numel / 2**20))


def sft_plan(wildcards, input):
    """The memory plan of one SFT job on the fewest GPUs of `gpu_memory_gb` that fit it
    (ordermerge.plan); before the base exists the FileNotFoundError defers it (<TBD>).
    """
    if not Path(input.base, "config.json").exists():
        raise FileNotFoundError(errno.ENOENT, "no config.json", str(input.base))
    sft = EXPS[wildcards.exp]["sft"]
    try:
        return choose_gpus(
            model_shape(input.base),
            sft,
            int(config["gpu_memory_gb"] * GiB),
            compute_bytes=compute_bytes(sft["dtype"]),
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


def sft_gpu_mem_mb(wildcards, input):
    """GPU memory (MB) one SFT job declares: its plan per GPU times its GPUs (one GPU when the
    config plans none: a study sharing one GPU sets sft:gpu=1). With `--resources
    gpu_mem_mb=<card MB>` jobs sharing a GPU cannot overcommit it. On a GPU the job caps
    itself at this (ordermerge.gpu; never below its own plan for the ranks it runs); on CPU
    the value only shows in the dry run.
    """
    if config["gpu_memory_gb"]:
        plan = sft_plan(wildcards, input)
        return plan.gpus * plan.mb
    if not Path(input.base, "config.json").exists():
        raise FileNotFoundError(errno.ENOENT, "no config.json", str(input.base))
    sft = EXPS[wildcards.exp]["sft"]
    return plan_memory(model_shape(input.base), sft, 1, compute_bytes(sft["dtype"])).mb


def inference_shape(wildcards, input):
    """The shape of the model an evaluation or sample-loss job loads: its own config.json, or
    before it exists the base's (fine-tuning and merging keep the shape); <TBD> before both.
    """
    for folder in (input.model, layout(wildcards.exp).base):
        if Path(folder, "config.json").exists():
            return model_shape(folder)
    raise FileNotFoundError(errno.ENOENT, "no config.json", str(input.model))


def sample_losses_gpu_mem_mb(wildcards, input):
    """GPU memory (MB) of scoring every training sample: batches of 16 (the command's default)
    of up to sft.max_length tokens."""
    shape = inference_shape(wildcards, input)
    return plan_inference(shape, 16, EXPS[wildcards.exp]["sft"]["max_length"]).mb


def eval_gpu_mem_mb(wildcards, input):
    """GPU memory (MB) of one evaluation job: the largest of its benchmarks' inference plans.
    Lengths: a benchmark's max_length or the data's max_tokens for scored sequences; for
    generation, prompts of the data's max_tokens (each few-shot example as long again) plus
    max_new_tokens; 1024 where neither is known; lm_eval batches at 2048 tokens."""
    shape = inference_shape(wildcards, input)
    known = EXPS[wildcards.exp]["data"].get("max_tokens") or 1024

    def setting(spec, key):
        value = spec["settings"].get(key)
        default = BENCHMARKS[spec["benchmark"]].settings[key].default
        return default if value is None else value

    need = 0
    for spec in eval_suite(wildcards.exp, wildcards.rep, wildcards.model).values():
        kind, batch = spec["benchmark"], setting(spec, "batch_size")
        if kind == "response_loss":
            plan = plan_inference(shape, batch, min(setting(spec, "max_length"), known))
        elif kind == "lm_eval":
            plan = plan_inference(shape, batch, 2048)
        else:  # generation: gsm8k, humaneval
            few = spec["settings"].get("fewshot_path") and setting(spec, "fewshot_k")
            new = setting(spec, "max_new_tokens")
            plan = plan_inference(shape, batch, known * (1 + (few or 0)), new)
        need = max(need, plan.mb)
    return need


def sft_nproc(wildcards, resources):
    """Processes (torchrun ranks) of one SFT job: `ranks` if set, else one per GPU (`gpu`, or
    the count in a `gres` of gpu[:type]:N), else one."""
    if not isinstance(resources.gpu, int):
        return resources.gpu  # <TBD> in a dry run before the base exists
    gres = re.fullmatch(r"gpu(?::[\w.]+)?:(\d+)", str(resources.get("gres", "")))
    return resources.ranks or resources.gpu or (int(gres.group(1)) if gres else 1)


def merge_config(w):
    """The merge job's parameters: the config's; a grid point's; or, for a tuned merge, the
    tuning record chosen on the validation split (--tuning)."""
    name, point = split_grid_name(w.merge)
    if point is not None:
        return f"--config {shlex.quote(as_json(grid_points(name)[point]))}"
    if name in TUNED:
        return f"--tuning {shlex.quote(layout(w.exp, w.rep).tuned(name))}"
    return f"--config {shlex.quote(as_json(MERGES[name]['params']))}"


def tuning_record(w):
    """A tuned merge's input: its replicate's tuning record."""
    if split_grid_name(w.merge)[1] is None and w.merge in TUNED:
        return layout(w.exp, w.rep).tuned(w.merge)
    return []


def setup_summary(exp):
    """What was run, for the report's front page."""
    e, n = EXPS[exp], n_orders(exp)
    data = e["data"]
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
    source = data.get("path", "generated offline")
    reps = len(replicates(exp))
    return {
        "base": f"{e['base']['spec']} (stored in {e['base']['dtype']})",
        "data": f"{data['format']} ({source}), {data.get('train_size')} training rows asked, "
        f"{data.get('test_size')} test items per split",
        "orders": f"{n} orders, {e['orders']['epochs']} epochs each ({e['orders']['mode']}); "
        f"{reps} training replicate{'s' if reps > 1 else ''}",
        "merges": f"{', '.join(MERGES)}; merge seeds {config['merge_seeds']}",
        "benchmarks": evaluated,
    }


# the report's front page of this very config (another config writes another page)
CONFIG_DIGEST = config_digest(as_json(config))
FRONT_PAGE = front_page(RES, CONFIG_DIGEST)


def front_page_report():
    """The HTML report opens on the claims once the pipeline has written them."""
    page = Path(FRONT_PAGE)
    return str(page.resolve()) if page.exists() else "workflow/report/workflow.rst"


FIGURES = ["imbalance", "main", "ablation", "zero_fraction", "training"]


def all_targets():
    out = [FRONT_PAGE]
    for exp in EXPS:
        out += [layout(exp).table(t) for t in ("main.md", "paired.md", "claims.md")]
        out += [layout(exp).figure(f) for f in FIGURES]
    return out


def manifest(exp):
    """Everything aggregation and figures need to know about the models of one experiment:
    each replicate's models ("rep", "id", ...), the benchmarks and the test splits they read.
    """
    models = []
    for rep in replicates(exp):
        for mid in model_ids(exp, rep):
            entry = {"rep": rep, "id": str(mid), "kind": mid.kind}
            if mid.kind == "order":
                entry["k"] = mid.k
            elif mid.kind == "merge":
                method = MERGES[mid.merge]["method"]
                entry.update(
                    merge=mid.merge,
                    method=method,
                    m=mid.m,
                    seed=mid.seed,
                    orders=mid.merged_orders,
                )
            models.append(entry)
    return {
        "results": RES,
        "experiment": exp,
        "n_orders": n_orders(exp),
        "replicates": replicates(exp),
        "batch_size": EXPS[exp]["sft"]["batch_size"],
        "models": models,
        "benchmarks": {b: BENCH[b]["benchmark"] for b in benches(exp)},
        "splits": {
            b: bench_settings(exp, b)["data"]
            for b in benches(exp)
            if BENCHMARKS[BENCH[b]["benchmark"]].reads_split
        },
        "bench_models": {
            b: [[r, str(m)] for r in replicates(exp) for m in bench_models(exp, r, b)]
            for b in benches(exp)
        },
        "merges": list(MERGES),
        "merge_specs": {
            s: {
                "method": v["method"],
                "params": method_params(v["method"], v["params"]),
            }
            for s, v in MERGES.items()
        },
        "ablation": [s for s in MERGES if len(sizes(exp, s)) > 1],
        "main_merges": [
            [r, str(i)] for r in replicates(exp) for i in main_merges(exp, r)
        ],
        "zero_share": [[r, str(i)] for r, i in zero_share_ids(exp)],
        "tuned": TUNED,
        "epochs": EXPS[exp]["orders"]["epochs"],
    }


def sample_loss_files(exp):
    """Every order's per-sample final losses, in every replicate (claim a)."""
    return [
        layout(exp, r).sample_losses(k)
        for r in replicates(exp)
        for k in range(1, n_orders(exp) + 1)
    ]


def zero_share_ids(exp):
    """One merge of all N orders per replicate, as (replicate, model id): its merge.json records,
    per sub-model, the share of task-vector entries that are exactly zero (the storage dtype
    decides it), which is what resampling has to work with (claim d)."""
    first = next(
        (s for s in MERGES if METHODS[MERGES[s]["method"]].reports_picks),
        list(MERGES)[0],
    )
    i = ModelId("merge", merge=first, m=n_orders(exp), seed=config["merge_seeds"][0])
    return [(r, i) for r in replicates(exp)]


def zero_share_source(exp):
    return [layout(exp, r).model(i) for r, i in zero_share_ids(exp)]
