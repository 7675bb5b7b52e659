"""Merge benchmark: ordermerge strategies vs mergekit on the same inputs, and the I/O floor.

Builds a synthetic Llama-shaped bf16 model (~0.37 B parameters by default, 2 shards) plus 5
sub-models (base + a small perturbation, rounded to bf16, so part of every task vector is
exactly zero), then times whole-process runs, interleaved and repeated (medians), and prints a
table: wall seconds, peak RSS, GB/s of input read, ratio to mergekit's fastest method and to the
I/O floor (reading every input byte once and writing the output once).

    python benchmarks/merge_bench.py --repeats 3 \
        [--mergekit /path/to/venv-with-mergekit/bin/mergekit-yaml] [--scaling]

mergekit is a benchmark-only extra, never a runtime dependency: install it in its own venv
(`pip install torch==2.13.0 mergekit==0.1.5`) and pass its `mergekit-yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from workdir import work_dir

ORDERMERGE = [
    ("weighted_average", []),
    ("parameter_selection", ["--config", '{"resample": false}']),
    ("parameter_selection", ["--config", '{"resample": true}']),
    ("task_arithmetic", []),
    ("ties", ["--config", '{"density": 0.5}']),
    ("dare_linear", ["--config", '{"drop_rate": 0.5}']),
    ("dare_ties", ["--config", '{"drop_rate": 0.5}']),
]
MERGEKIT = {
    "linear": {"weight": 1.0},
    "task_arithmetic": {"weight": 1.0},
    "ties": {"weight": 1.0, "density": 0.5},
    "dare_linear": {"weight": 1.0, "density": 0.5},
}


def llama_shapes(layers: int, hidden: int, inter: int, vocab: int) -> dict[str, tuple[int, ...]]:
    kv = hidden // 4
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden),
                                     "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s |= {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
              p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
              p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
              p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
              p + "post_attention_layernorm.weight": (hidden,)}
    return s


def write_model(folder: Path, tensors: dict[str, torch.Tensor], config: dict, shards: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for n in names:
        groups[min(shards - 1, acc * shards // total)].append(n)
        acc += tensors[n].numel() * tensors[n].element_size()
    weight_map = {}
    for i, g in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in g}, str(folder / fname), metadata={"format": "pt"})
        weight_map |= {n: fname for n in g}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))


def build(work: Path, layers: int, hidden: int, inter: int, vocab: int, n_models: int) -> None:
    marker = work / f"built-{layers}-{hidden}-{inter}-{vocab}-{n_models}"
    if marker.exists():
        return
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 4, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "dtype": "bfloat16", "torch_dtype": "bfloat16"}
    g = torch.Generator().manual_seed(0)
    shapes = llama_shapes(layers, hidden, inter, vocab)
    base = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    write_model(work / "base", base, config)
    for i in range(n_models):
        # An SFT-sized update: bf16 rounding sends a good share of entries back to the base.
        sub = {n: (t.float() + 2e-4 * torch.randn(t.shape, generator=g)).to(torch.bfloat16)
               for n, t in base.items()}
        write_model(work / f"m{i + 1}", sub, config)
    marker.touch()


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a whole process."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {res.stderr[-1500:]}")
    return wall, int(res.stderr.strip().splitlines()[-1]) / 1024


def io_floor(work: Path, n_models: int, out: Path) -> tuple[float, float]:
    code = f"""
import pathlib, os
folders = [pathlib.Path({str(work)!r}) / 'base'] + [pathlib.Path({str(work)!r}) / f'm{{i + 1}}' for i in range({n_models})]
size = 0
for d in folders:
    for f in sorted(d.glob('*.safetensors')):
        with open(f, 'rb') as fh:
            while chunk := fh.read(1 << 24):
                size += len(chunk)
one = sum(f.stat().st_size for f in folders[0].glob('*.safetensors'))
with open({str(out)!r}, 'wb') as fh:
    block = b'\\0' * (1 << 24)
    for _ in range(one // len(block) + 1):
        fh.write(block)
    fh.flush(); os.fsync(fh.fileno())
"""
    return timed([sys.executable, "-c", code])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="a new or empty folder (default: a fresh temporary one)")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mergekit", help="path to mergekit-yaml (from a separate venv)")
    ap.add_argument("--scaling", action="store_true", help="also check RSS at 2x the layers")
    a = ap.parse_args()
    work = work_dir(a.work, "merge-bench")
    t0 = time.perf_counter()
    build(work, a.layers, a.hidden, a.intermediate, a.vocab, a.models)
    n_params = sum(torch.Size(s).numel() for s in llama_shapes(a.layers, a.hidden, a.intermediate, a.vocab).values())
    bytes_in = 2 * n_params * (1 + a.models)
    print(f"inputs: base + {a.models} sub-models, {n_params / 1e9:.3f} B parameters each (bf16, 2 shards), "
          f"{bytes_in / 1e9:.2f} GB read per merge; built in {time.perf_counter() - t0:.0f} s", flush=True)
    subs = [str(work / f"m{i + 1}") for i in range(a.models)]
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    runs: dict[str, list[tuple[float, float]]] = {}
    jobs: list[tuple[str, list[str]]] = []
    for strat, extra in ORDERMERGE:
        label = "ordermerge " + strat + ("+resample" if '"resample": true' in " ".join(extra) else "")
        jobs.append((label, [sys.executable, "-m", "ordermerge", "-q", "merge", "--base", str(work / "base"),
                             "--models", *subs, "--method", strat, *extra, "--out", str(work / "out-om")]))
    if a.mergekit:
        for method, params in MERGEKIT.items():
            models = [{"model": s, "parameters": params} for s in subs]
            cfg = {"merge_method": method, "base_model": str(work / "base"), "models": models,
                   "dtype": "bfloat16"}
            if method == "linear":  # a plain weighted average of the sub-models
                cfg.pop("base_model")
            path = work / f"mk-{method}.yaml"
            path.write_text(json.dumps(cfg))
            jobs.append((f"mergekit {method}", [a.mergekit, str(path), str(work / "out-mk"),
                                                "--lazy-unpickle", "--no-copy-tokenizer"]))
    jobs.append(("I/O floor (read all, write one)", []))
    for rep in range(a.repeats):
        for label, cmd in jobs:
            r = io_floor(work, a.models, work / "floor.bin") if not cmd else timed(cmd, env)
            runs.setdefault(label, []).append(r)
            print(f"  rep {rep + 1} {label:42s} {r[0]:7.2f} s  {r[1]:7.0f} MB", flush=True)
    med = {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in runs.items()}
    mk = [v[0] for k, v in med.items() if k.startswith("mergekit")]
    fastest_mk = min(mk) if mk else None
    floor = med["I/O floor (read all, write one)"][0]
    print(f"\n| method | wall s (median of {a.repeats}) | peak RSS MB | GB/s | mergekit fastest / this | this / I/O floor |")
    print("|---|---|---|---|---|---|")
    for k, (w, m) in med.items():
        ratio = f"{fastest_mk / w:.2f}x" if fastest_mk else "n/a"
        print(f"| {k} | {w:.2f} | {m:.0f} | {bytes_in / 1e9 / w:.2f} | {ratio} | {w / floor:.2f} |")
    if a.scaling:
        print("\npeak RSS of parameter_selection+resample as the layer count doubles:")
        for layers in (a.layers // 2, a.layers):
            d = work / f"scale{layers}"
            build(d, layers, a.hidden, a.intermediate, a.vocab // 4, 2)
            w, m = timed([sys.executable, "-m", "ordermerge", "-q", "merge", "--base", str(d / "base"),
                          "--models", str(d / "m1"), str(d / "m2"), "--method", "parameter_selection",
                          "--config", '{"resample": true}', "--out", str(d / "out")], env)
            print(f"| {layers} layers | {w:.2f} s | {m:.0f} MB |")


if __name__ == "__main__":
    main()
