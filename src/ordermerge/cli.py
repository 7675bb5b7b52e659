"""`ordermerge` command line: one subcommand per pipeline stage (each also a library call):
prepare-base, prepare-data, make-order, sft, sample-losses, merge, tune, evaluate, aggregate,
figures, front-page; and helpers: methods (the merge methods), plan (the SFT memory plan per
GPU count), readme-claims (the README's generated claims table).

User errors (OrdermergeError, bad arguments) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import OrdermergeError, __version__

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., Any]]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other user error
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        COMMANDS[name] = (add_args, fn)
        return fn

    return deco


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 1048576)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def _json_arg(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise OrdermergeError(f"{what}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise OrdermergeError(f"{what}: expected a JSON object")
    return value


def _prompt(a: argparse.Namespace):
    from .text import PromptFormat

    return PromptFormat.from_dict(_json_arg(a.prompt, "--prompt"))


PROMPT_HELP = ('JSON {"chat_template": true|false, "system_prompt": "..."|null}: the '
               "experiment's prompt format")


# --------------------------------------------------------------------------------------- merge
def _merge_args(p: argparse.ArgumentParser) -> None:
    from .catalog import DTYPES, METHODS

    p.add_argument("--base", required=True, help="base model folder (HF, safetensors)")
    p.add_argument("--models", required=True, nargs="+", help="sub-model folders (≥ 2)")
    p.add_argument("--method", required=True, choices=list(METHODS), help="merge method (see `ordermerge methods`)")
    p.add_argument("--config", default="{}", help="JSON object of the method's parameters")
    p.add_argument("--name", help="the merge's name (recorded in merge.json)")
    p.add_argument("--weights", nargs="+", type=float, help="one positive weight per sub-model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=list(DTYPES), help="output dtype")
    p.add_argument("--threads", type=int, help="worker threads (default: every CPU this process may use)")
    p.add_argument("--max-shard-size", type=parse_size, default="5GB")
    p.add_argument("--tuning", help="a tuning record (ordermerge tune): its chosen parameters "
                   "replace --config, and merge.json records how they were chosen")
    p.add_argument("--out", required=True, help="output folder (written atomically)")


@command("merge", _merge_args)
def _merge(a: argparse.Namespace) -> None:
    """Merge sub-models of one base into an HF folder with merge.json."""
    from .merge import merge
    from .tuning import read_choice

    tuning = read_choice(a.tuning) if a.tuning else None
    params = tuning["chosen"] if tuning else _json_arg(a.config, "--config")
    meta = merge(a.base, a.models, a.out, a.method, params, a.weights, a.seed, a.dtype,
                 a.max_shard_size, progress=not a.quiet, name=a.name, threads=a.threads,
                 tuning=tuning)
    s = meta["summary"]
    gbs = s["bytes_read"] / 1e9 / max(s["seconds"], 1e-9)
    print(
        f"merged {s['tensors']} tensors ({s['bytes_read'] / 1e9:.2f} GB read, "
        f"{s['bytes_written'] / 1e9:.2f} GB written) in {s['seconds']:.1f} s, "
        f"{gbs:.2f} GB/s -> {a.out}"
    )


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", required=True, help="JSON list of parameter sets, one per evaluation")
    p.add_argument("--evals", required=True, nargs="+",
                   help="evaluation folders of the grid's merges, in the grid's order")
    p.add_argument("--benchmark", required=True, help="the name of the validation benchmark in them")
    p.add_argument("--out", required=True, help="JSON tuning record")


@command("tune", _tune_args)
def _tune(a: argparse.Namespace) -> None:
    """Choose a merge's parameters: the grid point with the best validation score."""
    from .atomic import atomic_file
    from .catalog import BENCHMARKS
    from .tuning import choose

    points = json.loads(a.grid)
    scores, kind = [], None
    for d in a.evals:
        path = Path(d) / f"{a.benchmark}.json"
        try:
            res = json.loads(path.read_text())
            scores.append(float(res["value"]))
            kind = res["benchmark"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OrdermergeError(f"{path}: no validation result") from None
    rec = choose(points, scores, BENCHMARKS[kind].lower_is_better, f"{a.benchmark} ({kind}, val)")
    with atomic_file(a.out) as tmp:
        tmp.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    print(f"chosen {rec['chosen']} on {rec['validation']}: "
          + ", ".join(f"{v:.4f}" for v in scores))


@command("methods", lambda p: None)
def _methods(a: argparse.Namespace) -> None:
    """The merge methods, with their parameters and formulas."""
    from .catalog import METHODS

    for name, m in METHODS.items():
        params = ", ".join(f"{k}={p.default}" for k, p in m.params.items())
        print(f"{name:20s} {params:28s} {m.doc}")


def _prepare_base_args(p: argparse.ArgumentParser) -> None:
    from .catalog import DTYPES

    p.add_argument("--spec", required=True, help="tiny | gguf:<pkg>/<file> | HF folder | hub id")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=0, help="init seed (tiny only)")
    p.add_argument("--tiny", default="{}", help="JSON: hidden_size, num_layers, ... (tiny only)")
    p.add_argument("--out", required=True)


@command("prepare-base", _prepare_base_args)
def _prepare_base(a: argparse.Namespace) -> None:
    """Import a base model into an HF folder (safetensors, tokenizer, chat template)."""
    from .models import prepare_base

    out = prepare_base(a.spec, a.out, a.dtype, a.seed, json.loads(a.tiny))
    print(f"base model {a.spec} -> {out}")


def _prepare_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON object: the dataset config")
    p.add_argument("--base", required=True, help="base model folder (its tokenizer counts tokens)")
    p.add_argument("--prompt", default="{}", help=PROMPT_HELP)
    p.add_argument("--out", required=True, help="output folder: train.jsonl, test_*.jsonl, stats.json")


@command("prepare-data", _prepare_data_args)
def _prepare_data(a: argparse.Namespace) -> None:
    """Normalise a dataset into train/test JSONL with token-length statistics."""
    from .data import prepare_data
    from .models import load_tokenizer

    stats = prepare_data(_json_arg(a.config, "--config"), load_tokenizer(a.base), a.out, [a.base],
                         _prompt(a))
    for name, s in stats["splits"].items():
        if "note" in s:  # an empty placeholder split (test_ood outside gsm_symbolic)
            print(f"{name}: {s['rows']} rows ({s['note']})")
            continue
        print(f"{name}: {s['rows']} rows, {s['duplicates_removed']} duplicates removed, "
              f"{s['over_max_tokens']} over max_tokens ({s['policy']}), "
              f"median {s['tokens']['median']} tokens")


def _make_order_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="train.jsonl")
    p.add_argument("--k", type=int, required=True, help="order index")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--mode", default="shuffle", choices=["shuffle", "fixed", "batch_shuffle"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="batch size (batch_shuffle)")
    p.add_argument("--replicate", type=int, default=1,
                   help="training replicate (each draws its own orders; 1 = the unreplicated draw)")
    p.add_argument("--out", required=True)


@command("make-order", _make_order_args)
def _make_order(a: argparse.Namespace) -> None:
    """Write order k: one permutation of the training ids per epoch."""
    from .jsonl import read_jsonl
    from .orders import make_order, write_order

    rows = read_jsonl(a.data)
    if not rows:
        raise OrdermergeError(f"{a.data}: empty dataset")
    order = make_order([r["id"] for r in rows], a.k, a.epochs, a.mode, a.seed, a.batch_size,
                       a.replicate)
    write_order(order, a.out)


def _sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--order", required=True)
    p.add_argument("--config", default="{}", help="JSON object of SFT settings")
    p.add_argument("--prompt", default="{}", help=PROMPT_HELP)
    p.add_argument("--scratch", help="checkpoint folder (default: hidden sibling of --out)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes (GPUs) on this node; >1 re-runs this command under torchrun")
    p.add_argument("--out", required=True)


def _under_torchrun(a: argparse.Namespace) -> None:
    """Re-run this very command as `nproc` data-parallel ranks (torchrun --standalone): the
    loop keeps the global order across ranks, so the result equals one process's run."""
    import os
    import subprocess
    import sys

    argv = sys.argv[1:]
    i = argv.index("--nproc") if "--nproc" in argv else None
    if i is not None:
        del argv[i : i + 2]
    argv = [x for x in argv if not x.startswith("--nproc=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={a.nproc}", "-m", "ordermerge", *argv]
    print("running " + " ".join(cmd[2:]), flush=True)
    rc = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if rc:
        raise SystemExit(rc)


@command("sft", _sft_args)
def _sft(a: argparse.Namespace) -> None:
    """Fine-tune the base model on the data in the order file's exact order."""
    import os

    from .sft import SFTConfig, train

    if a.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _under_torchrun(a)

    res = train(a.base, a.data, a.order, a.out, SFTConfig.from_dict(_json_arg(a.config, "--config")),
                a.scratch, progress=not a.quiet, prompt=_prompt(a))
    if res["log"] and os.environ.get("RANK", "0") == "0":  # one summary, not one per rank
        last = res["log"][-1]
        print(f"trained {res['steps']} steps, final loss {last['loss']:.4f}, {last['seconds']:.1f} s")


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="model folder, or its config.json")
    p.add_argument("--config", default="{}", help="JSON object of SFT settings (as for sft)")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts to plan")
    p.add_argument("--gpu-memory", type=parse_size, default="80GB", help="memory of one GPU")
    p.add_argument("--compute-dtype", choices=["bfloat16", "float32"], default="bfloat16")


@command("plan", _plan_args)
def _plan(a: argparse.Namespace) -> None:
    """Memory per GPU of an SFT job under FSDP over each GPU count; the smallest that fits."""
    from .plan import GiB, choose_gpus, model_shape, plan_memory, render
    from .sft_config import SFTConfig, compute_bytes  # torch-free: planning needs no torch

    sft = SFTConfig.from_dict(_json_arg(a.config, "--config")).__dict__
    shape = model_shape(a.base)
    c = compute_bytes(a.compute_dtype)
    print(f"{a.base}: {shape.params / 1e9:.2f} B parameters, {shape.layers} layers; "
          f"batch {sft['batch_size']}, micro-batch {sft['micro_batch_size'] or 'whole share'}, "
          f"{sft['max_length']} tokens, checkpointing {'on' if sft['gradient_checkpointing'] else 'off'}; "
          "gradients reduce-scattered on every micro-step, fused AdamW")
    print(render([plan_memory(shape, sft, g, c) for g in a.gpus], a.gpu_memory), end="")
    best = choose_gpus(shape, sft, a.gpu_memory, max(a.gpus), c)
    print(f"smallest fit: {best.gpus} GPU(s) of {a.gpu_memory / GiB:.0f} GiB ({best.total / GiB:.1f} GiB each)")


def _sample_losses_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--order", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--prompt", default="{}", help=PROMPT_HELP)
    p.add_argument("--out", required=True, help="Parquet file")


@command("sample-losses", _sample_losses_args)
def _sample_losses(a: argparse.Namespace) -> None:
    """Per-sample final loss with its position in every epoch (the paper's Figure 1 data)."""
    from .atomic import atomic_file
    from .sft import sample_losses

    df = sample_losses(a.model, a.data, a.order, a.batch_size, _prompt(a), a.max_length,
                       progress=not a.quiet)
    with atomic_file(a.out) as tmp:
        df.to_parquet(tmp, index=False)
    print(f"{len(df)} samples, mean loss {df['loss'].mean():.4f} -> {a.out}")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    from .catalog import BENCHMARKS

    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", choices=list(BENCHMARKS), help="one benchmark")
    p.add_argument("--config", default="{}", help="JSON object of benchmark settings")
    p.add_argument("--name", help="output name (default: the benchmark)")
    p.add_argument("--suite", help='JSON {name: {"benchmark": ..., "settings": {...}}}: several '
                   "benchmarks, model loaded once, --out-dir written as a whole")
    p.add_argument("--prompt", default="{}", help=PROMPT_HELP)
    p.add_argument("--out-dir", required=True)


@command("evaluate", _evaluate_args)
def _evaluate(a: argparse.Namespace) -> None:
    """Evaluate one model on one benchmark (or a --suite); writes NAME.json and NAME.items.jsonl."""
    from .evaluate import evaluate, evaluate_suite

    if (a.suite is None) == (a.benchmark is None):
        raise OrdermergeError("give either --benchmark (one benchmark) or --suite (several)")
    if a.suite is not None:
        results = evaluate_suite(a.model, _json_arg(a.suite, "--suite"), a.out_dir,
                                 progress=not a.quiet, prompt=_prompt(a))
    else:
        results = [evaluate(a.model, a.benchmark, _json_arg(a.config, "--config"), a.out_dir, a.name,
                            progress=not a.quiet, prompt=_prompt(a))]
    for r in results:
        tps = f", {r['tokens_per_s']:.1f} tok/s" if r["tokens_per_s"] else ""
        print(f"{r['name']}: {r['metric']} = {r['value']:.4f} "
              f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] n={r['n']} ({r['seconds']:.1f} s{tps})")


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="JSON: results folder, experiment, models and "
                   "benchmarks (the workflow writes it)")


@command("aggregate", _manifest_args)
def _aggregate(a: argparse.Namespace) -> None:
    """Main results table (CSV, Markdown, LaTeX), paired comparisons and the claims table."""
    from .report import aggregate

    aggregate(_json_arg(a.manifest, "--manifest"))


@command("figures", _manifest_args)
def _figures(a: argparse.Namespace) -> None:
    """The paper's figures (PNG and PDF)."""
    from .figures import make_figures

    make_figures(_json_arg(a.manifest, "--manifest"))


def _front_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", required=True, help="JSON list of {manifest, setup}, one per experiment "
                   "(the workflow writes it)")
    p.add_argument("--out", required=True, help="reStructuredText file")


@command("front-page", _front_page_args)
def _front_page(a: argparse.Namespace) -> None:
    """The HTML report's front page: what was run and every experiment's claims table."""
    from .atomic import atomic_file
    from .report import front_page

    runs = json.loads(a.runs)
    with atomic_file(a.out) as tmp:
        tmp.write_text(front_page(runs))


README_START, README_END = "<!-- claims table: ordermerge readme-claims -->", "<!-- end of claims table -->"


def _readme_claims_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--claims", required=True, nargs="+", help="tables/claims.csv of each experiment")
    p.add_argument("--readme", default="README.md")


@command("readme-claims", _readme_claims_args)
def _readme_claims(a: argparse.Namespace) -> None:
    """Rewrite the README's claims table (between its two marker lines) from claims.csv files:
    the primary family and the exploratory rows shown or opposite (the rest counted)."""
    from .atomic import atomic_file
    from .claims import read_claims, render_markdown

    path = Path(a.readme)
    text = path.read_text(encoding="utf-8")
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise OrdermergeError(f"{path}: expected one {README_START!r} line and one {README_END!r} line")
    blocks = []
    for f in a.claims:
        try:
            table = read_claims(f)
        except (OSError, ValueError) as e:
            raise OrdermergeError(f"{f}: cannot read a claims table ({e})") from None
        blocks.append(f"`{f}`:\n\n{render_markdown(table, summary=True)}")
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    with atomic_file(path) as tmp:
        tmp.write_text(head + README_START + "\n" + "\n".join(blocks) + README_END + tail, encoding="utf-8")
    print(f"{path}: claims table from {', '.join(a.claims)}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ordermerge", description=__doc__)
    p.add_argument("--version", action="version", version=f"ordermerge {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (add_args, fn) in COMMANDS.items():
        sp = sub.add_parser(name, help=(fn.__doc__ or "").strip().split("\n")[0] or None)
        add_args(sp)
        sp.set_defaults(func=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # bad arguments (one line already written), --help, --version
        return int(e.code or 0)
    t0 = time.perf_counter()
    if args.quiet:
        # -q means no bar at all in a job log: also the libraries' own (transformers' weight
        # loading, the hub, datasets), which read these before they are imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        if "transformers" in sys.modules:  # imported already (a library caller): tell it directly
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        args.func(args)
    except OrdermergeError as e:
        sys.stderr.write(f"ordermerge {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ordermerge {args.command}: interrupted\n")
        return 130
    except OSError as e:  # a file the command reads or writes: name it, no traceback
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"ordermerge {args.command}: error: {where}{e.strerror or e}\n")
        return 1
    except Exception as e:
        if os.environ.get("ORDERMERGE_DEBUG"):
            raise
        sys.stderr.write(
            f"ordermerge {args.command}: internal error: {type(e).__name__}: {e} "
            "(set ORDERMERGE_DEBUG=1 for the traceback; please report it)\n"
        )
        return 1
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"ordermerge {args.command}: done in {time.perf_counter() - t0:.1f} s\n")
    return 0

