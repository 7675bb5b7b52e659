"""Stage subcommands (registered on import by cli): prepare-base, prepare-data, make-order, sft,
sample-losses, evaluate, aggregate, figures."""

from __future__ import annotations

import argparse
import json

from .cli import command


def _prepare_base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="tiny | gguf:<pkg>/<file> | HF folder | hub id")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="init seed (tiny only)")
    p.add_argument("--tiny", default="{}", help="JSON: hidden_size, num_layers, ... (tiny only)")
    p.add_argument("--out", required=True)


@command("prepare-base", _prepare_base_args)
def _prepare_base(a: argparse.Namespace) -> None:
    """Import a base model into an HF folder (safetensors, tokenizer, chat template)."""
    from .models import prepare_base

    out = prepare_base(a.spec, a.out, a.dtype, a.seed, json.loads(a.tiny))
    print(f"base model {a.spec} -> {out}")


def _json_arg(text: str, what: str) -> dict:
    from . import OrdermergeError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise OrdermergeError(f"{what}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise OrdermergeError(f"{what}: expected a JSON object")
    return value


def _prepare_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON object: the dataset config")
    p.add_argument("--base", required=True, help="base model folder (its tokenizer counts tokens)")
    p.add_argument("--out", required=True, help="output folder: train.jsonl, test_*.jsonl, stats.json")


@command("prepare-data", _prepare_data_args)
def _prepare_data(a: argparse.Namespace) -> None:
    """Normalise a dataset into train/test JSONL with token-length statistics."""
    from .data import prepare_data
    from .models import load_tokenizer

    stats = prepare_data(_json_arg(a.config, "--config"), load_tokenizer(a.base), a.out, [a.base])
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
    p.add_argument("--out", required=True)


@command("make-order", _make_order_args)
def _make_order(a: argparse.Namespace) -> None:
    """Write order k: one permutation of the training ids per epoch."""
    from .orders import make_order, write_order
    from .text import read_jsonl

    rows = read_jsonl(a.data)
    if not rows:
        from . import OrdermergeError

        raise OrdermergeError(f"{a.data}: empty dataset")
    write_order(make_order([r["id"] for r in rows], a.k, a.epochs, a.mode, a.seed, a.batch_size), a.out)


def _sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--order", required=True)
    p.add_argument("--config", default="{}", help="JSON object of SFT settings")
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
                a.scratch, progress=not a.quiet)
    if res["log"]:
        last = res["log"][-1]
        print(f"trained {res['steps']} steps, final loss {last['loss']:.4f}, {last['seconds']:.1f} s")


def _sample_losses_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--order", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--out", required=True, help="Parquet file")


@command("sample-losses", _sample_losses_args)
def _sample_losses(a: argparse.Namespace) -> None:
    """Per-sample final loss with its position in every epoch (the paper's Figure 1 data)."""
    from pathlib import Path

    from .sft import sample_losses

    df = sample_losses(a.model, a.data, a.order, a.batch_size, max_length=a.max_length,
                       progress=not a.quiet)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)
    print(f"{len(df)} samples, mean loss {df['loss'].mean():.4f} -> {out}")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--benchmark", help="response_loss | gsm8k | humaneval | lm_eval")
    p.add_argument("--config", default="{}", help="JSON object of benchmark settings")
    p.add_argument("--name", help="output name (default: the benchmark)")
    p.add_argument("--suite", help='JSON {name: {"benchmark": ..., "settings": {...}}}: several '
                   "benchmarks, model loaded once, --out-dir written as a whole")
    p.add_argument("--out-dir", required=True)


@command("evaluate", _evaluate_args)
def _evaluate(a: argparse.Namespace) -> None:
    """Evaluate one model on one benchmark (or a --suite); writes NAME.json and NAME.items.jsonl."""
    from . import OrdermergeError
    from .evaluate import evaluate, evaluate_suite

    if (a.suite is None) == (a.benchmark is None):
        raise OrdermergeError("give either --benchmark (one benchmark) or --suite (several)")
    if a.suite is not None:
        results = evaluate_suite(a.model, _json_arg(a.suite, "--suite"), a.out_dir, progress=not a.quiet)
    else:
        results = [evaluate(a.model, a.benchmark, _json_arg(a.config, "--config"), a.out_dir, a.name,
                            progress=not a.quiet)]
    for r in results:
        tps = f", {r['tokens_per_s']:.1f} tok/s" if r["tokens_per_s"] else ""
        print(f"{r['name']}: {r['metric']} = {r['value']:.4f} "
              f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] n={r['n']} ({r['seconds']:.1f} s{tps})")


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="JSON: models and benchmarks (from the workflow)")
    p.add_argument("--root", required=True, help="the experiment's results folder")


@command("aggregate", _manifest_args)
def _aggregate(a: argparse.Namespace) -> None:
    """Main results table (CSV, Markdown, LaTeX) and paired comparisons."""
    from .report import aggregate

    aggregate(_json_arg(a.manifest, "--manifest"), a.root)


@command("figures", _manifest_args)
def _figures(a: argparse.Namespace) -> None:
    """The paper's figures (PNG and PDF)."""
    from .figures import make_figures

    make_figures(_json_arg(a.manifest, "--manifest"), a.root)
