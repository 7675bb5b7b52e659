"""Dataset adapters, order files, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ordermerge import OrdermergeError
from ordermerge.data import gsm_symbolic_splits, prepare_data
from ordermerge.jsonl import read_jsonl
from ordermerge.orders import make_order, read_order, write_order
from ordermerge.text import collate, encode

IDS = [f"s{i}" for i in range(20)]


@pytest.mark.parametrize("mode", ["shuffle", "fixed", "batch_shuffle"])
def test_every_epoch_is_a_permutation_and_files_are_byte_identical(tmp_path, mode):
    o = make_order(IDS, k=2, epochs=3, mode=mode, seed=5, batch_size=4)
    assert len(o["epochs"]) == 3
    for p in o["epochs"]:
        assert sorted(p) == sorted(IDS)
    write_order(o, tmp_path / "a.json")
    write_order(make_order(IDS, 2, 3, mode, 5, 4), tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text())["epochs"] == o["epochs"]
    assert read_order(tmp_path / "a.json", IDS)["epochs"] == o["epochs"]


def test_modes_differ_as_documented():
    s = make_order(IDS, 1, 3, "shuffle", 0)["epochs"]
    assert s[0] != s[1] != s[2]
    f = make_order(IDS, 1, 3, "fixed", 0)["epochs"]
    assert f[0] == f[1] == f[2]
    assert make_order(IDS, 1, 2, "shuffle", 0)["epochs"] != make_order(IDS, 2, 2, "shuffle", 0)["epochs"]


def test_batch_shuffle_keeps_batch_contents_across_orders_and_epochs():
    def batches(p):
        return {frozenset(p[i : i + 4]) for i in range(0, len(p), 4)}

    ref = batches(make_order(IDS, 1, 1, "batch_shuffle", 0, 4)["epochs"][0])
    seen_positions = set()
    for k in (1, 2, 3):
        for p in make_order(IDS, k, 3, "batch_shuffle", 0, 4)["epochs"]:
            assert batches(p) == ref
            seen_positions.add(tuple(p))
    assert len(seen_positions) > 1  # positions do move


def test_order_file_must_match_dataset(tmp_path):
    write_order(make_order(IDS, 1, 2), tmp_path / "o.json")
    with pytest.raises(OrdermergeError, match="made for another dataset"):
        read_order(tmp_path / "o.json", IDS[:-1])
    o = json.loads((tmp_path / "o.json").read_text())
    o["epochs"][1][0] = o["epochs"][1][1]  # hand edit: a duplicate id
    (tmp_path / "o.json").write_text(json.dumps(o))
    with pytest.raises(OrdermergeError, match="epoch 2 is not a permutation"):
        read_order(tmp_path / "o.json", IDS)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(OrdermergeError, match="not an ordermerge order file"):
        read_order(tmp_path / "bad.json", IDS)


def test_gsm_symbolic_splits_are_disjoint_and_hold_out_templates():
    s = gsm_symbolic_splits(40, 20, 15, seed=3)
    assert [len(s[k]) for k in ("train", "test_id", "test_ood")] == [40, 20, 20]
    train_t = {r["template"] for r in s["train"]}
    assert not train_t & {r["template"] for r in s["test_ood"]}
    assert not {r["template"] for r in s["test_id"]} & {r["template"] for r in s["test_ood"]}
    qs = [r["prompt"] for k in s for r in s[k]]
    assert len(qs) == len(set(qs))
    from ordermerge.evaluate.extract import extract_number

    assert all(extract_number(r["response"]) == extract_number(r["answer"]) for r in s["train"])
    assert gsm_symbolic_splits(40, 20, 15, seed=3) == s


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok(tiny_base):
    from ordermerge.models import load_tokenizer

    return load_tokenizer(str(tiny_base))


def test_adapters_on_fixture_files(tmp_path, tok):
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1:,}"} for i in range(998, 1010)])
    st = prepare_data({"format": "gsm8k", "path": str(gsm), "test_size": 2, "train_size": 100}, tok, tmp_path / "g")
    rows = read_jsonl(tmp_path / "g/train.jsonl")
    assert st["splits"]["train"]["rows"] == 10 and st["splits"]["test_id"]["rows"] == 2
    assert {r["answer"] for r in rows} <= {str(i + 1) for i in range(998, 1010)}  # "1,000" -> "1000"
    alp = _write(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": f"to {i}", "output": "hi"} for i in range(5)] + [{"instruction": "Say hi", "input": "to 0", "output": "hi"}])
    st = prepare_data({"format": "alpaca", "path": str(alp), "test_size": 1}, tok, tmp_path / "a")
    assert st["splits"]["train"]["duplicates_removed"] + st["splits"]["test_id"]["duplicates_removed"] == 1
    assert read_jsonl(tmp_path / "a/train.jsonl")[0]["prompt"].startswith("Say hi\n\nto ")
    pq = tmp_path / "g.parquet"
    pd.DataFrame({"q": ["a", "b", "c"], "r": ["x", "y", "z"], "key": [1, 2, 3]}).to_parquet(pq)
    prepare_data({"format": "generic", "path": str(pq), "columns": {"prompt": "q", "response": "r", "id": "key"}, "test_size": 1}, tok, tmp_path / "p")
    assert {r["id"] for r in read_jsonl(tmp_path / "p/train.jsonl")} <= {"1", "2", "3"}
    from ordermerge.data import humaneval_rows

    assert len(humaneval_rows()) == 164
    prepare_data({"format": "humaneval", "test_size": 4, "train_size": 10}, tok, tmp_path / "h")
    he = read_jsonl(tmp_path / "h/test_id.jsonl")
    assert len(he) == 4 and all("def check" in r["tests"] and r["entry_point"] for r in he)
    prepare_data({"format": "codeio", "test_size": 2, "train_size": 3}, tok, tmp_path / "c")
    assert len(read_jsonl(tmp_path / "c/train.jsonl")) == 3


def test_length_policy_drop_and_stats(tmp_path, tok):
    rows = [{"question": "q" * (5 if i % 2 else 400), "answer": "a\n#### 1"} for i in range(10)]
    src = _write(tmp_path / "g.jsonl", [dict(r, question=r["question"] + str(i)) for i, r in enumerate(rows)])
    st = prepare_data({"format": "gsm8k", "path": str(src), "test_size": 2, "max_tokens": 60, "length_policy": "drop"}, tok, tmp_path / "o")
    tr = st["splits"]["train"]
    assert tr["over_max_tokens"] > 0 and tr["rows"] == 8 - tr["over_max_tokens"]
    assert tr["tokens"]["max"] <= 60
    st = prepare_data({"format": "gsm8k", "path": str(src), "test_size": 2, "max_tokens": 60, "length_policy": "truncate"}, tok, tmp_path / "t")
    assert st["splits"]["train"]["rows"] == 8


@pytest.mark.parametrize(
    "cfg,content,msg",
    [
        ({"format": "gsm8k"}, [{"question": "q"}], "missing column 'answer'"),
        ({"format": "alpaca"}, [{"instruction": "i"}], "missing column 'output'"),
        ({"format": "gsm8k"}, [], "no rows (empty dataset)"),
        ({"format": "yaml"}, [{"a": 1}], "dataset format 'yaml'"),
    ],
)
def test_bad_datasets(tmp_path, tok, cfg, content, msg):
    src = _write(tmp_path / "d.jsonl", content)
    with pytest.raises(OrdermergeError) as e:
        prepare_data({**cfg, "path": str(src)}, tok, tmp_path / "o")
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()  # nothing downstream


def test_non_utf8_and_missing_file(tmp_path, tok):
    (tmp_path / "bad.jsonl").write_bytes(b'{"question": "\xff\xfe"}\n')
    with pytest.raises(OrdermergeError, match="not UTF-8"):
        prepare_data({"format": "gsm8k", "path": str(tmp_path / "bad.jsonl")}, tok, tmp_path / "o")
    with pytest.raises(OrdermergeError, match="does not exist"):
        prepare_data({"format": "gsm8k", "path": str(tmp_path / "nope.jsonl")}, tok, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing downstream


def test_response_only_masking(tok):
    ids, n_prompt = encode(tok, "What is 2+2?", "4\n#### 4")
    assert ids[-1] == tok.eos_token_id
    prompt_text = tok.decode(ids[:n_prompt])
    assert prompt_text.endswith("<|im_start|>assistant\n") and "What is 2+2?" in prompt_text
    assert "You are a helpful AI assistant" not in prompt_text  # no silent default system prompt
    batch = collate([(ids, n_prompt), (ids[:5], 2)], tok.pad_token_id)
    labels = batch["labels"]
    assert (labels[0, :n_prompt] == -100).all()
    assert labels[0, n_prompt:].tolist() == ids[n_prompt:]
    assert (labels[1, 5:] == -100).all() and batch["attention_mask"][1].sum() == 5


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_every_dataset_format_through_the_cli(tmp_path, tiny_base, capsys):
    """`ordermerge prepare-data` on each format (small local files for the hub formats): exit 0,
    the four files, and the summary printed for every split, the empty test_ood included."""
    from ordermerge.catalog import FORMATS
    from ordermerge.cli import main

    n = 12
    gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": f"What is {i} + {i}?",
                                           "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(n)])
    alpaca = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"Say {i}.", "input": "" if i % 2 else "now",
                                                 "output": f"{i}"} for i in range(n)])
    generic = _jsonl(tmp_path / "generic.jsonl", [{"q": f"Name {i}", "a": f"n{i}", "key": f"k{i}"} for i in range(n)])
    cfgs = {
        "gsm_symbolic": {"train_size": 6, "test_size": 3},
        "gsm8k": {"path": gsm, "train_size": 6, "test_size": 3},
        "alpaca": {"path": alpaca, "train_size": 6, "test_size": 3},
        "generic": {"path": generic, "columns": {"prompt": "q", "response": "a", "id": "key"},
                    "train_size": 6, "test_size": 3},
        "humaneval": {"train_size": 6, "test_size": 3, "max_tokens": 2048},
        "codeio": {"train_size": 6, "test_size": 3, "max_tokens": 4096},
    }
    assert set(cfgs) == set(FORMATS)
    for fmt, cfg in cfgs.items():
        out = tmp_path / f"data-{fmt}"
        code = main(["prepare-data", "--config", json.dumps({"format": fmt, **cfg}),
                     "--base", str(tiny_base), "--out", str(out)])
        printed = capsys.readouterr()
        assert code == 0, (fmt, printed.err)
        assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test_id.jsonl", "test_ood.jsonl",
                                                        "train.jsonl", "val.jsonl"], fmt
        assert [ln.split(":")[0] for ln in printed.out.splitlines()] == (
            ["train", "test_id", "test_ood", "val"] if fmt == "gsm_symbolic"
            else ["test_id", "train", "val", "test_ood"])
        train = read_jsonl(out / "train.jsonl")
        assert train and {"id", "prompt", "response"} <= set(train[0]), fmt
        if fmt in ("gsm8k", "gsm_symbolic"):
            assert all(r["answer"] is not None for r in train)


def test_duplicate_ids_are_refused_with_the_file_the_id_and_both_lines(tmp_path, tok, tiny_base, capsys):
    """Issue 22: a test file whose ids come in pairs ran, and the paired statistics kept one
    item per id. prepare-data refuses it, naming the file, the id and both lines."""
    train = _jsonl(tmp_path / "train.jsonl", [{"question": f"{i}?", "answer": f"#### {i}"} for i in range(6)])
    test = _jsonl(tmp_path / "test.jsonl", [{"id": f"t{i // 2}", "question": f"{i} + 1?", "answer": f"#### {i + 1}"}
                                            for i in range(8)])
    cfg = {"format": "gsm8k", "path": train, "test_path": test, "test_size": 8}
    with pytest.raises(OrdermergeError) as e:
        prepare_data(cfg, tok, tmp_path / "o")
    assert str(e.value) == (f"{test}:2: duplicate id 't0' (also at {test}:1); ids must be unique "
                            "within and across splits")
    assert not (tmp_path / "o").exists()
    from ordermerge.cli import main

    assert main(["prepare-data", "--config", json.dumps(cfg), "--base", str(tiny_base), "--out",
                 str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"ordermerge prepare-data: error: {e.value}\n"
    # across files: the training file's record 2 has the id of the test file's first
    (tmp_path / "t.json").write_text(json.dumps([{"id": "x", "question": "a?", "answer": "#### 1"},
                                                 {"id": "t0", "question": "b?", "answer": "#### 2"}]))
    cfg = {**cfg, "path": str(tmp_path / "t.json"), "test_path": _jsonl(tmp_path / "t2.jsonl", [
        {"id": "t0", "question": "c?", "answer": "#### 3"}])}
    with pytest.raises(OrdermergeError) as e:
        prepare_data(cfg, tok, tmp_path / "o")
    assert str(e.value) == (f"{tmp_path / 't2.jsonl'}:1: duplicate id 't0' (also at {tmp_path / 't.json'} "
                            "record 2); ids must be unique within and across splits")
    # generated ids of a separate test file do not collide with the training file's
    cfg = {"format": "gsm8k", "path": train, "test_path": _jsonl(tmp_path / "t3.jsonl", [
        {"question": "c?", "answer": "#### 3"}]), "train_size": 6}
    prepare_data(cfg, tok, tmp_path / "ok")
    assert [r["id"] for r in read_jsonl(tmp_path / "ok/test_id.jsonl")] == ["gsm8k-test-0"]
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "ok/train.jsonl")) == [f"gsm8k-{i}" for i in range(6)]
    with pytest.raises(OrdermergeError, match=r"^order: dataset id 's1' occurs more than once \(ids must be unique\)$"):
        make_order(["s0", "s1", "s2", "s1"], 1, 1)


def test_empty_prompts_and_responses_are_dropped_counted_and_replaced(tmp_path, tok, capsys):
    rows = [{"instruction": f"Say {i}.", "output": " " if i in (1, 4) else f"{i}"} for i in range(10)]
    rows[6]["instruction"] = "\n"
    src = _jsonl(tmp_path / "a.jsonl", rows)
    # one row more than the file has asked for: every row is looked at, the empty ones replaced
    st = prepare_data({"format": "alpaca", "path": src, "test_size": 2, "train_size": 6}, tok, tmp_path / "o")
    sp = st["splits"]
    assert (sp["train"]["rows"], sp["train"]["asked"], sp["test_id"]["rows"]) == (5, 6, 2)
    assert sp["train"]["empty_removed"] + sp["test_id"]["empty_removed"] == 3
    ids = [r["id"] for n in ("train", "test_id") for r in read_jsonl(tmp_path / f"o/{n}.jsonl")]
    assert sorted(ids) == sorted(f"alpaca-{i}" for i in (0, 2, 3, 5, 7, 8, 9))
    per = ", ".join(f"{n} {sp[n]['empty_removed']}" for n in ("test_id", "train") if sp[n]["empty_removed"])
    assert capsys.readouterr().err.splitlines() == [
        f"ordermerge: warning: dataset split train: 5 rows of the 6 asked (data.train_size); {src} has "
        f"no more (left out: {sp['train']['empty_removed']} empty, 0 duplicate; stats.json)",
        f"ordermerge: warning: {src}: dropped 3 rows with an empty prompt or response ({per}; "
        "stats.json: empty_removed)"]


def test_rows_left_out_are_replaced_and_a_shortfall_is_said(tmp_path, tok, capsys):
    """Issue 22: asked for 20 training samples, got 16 while 24 rows were unused."""
    rows = [{"question": ("q" * 400 if i % 4 == 0 else "q") + str(i), "answer": "a\n#### 1"} for i in range(50)]
    src = _jsonl(tmp_path / "g.jsonl", rows)
    cfg = {"format": "gsm8k", "path": src, "test_size": 2, "train_size": 20, "max_tokens": 60}
    tr = prepare_data(cfg, tok, tmp_path / "o")["splits"]["train"]
    assert (tr["rows"], tr["asked"], tr["tokens"]["max"] <= 60) == (20, 20, True)
    assert tr["over_max_tokens"] > 0 and capsys.readouterr().err == ""
    st = prepare_data({**cfg, "train_size": 45}, tok, tmp_path / "o2")["splits"]
    tr, test_over = st["train"], st["test_id"]["over_max_tokens"]  # 13 of the 50 rows are long
    assert (tr["rows"], tr["asked"], tr["over_max_tokens"]) == (48 - 13 + test_over, 45, 13 - test_over)
    assert capsys.readouterr().err == (
        f"ordermerge: warning: dataset split train: {tr['rows']} rows of the 45 asked (data.train_size); "
        f"{src} has no more (left out: 0 empty, 0 duplicate, {tr['over_max_tokens']} over max_tokens; "
        "stats.json)\n")


def test_gsm_symbolic_draws_more_for_rows_dropped_for_length(tmp_path, tok):
    st = prepare_data({"format": "gsm_symbolic", "train_size": 12, "test_size": 4, "max_tokens": 150},
                      tok, tmp_path / "o")["splits"]["train"]
    assert st["over_max_tokens"] > 0 and (st["rows"], st["asked"]) == (12, 12)
    assert st["tokens"]["max"] <= 150


def test_csv_and_tsv_files_are_read_as_strings(tmp_path, tok):
    (tmp_path / "d.csv").write_text('key,q,a\n007,"Name, please",n7\n008,Name 8,n8\n009,Name 9,n9\n')
    (tmp_path / "d.tsv").write_text("instruction\tinput\toutput\nSay\tto a, b\thi\nSay\tto c\tho\n")
    cols = {"prompt": "q", "response": "a", "id": "key"}
    prepare_data({"format": "generic", "path": str(tmp_path / "d.csv"), "columns": cols, "test_size": 1},
                 tok, tmp_path / "c")
    rows = read_jsonl(tmp_path / "c/train.jsonl") + read_jsonl(tmp_path / "c/test_id.jsonl")
    assert sorted((r["id"], r["prompt"]) for r in rows) == [("007", "Name, please"), ("008", "Name 8"),
                                                            ("009", "Name 9")]
    prepare_data({"format": "alpaca", "path": str(tmp_path / "d.tsv"), "test_size": 1}, tok, tmp_path / "t")
    rows = read_jsonl(tmp_path / "t/train.jsonl") + read_jsonl(tmp_path / "t/test_id.jsonl")
    assert sorted(r["prompt"] for r in rows) == ["Say\n\nto a, b", "Say\n\nto c"]
    (tmp_path / "bad.csv").write_text("q,a\nx,y\nz\n")
    with pytest.raises(OrdermergeError) as e:
        prepare_data({"format": "generic", "path": str(tmp_path / "bad.csv"), "columns": {"prompt": "q",
                      "response": "a"}}, tok, tmp_path / "b")
    assert str(e.value) == f"{tmp_path / 'bad.csv'}:3: 1 fields, expected 2 (the header's)"


def test_file_errors_name_the_line_and_what_was_expected(tmp_path, tok):
    def refused(cfg):
        with pytest.raises(OrdermergeError) as e:
            prepare_data(cfg, tok, tmp_path / "o")
        assert not (tmp_path / "o").exists()
        return str(e.value)

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"question": "1?", "answer": "#### 1"}\n{"question": "\xff\xfe"}\n')
    assert refused({"format": "gsm8k", "path": str(bad)}) == f"{bad}:2: not UTF-8 (byte 15 of the line)"
    (tmp_path / "d.txt").write_text("q\n")
    assert refused({"format": "gsm8k", "path": str(tmp_path / "d.txt")}) == (
        f"data.path: {tmp_path / 'd.txt'}: unsupported extension '.txt'; expected a dataset file "
        "(.jsonl, .json, .csv, .tsv, .parquet)")
    alp = _jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}])
    assert refused({"format": "alpaca", "path": alp, "columns": {"prompt": "instruction"}}) == (
        "dataset format alpaca: takes no columns mapping (only generic does)")
    assert refused({"format": "generic", "path": alp, "columns": {"prompt": "q"}}) == (
        f"{alp}:1: missing column 'q', which data.columns maps to prompt (columns present: "
        "instruction, output)")


def test_every_format_has_one_adapter_and_a_source_where_it_reads_no_path():
    from ordermerge.catalog import FORMATS
    from ordermerge.data import ADAPTERS, SOURCES

    assert set(ADAPTERS) == set(FORMATS)
    assert set(SOURCES) == {f for f, spec in FORMATS.items() if not spec.needs_path}
