"""Evaluation: answer extraction, pass@k, the HumanEval sandbox under attack, outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ordermerge.evaluate import bootstrap_ci, evaluate, sandbox
from ordermerge.evaluate.extract import extract_code, extract_number, pass_at_k
from ordermerge.evaluate.sandbox import run_program


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so the answer is\n#### 42", "42"),
        ("#### 1,234", "1234"),
        ("It costs $12.50 in total.", "12.5"),
        ("We get 7 apples, then 3 more: 10 apples", "10"),
        ("#### 16.0", "16"),
        ("first 5, #### -3 and later 9", "-3"),
        ("The answer is 45 cm.", "45"),
        ("no number here", None),
        ("####", None),
        ("#### +8", "8"),
        ("total: 1,000,000", "1000000"),
    ],
)
def test_gsm_answer_extraction(text, expected):
    assert extract_number(text) == expected


def test_pass_at_k_hand_computed():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(7,2)/C(10,2) = 1 - 21/45
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    # n - c < k: every k-subset contains a correct sample
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(20, 1, 10) == pytest.approx(0.5)


def test_code_extraction():
    prompt = "def f(x):\n    \"\"\"double\"\"\"\n"
    assert extract_code(prompt, "    return 2*x\n\ndef g():\n    pass", "f") == prompt + "    return 2*x\n"
    fenced = "Sure!\n```python\ndef f(x):\n    return 2*x\n```\nDone."
    assert extract_code(prompt, fenced, "f") == "def f(x):\n    return 2*x\n"
    assert extract_code(prompt, "    return 2*x\nprint(f(2))", "f") == prompt + "    return 2*x"
    typed = "from typing import List\n\n\ndef f(x: List[int]):\n    \"\"\"double\"\"\"\n"
    answer = "```python\ndef f(x: List[int]):\n    return [2 * v for v in x]\n```"
    program = extract_code(typed, answer, "f")
    assert program == "from typing import List\ndef f(x: List[int]):\n    return [2 * v for v in x]\n"
    assert run_program(program, "def check(c):\n    assert c([1]) == [2]\n", "f", 10.0).passed


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    scores = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(scores)
    assert (lo, hi) == bootstrap_ci(scores)
    assert lo < 0.7 < hi


CHECK = "def check(c):\n    assert c(2) == 4\n    assert abs(c(1.5) - 3.0) < 1e-9\n"
GOOD = "def f(x):\n    return 2 * x\n"


def test_sandbox_pass_and_fail():
    assert run_program(GOOD, CHECK, "f").passed
    r = run_program("def f(x):\n    return x\n", CHECK, "f")
    assert not r.passed and r.status == "failed" and "AssertionError" in r.detail


ATTACKS = {
    "infinite_loop": "def f(x):\n    while True:\n        pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "allocate_50GB": "blob = bytearray(50 * 2**30)\n" + GOOD,
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)\n" + GOOD,
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + GOOD,
    "sys_exit_0": "import sys\nsys.exit(0)\n" + GOOD,
    "os_exit_0": "import os\nos._exit(0)\n" + GOOD,
    "fake_passed_line": "print('passed')\nprint('PASS')\ndef f(x):\n    return x\n",
    "monkeypatch_builtins": "import builtins\nbuiltins.abs = lambda v: 0\nabs = lambda v: 0\n"
    "def f(x):\n    return 4 if x == 2 else 0\n",
    "patch_assertion": "import builtins\nbuiltins.AssertionError = SystemExit\ndef f(x):\n    return x\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_sandbox_attacks_fail_and_leave_the_evaluator_unharmed(name, tmp_path):
    t0 = time.time()
    r = run_program(ATTACKS[name], CHECK, "f", timeout=3)
    # killing "the parent" reaches nothing outside the sandbox: the correct f is still scored
    assert r.passed == (name == "kill_parent"), r
    assert time.time() - t0 < 15
    assert run_program(GOOD, CHECK, "f").passed  # the evaluator still works afterwards


@pytest.mark.parametrize("target", ["write", "delete"])
def test_sandbox_cannot_touch_files_outside_its_dir(tmp_path, target):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("safe")
    os.chmod(tmp_path, 0o755)
    code = (f"open({str(sentinel)!r}, 'w').write('pwned')\n" if target == "write"
            else f"import os\nos.remove({str(sentinel)!r})\n") + GOOD
    assert not run_program(code, CHECK, "f").passed
    assert sentinel.read_text() == "safe"


@pytest.mark.parametrize("isolate", [True, False])
def test_sandbox_runs_in_a_session_and_process_group_of_its_own(isolate):
    """kill(0, …) inside the run must not reach the evaluator's process group (issue 22)."""
    probe = "import os\ndef f():\n    return [os.getpid(), os.getpgid(0), os.getsid(0)]\n"
    r = run_program(probe, "def check(c):\n    r = c()\n    assert r == 0, r\n", "f",
                    isolate=isolate)
    pid, pgid, sid = eval(r.detail.removeprefix("AssertionError: "))
    if isolate:
        assert (pid, pgid, sid) == (1, 1, 1)  # the evaluator's group is not even visible
    else:
        assert pgid == sid == pid
        assert pgid != os.getpgid(0) and sid != os.getsid(0)


SANDBOX_DIR = Path(sandbox.__file__).parent
ATTACK_SCRIPT = Path(__file__).parent / "sandbox_attacks.py"


def _attack_report(res: subprocess.CompletedProcess) -> dict:
    assert res.stdout.strip(), res.stderr[-2000:]
    report = json.loads(res.stdout)
    breached = {k: v["detail"] for k, v in report.items() if not v["held"]}
    assert breached == {}, breached
    assert len(report) == 23  # 21 attacks, the evaluator afterwards, two evaluators at once
    return report


def test_sandbox_attacks_hold_for_the_user_running_the_tests():
    res = subprocess.run([sys.executable, str(ATTACK_SCRIPT), "--sandbox", str(SANDBOX_DIR)],
                         capture_output=True, text=True, timeout=300)
    _attack_report(res)
    assert res.returncode == 0


USER = "ordermerge-sbx"


@pytest.fixture
def ordinary_user():
    """A created ordinary user (removed afterwards if this fixture created it)."""
    if os.geteuid() != 0:
        pytest.skip("creating a user needs root; the attacks above already ran as this user")
    created = subprocess.run(["id", USER], capture_output=True).returncode != 0
    if created:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    yield USER
    if created:
        subprocess.run(["userdel", "--remove", USER], capture_output=True)


def test_sandbox_attacks_hold_for_an_ordinary_user(ordinary_user):
    """The same attacks with the system Python as a created non-root user: the isolation
    (user namespaces) must not depend on privileges."""
    work = Path(tempfile.mkdtemp(prefix="ordermerge-sbx-"))
    try:
        os.chmod(work, 0o755)
        for f in (SANDBOX_DIR / "sandbox.py", ATTACK_SCRIPT):
            shutil.copy(f, work / f.name)
            os.chmod(work / f.name, 0o644)
        python = shutil.which("python3", path="/usr/bin:/bin")
        cmd = f"cd /tmp && {python} {work}/sandbox_attacks.py --sandbox {work}"
        res = subprocess.run(["su", ordinary_user, "-s", "/bin/sh", "-c", cmd],
                             capture_output=True, text=True, timeout=300)
        _attack_report(res)
        assert res.returncode == 0
    finally:
        shutil.rmtree(work)


def test_humaneval_fails_closed_where_user_namespaces_are_unavailable():
    """Inside a user namespace whose limit on nested namespaces is 0, no sandbox can be made:
    the benchmark refuses in one line, unless allow_unsandboxed (then one warning)."""
    probe = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -Ur is not available here")
    code = ("import sys\nfrom ordermerge.evaluate.humaneval import sandbox_isolation\n"
            "print(sandbox_isolation({'allow_unsandboxed': True}))\n"
            "from ordermerge.cli import main\n"
            "sys.exit(main(['-q', 'evaluate', '--model', 'none', '--benchmark', 'humaneval', "
            "'--out-dir', sys.argv[1]]))\n")
    with tempfile.TemporaryDirectory() as out:
        inner = f"echo 0 > /proc/sys/user/max_user_namespaces && {sys.executable} -c \"$0\" {out}/x"
        res = subprocess.run(["unshare", "-Ur", "sh", "-c", inner, code], capture_output=True,
                             text=True, timeout=120)
        assert not os.path.exists(f"{out}/x")
    assert res.returncode == 2, res.stderr
    assert res.stdout.strip() == "False"
    warning, error = [x for x in res.stderr.splitlines() if x.strip()][-2:]
    assert warning.startswith("ordermerge: WARNING: running generated code WITHOUT isolation")
    assert error.startswith("ordermerge evaluate: error: benchmark humaneval: cannot sandbox "
                            "generated code: unshare(user, mount, pid, net, ipc, uts namespaces)")
    assert error.endswith("(set allow_unsandboxed: true in this benchmark's settings to run it "
                          "without isolation)")


@pytest.mark.parametrize("value", [None, True, 0, -3, 2**80, 1.5, float("inf"), "s\u00e9", b"\x00",
                                   [1, (2, 3)], {"a": [1], 2: {3}}, frozenset({1}), ((),)])
def test_plain_data_round_trips_exactly(value):
    got = sandbox.decode(json.loads(json.dumps(sandbox.encode(value))))
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("bad", [{"x": 1}, {"f": 1}, {"t": 1}, {"d": [[1]]}, {"f": "1", "t": []}])
def test_decoding_refuses_anything_but_the_plain_tags(bad):
    with pytest.raises(ValueError, match="malformed reply"):
        sandbox.decode(bad)


def test_sandboxed_run_sees_no_host_and_runs_unprivileged():
    probe = ("import os\ndef f():\n    return [os.getuid(), os.getpid(), sorted(os.listdir('/')), "
             "os.listdir('/tmp')]\n")
    r = run_program(probe, "def check(c):\n    r = c()\n    assert r == 0, r\n", "f")
    uid, pid, top, tmp = eval(r.detail.removeprefix("AssertionError: "))
    assert (uid, pid, tmp) == (1000, 1, [])  # inner uid 1000, PID 1 of its own namespace
    assert set(top) <= {".sandbox", "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32",
                        "root", "home", "opt", "sbin", "tmp", "usr", "work"}
    assert "proc" not in top and "var" not in top


def test_all_164_canonical_solutions_pass_and_a_wrong_body_fails():
    from ordermerge.data import humaneval_rows

    rows = humaneval_rows()
    assert len(rows) == 164
    failed = [r["id"] for r in rows
              if not run_program(r["prompt"] + r["response"], r["tests"], r["entry_point"],
                                 prelude=r["prompt"]).passed]
    assert failed == []
    r = rows[0]
    assert not run_program(r["prompt"] + "    return None\n", r["tests"], r["entry_point"],
                           prelude=r["prompt"]).passed


def _items(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_response_loss_and_gsm8k_outputs_are_complete_and_deterministic(tiny_base, tiny_data, tmp_path):
    cfg = {"data": str(tiny_data / "test_id.jsonl")}
    r = evaluate(tiny_base, "response_loss", cfg, tmp_path / "a", progress=False)
    assert r["metric"] == "mean_response_nll" and r["n"] == 4 and r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert len(r["model"]["config_sha256"]) == 64
    assert r["settings"] == {**cfg, "batch_size": 16, "max_length": 1024}  # the catalogue's defaults
    g1 = evaluate(tiny_base, "gsm8k", {**cfg, "max_new_tokens": 12, "batch_size": 2}, tmp_path / "a",
                  progress=False)
    evaluate(tiny_base, "gsm8k", {**cfg, "max_new_tokens": 12, "batch_size": 3}, tmp_path / "b",
             progress=False)
    items_a, items_b = _items(tmp_path / "a/gsm8k.items.jsonl"), _items(tmp_path / "b/gsm8k.items.jsonl")
    assert [i["completion"] for i in items_a] == [i["completion"] for i in items_b]  # greedy, batch-invariant
    assert set(items_a[0]) >= {"id", "prompt", "completion", "reference", "score"}
    assert g1["tokens_per_s"] > 0


def test_unknown_benchmark_or_setting(tiny_base, tmp_path):
    from ordermerge import OrdermergeError

    with pytest.raises(OrdermergeError, match="unknown benchmark 'mmlu'"):
        evaluate(tiny_base, "mmlu", {}, tmp_path)
    with pytest.raises(OrdermergeError, match="unknown setting 'max_tokens'"):
        evaluate(tiny_base, "gsm8k", {"max_tokens": 3}, tmp_path)


def test_a_suite_equals_its_benchmarks_run_one_by_one(tiny_base, tiny_data, tmp_path):
    from ordermerge import OrdermergeError
    from ordermerge.evaluate import evaluate_suite

    data = str(tiny_data / "test_id.jsonl")
    suite = {"loss": {"benchmark": "response_loss", "settings": {"data": data}},
             "gsm": {"benchmark": "gsm8k", "settings": {"data": data, "max_new_tokens": 6}}}
    results = evaluate_suite(tiny_base, suite, tmp_path / "suite" / "m", progress=False)
    assert [r["name"] for r in results] == ["loss", "gsm"]
    for name, spec in suite.items():
        evaluate(tiny_base, spec["benchmark"], spec["settings"], tmp_path / "single", name, progress=False)
        assert (tmp_path / f"suite/m/{name}.items.jsonl").read_bytes() == \
            (tmp_path / f"single/{name}.items.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "suite").iterdir()) == ["m"]  # no partial left
    with pytest.raises(OrdermergeError, match="unknown setting 'limt'"):
        evaluate_suite(tiny_base, {"x": {"benchmark": "gsm8k", "settings": {"limt": 1}}}, tmp_path / "bad")
    with pytest.raises(OrdermergeError, match=r"evaluate --suite: x: expected \{\"benchmark\""):
        evaluate_suite(tiny_base, {"x": {"benchmark": "gsm9k"}}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


LM_EVAL_TASK = """task: ordermerge_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def _choice_logprob(model, tok, context: str, continuation: str) -> float:
    # the harness's loglikelihood: encode context + continuation, score the tokens after the
    # context's own encoding
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_lm_eval_bridge_scores_a_local_task_per_document(tiny_base, tmp_path):
    pytest.importorskip("lm_eval")
    from ordermerge.models import load_model, load_tokenizer

    docs = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1), "seven"],
             "answer": i % 3} for i, (a, b) in enumerate([(1, 2), (3, 4), (10, 5), (2, 2), (6, 1), (8, 9)])]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local.yaml").write_text(LM_EVAL_TASK.format(data=data))
    cfg = {"tasks": ["ordermerge_local_mc"], "include_path": str(tasks), "batch_size": 2}
    r = evaluate(tiny_base, "lm_eval", cfg, tmp_path / "out", progress=False)
    items = _items(tmp_path / "out/lm_eval.items.jsonl")
    assert r["metric"] == "ordermerge_local_mc/acc" and r["n"] == len(docs) == len(items)
    assert [i["id"] for i in items] == [f"ordermerge_local_mc/{k}" for k in range(len(docs))]
    assert r["value"] == pytest.approx(r["lm_eval"]["ordermerge_local_mc"]["acc,none"])
    # every per-document score equals an independent log-likelihood argmax with transformers
    model, tok = load_model(tiny_base, dtype=torch.float32), load_tokenizer(str(tiny_base))
    for d, item in zip(docs, items, strict=True):
        scores = [_choice_logprob(model, tok, d["question"], " " + c) for c in d["choices"]]
        assert item["score"] == float(max(range(3), key=scores.__getitem__) == d["answer"])
    from ordermerge import OrdermergeError

    with pytest.raises(OrdermergeError, match="unknown task 'no_such_task'"):
        evaluate(tiny_base, "lm_eval", {**cfg, "tasks": ["no_such_task"]}, tmp_path / "bad")


def test_response_logits_give_the_full_forwards_loss(tiny_base, tiny_data):
    # logits only from the first response position on must not change any per-sample loss
    from ordermerge.jsonl import read_jsonl
    from ordermerge.models import load_model, load_tokenizer
    from ordermerge.text import DEFAULT_PROMPT, IGNORE, collate, encode, token_nll

    model, tok = load_model(tiny_base, dtype=torch.float32), load_tokenizer(str(tiny_base))
    rows = read_jsonl(tiny_data / "test_id.jsonl")
    batch = collate([encode(tok, r["prompt"], r["response"], DEFAULT_PROMPT, 1024) for r in rows],
                    tok.pad_token_id)
    assert (batch["labels"][:, :20] == IGNORE).all()  # prompts: nothing to keep there
    with torch.no_grad():
        sums, counts = token_nll(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                            labels.reshape(-1), ignore_index=IGNORE,
                                            reduction="none").view(labels.shape)
    torch.testing.assert_close(sums, nll.sum(1), rtol=1e-5, atol=1e-5)
    assert counts.tolist() == (labels != IGNORE).sum(1).tolist()
