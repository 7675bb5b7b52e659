"""Faults lose nothing: a full disk, kill -9 of single jobs and of the whole pipeline, a second
Snakemake on the same folder. Every case and its test: docs/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SNAKEMAKE, make_family, smk

from ordermerge.atomic import atomic_file, clear_stale_partials

ORDERMERGE = [sys.executable, "-m", "ordermerge", "-q"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones too), relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".partial" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------------------------------------
# Full disk


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted for this test (root only), with 64 KiB already used."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)])
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    (mnt / "filler").write_bytes(b"x" * 65536)
    yield mnt
    run(["umount", str(mnt)])


def test_merge_into_a_full_filesystem_fails_cleanly(tmp_path, small_fs):
    base, subs = make_family(tmp_path / "in", shapes={"a.weight": (512, 512), "b.weight": (512, 512)})
    res = run([*ORDERMERGE, "merge", "--base", str(base), "--models", *map(str, subs),
               "--method", "parameter_selection", "--config", '{"resample": true}', "--max-shard-size", "256KB",
               "--out", str(small_fs / "merged")])
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"ordermerge merge: error: {small_fs / 'merged'}: merge failed: No space left on device")
    assert lines[0].endswith("no output was left behind")
    assert sorted(os.listdir(small_fs)) == ["filler"]


# ---------------------------------------------------------------------------------------------
# kill -9 of single jobs at random points


def timed(cmd: list[str], watch: Path) -> tuple[float, float]:
    """Run cmd to completion: (seconds until a partial output appeared under watch, total)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0, first = time.monotonic(), None
    while proc.poll() is None:
        if first is None and watch.exists() and litter(watch):
            first = time.monotonic() - t0
        time.sleep(0.005)
    assert proc.returncode == 0, proc.stderr.read()
    total = time.monotonic() - t0
    return (first if first is not None else 0.0), total


def kill_at_random(cmd: list[str], after: float, window: float, seed: int) -> bool:
    """Start cmd, SIGKILL it at after + U(0, window) s; True if it was still running."""
    delay = after + random.Random(seed).uniform(0, window)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


@pytest.fixture(scope="module")
def merge_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("killmerge")
    base, subs = make_family(root / "in", shapes={f"l{i}.weight": (384, 512) for i in range(12)})
    cmd = [*ORDERMERGE, "merge", "--base", str(base), "--models", *map(str, subs),
           "--method", "parameter_selection", "--config", '{"resample": true}', "--seed", "3",
           "--max-shard-size", "1MB"]
    first, total = timed([*cmd, "--out", str(root / "ref")], root)
    return cmd, tree(root / "ref"), first, total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_of_a_merge_leaves_nothing_half_written(merge_case, tmp_path, seed):
    cmd, ref, first, total = merge_case
    out = tmp_path / "merged"
    # killed while writing: between the first partial output and the end of the reference run
    running = kill_at_random([*cmd, "--out", str(out)], first, total - first, seed)
    assert not out.exists() or tree(out) == ref  # absent, or complete
    assert running or out.exists()
    res = run([*cmd, "--out", str(out)])  # the plain rerun Snakemake would do
    assert res.returncode == 0, res.stderr
    assert tree(out) == ref
    assert litter(tmp_path) == []


@pytest.fixture(scope="module")
def eval_case(tiny_base, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("killeval")
    data = str(tiny_data / "test_id.jsonl")
    suite = json.dumps({"loss": {"benchmark": "response_loss", "settings": {"data": data, "batch_size": 1}},
                        "gsm": {"benchmark": "gsm8k", "settings": {"data": data, "limit": 2,
                                                                    "max_new_tokens": 8}}})
    cmd = [*ORDERMERGE, "evaluate", "--model", str(tiny_base), "--suite", suite]
    _, total = timed([*cmd, "--out-dir", str(root / "ref")], root)
    return cmd, root / "ref", total


def _results(folder: Path) -> dict[str, object]:
    """The folder's files, with the wall-clock fields of the result JSONs removed."""
    out = {}
    for name, raw in tree(folder).items():
        if name.endswith(".json"):
            out[name] = {k: v for k, v in json.loads(raw).items() if k not in ("seconds", "tokens_per_s")}
        else:
            out[name] = raw
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_of_an_evaluation_suite_leaves_nothing_half_written(eval_case, tmp_path, seed):
    cmd, ref, seconds = eval_case
    out = tmp_path / "eval"
    kill_at_random([*cmd, "--out-dir", str(out)], 0, seconds, seed)
    assert not out.exists() or _results(out) == _results(ref)  # absent, or complete
    res = run([*cmd, "--out-dir", str(out)])
    assert res.returncode == 0, res.stderr
    assert _results(out) == _results(ref)
    assert sorted(_results(out)) == ["gsm.items.jsonl", "gsm.json", "loss.items.jsonl", "loss.json",
                                     "ordermerge_eval.json"]
    assert litter(tmp_path) == []


def test_stale_partials_of_dead_processes_are_cleared(tmp_path):
    target = tmp_path / "main.csv"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".main.csv.partial-{dead.pid}").write_text("half")
    (tmp_path / f".main.csv.old-{dead.pid}").mkdir()
    zombie = subprocess.Popen(["sleep", "60"])  # killed and not yet reaped: still dead
    zombie.kill()
    time.sleep(0.2)
    (tmp_path / f".main.csv.partial-{zombie.pid}").write_text("half")
    live = tmp_path / f".main.csv.partial-{os.getppid()}"  # a live writer's file is left alone
    live.write_text("in progress")
    (tmp_path / ".other.csv.partial-1").write_text("not ours")
    with atomic_file(target) as tmp:
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["main.csv", live.name, ".other.csv.partial-1"])
    assert clear_stale_partials(target) == []
    zombie.wait()


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "t.md"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.md"]


# ---------------------------------------------------------------------------------------------
# The whole pipeline killed three times, then resumed


def complete(path: Path) -> str | None:
    """Why an existing output is not complete, or None."""
    if path.suffix == ".safetensors":
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        return None if len(raw) == 8 + n + end else "truncated safetensors"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except ValueError:
            return "truncated json"
    if path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            try:
                json.loads(line)
            except ValueError:
                return "truncated jsonl"
    if path.suffix == ".png" and not path.read_bytes().endswith(b"IEND\xaeB`\x82"):
        return "truncated png"
    if path.suffix == ".pdf" and b"%%EOF" not in path.read_bytes()[-64:]:
        return "truncated pdf"
    return None


def check_outputs(res: Path) -> None:
    # hidden names (.NAME.partial-PID, .snakemake_timestamp) are not outputs; scratch holds
    # the SFT checkpoint, which is written the same way
    def visible(p: Path) -> bool:
        parts = p.relative_to(res).parts
        return not any(x.startswith(".") for x in parts) and "scratch" not in parts

    bad = {str(p): why for p in res.rglob("*") if p.is_file() and visible(p) and (why := complete(p))}
    assert not bad, bad


def start(wd: Path, *args: str) -> subprocess.Popen:
    log = open(wd / "run.log", "a")
    return subprocess.Popen([*SNAKEMAKE, "--cores", "2", *args], cwd=wd, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and every job it started
    proc.wait()


def wait_for(proc: subprocess.Popen, path: Path, limit: float = 900) -> None:
    """Until `path` exists (a glob pattern: until something matches it)."""
    t0 = time.monotonic()
    while not (any(path.parent.glob(path.name)) if "*" in path.name else path.exists()):
        assert proc.poll() is None, "the pipeline ended before " + str(path)
        assert time.monotonic() - t0 < limit, f"timeout waiting for {path}"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_pipeline_resumes_to_the_uninterrupted_result(tiny_run, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(tiny_run, wd, symlinks=True)  # copy2 keeps mtimes
    top = wd / "results/tiny"
    res, ref = top / "rep1", tiny_run / "results/tiny/rep1"  # replicate 1 of the experiment
    # Order 1 and everything downstream of it are gone (Snakemake does not recreate a missing
    # intermediate output whose consumers are up to date): SFT, merges, evaluations, report.
    for rel in ["sft/order1", "scratch", "merged", "eval/order1",
                *(f"eval/{p.name}" for p in (res / "eval").glob("*-n*"))]:
        shutil.rmtree(res / rel, ignore_errors=rel == "scratch")
    for rel in ["tables", "figures"]:
        shutil.rmtree(top / rel)
    rng = random.Random(7)

    # 1: during order 1's SFT, after its first checkpoint
    proc = start(wd)
    wait_for(proc, res / "scratch/order1/step-*")  # a published checkpoint
    # a second Snakemake on the same folder is refused (a dry run takes no lock: ask for work)
    locked = run([*SNAKEMAKE, "--cores", "1"], cwd=wd)
    time.sleep(rng.uniform(0, 1.5))
    kill_group(proc)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stdout + locked.stderr
    check_outputs(top)
    assert not (res / "sft/order1/model").exists()

    def resume_then_kill(after: Path, within: float) -> None:
        """Unlock, resume, kill U(0, within) s after `after` appears; outputs stay complete."""
        assert run([*SNAKEMAKE, "--unlock"], cwd=wd).returncode == 0
        proc = start(wd, "--rerun-incomplete")
        wait_for(proc, after)
        time.sleep(rng.uniform(0, within))
        kill_group(proc)
        check_outputs(top)

    resume_then_kill(res / "sft/order1/model", 15)  # 2: among the merges and evaluations
    (top / "tables/main.md").unlink(missing_ok=True)
    resume_then_kill(top / "tables/main.md", 3)  # 3: while the figures are drawn

    assert run([*SNAKEMAKE, "--unlock"], cwd=wd).returncode == 0
    smk(wd, "--rerun-incomplete")
    assert "resuming from checkpoint at step" in (res / "logs/sft_order1.log").read_text()
    check_outputs(top)
    assert litter(top) == []
    # bit-identical to the run that was never interrupted
    a, b = tree(res / "sft/order1/model"), tree(ref / "sft/order1/model")
    strip = {"train_log.jsonl"}  # its per-step wall-clock `seconds` differ
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
    assert (res / "sft/order1/sample_losses.parquet").read_bytes() == (ref / "sft/order1/sample_losses.parquet").read_bytes()
    for p in sorted((ref / "merged").rglob("*.safetensors")) + sorted((ref / "eval").rglob("*.items.jsonl")):
        rel = p.relative_to(ref)
        assert (res / rel).read_bytes() == p.read_bytes(), rel
    assert "Nothing to be done" in smk(wd, "-n").stdout
