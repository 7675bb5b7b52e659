"""Shared fixtures: small real safetensors checkpoints and HF model folders made on the fly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_family(
    root: Path,
    n: int = 3,
    dtype: torch.dtype = torch.bfloat16,
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    frac_unchanged: float = 0.4,
) -> tuple[Path, list[Path]]:
    """A base and n sub-models as single-file safetensors folders.

    Each sub-model perturbs a random (1 - frac_unchanged) share of each tensor, so part of
    every task vector is exactly zero, like bf16 fine-tunes.
    """
    shapes = shapes or {"a.weight": (64, 48), "b.bias": (48,), "c.norm": (17,), "emb": (100, 16)}
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    paths = []
    for i in range(n + 1):
        folder = root / ("base" if i == 0 else f"m{i}")
        folder.mkdir(parents=True)
        tensors = {}
        for k, t in base.items():
            if i == 0:
                tensors[k] = t
            else:
                mask = torch.rand(t.shape, generator=g) >= frac_unchanged
                delta = 0.05 * torch.randn(t.shape, generator=g)
                tensors[k] = torch.where(mask, (t.float() + delta).to(dtype), t)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps({"model_type": "toy", "dtype": str(dtype)}))
        paths.append(folder)
    return paths[0], paths[1:]


@pytest.fixture
def family(tmp_path: Path) -> tuple[Path, list[Path]]:
    return make_family(tmp_path / "in")


def make_hf_family(root: Path, n: int = 3, seed: int = 0) -> tuple[Path, list[Path]]:
    """A real (tiny, tied-embedding) Llama base and n bf16 sub-models, as HF folders."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    base = root / "base"
    model.save_pretrained(base)
    subs = []
    for i in range(n):
        with torch.no_grad():
            m = LlamaForCausalLM(cfg).to(torch.bfloat16)
            m.load_state_dict(model.state_dict())
            for p in m.parameters():
                p.add_(
                    0.01
                    * torch.randn_like(p.float()).to(p.dtype)
                    * (torch.rand_like(p.float()) > 0.3)
                )
        m.save_pretrained(root / f"m{i + 1}")
        subs.append(root / f"m{i + 1}")
    return base, subs


sys.path.insert(0, str(ROOT / "tests"))


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A real HF folder: random 2-layer Llama with SmolLM2's tokenizer and chat template."""
    from ordermerge.models import prepare_base

    return prepare_base("tiny", tmp_path_factory.mktemp("tiny") / "base", "bfloat16", 0, TINY)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_base) -> Path:
    from ordermerge.data import prepare_data
    from ordermerge.models import load_tokenizer

    out = tmp_path_factory.mktemp("data")
    prepare_data({"format": "gsm_symbolic", "train_size": 12, "test_size": 4, "max_tokens": 400},
                 load_tokenizer(str(tiny_base)), out)
    return out


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_workdir(dst: Path, config: dict | None = None) -> Path:
    """A copy of the workflow (not of results) with its own config."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "profiles", "configs", "envs"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / item)
    cfg = config or yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def smk(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True,
                         text=True, timeout=1800)
    if check and res.returncode != 0:
        raise AssertionError(res.stdout[-3000:] + res.stderr[-5000:])
    return res


CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_NOTE = ("SLURM tests: tests/slurm/cluster.sh installs Debian's slurm-wlm and munge if they are "
              "missing (root, apt-get), starts a one-node cluster, and stops it at the end of the "
              "session if this session started it")


def pytest_report_header(config) -> str:
    return SLURM_NOTE


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster (its client variables); stopped afterwards if this
    session started it, so the test run leaves no daemon behind."""
    res = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        reason = (res.stderr.strip().splitlines() or ["cluster.sh start failed"])[-1]
        if os.environ.get("ORDERMERGE_REQUIRE_SLURM") == "1":
            pytest.fail(f"ORDERMERGE_REQUIRE_SLURM=1 but the SLURM cluster did not start: {reason}")
        pytest.skip(f"no SLURM cluster on this machine: {reason}")
    started = res.stdout.strip().endswith("started")
    conf = subprocess.run(["bash", str(CLUSTER), "env"], capture_output=True, text=True).stdout
    yield dict(line.split("=", 1) for line in conf.split())
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"))
    smk(wd)
    return wd
