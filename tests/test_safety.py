"""No command destroys what it did not write: each publisher refuses (exit 2, one line, nothing
changed) an output that is one of its inputs, contains one, or is a foreign non-empty folder;
replacing its own earlier output stays allowed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ordermerge.cli import main


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], victim: Path, why: str) -> str:
    before = snapshot(victim)
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err, err
    assert snapshot(victim) == before  # not a byte changed
    return err


@pytest.fixture
def inputs(tmp_path: Path):
    from conftest import make_family

    base, models = make_family(tmp_path / "in")
    (tmp_path / "in" / "README.md").write_text("my notes")
    (models[0] / "train_log.jsonl").write_text("{}\n")
    return base, models


def _merge(base, models, out, *extra):
    return ["merge", "--base", str(base), "--models", *map(str, models), "--method",
            "weighted_average", "--out", str(out), *extra]


def test_merge_refuses_an_input_as_output(capsys, inputs):
    base, models = inputs
    refused(capsys, _merge(base, models, models[1]), models[1], "is one of the inputs")
    refused(capsys, _merge(base, models, base), base, "is one of the inputs")


def test_merge_refuses_an_output_that_contains_the_inputs(capsys, inputs):
    base, models = inputs
    err = refused(capsys, _merge(base, models, base.parent), base.parent, "contains the input")
    assert str(base) in err


def test_merge_refuses_a_foreign_non_empty_folder_and_a_file(capsys, inputs, tmp_path):
    base, models = inputs
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    refused(capsys, _merge(base, models, foreign), foreign, "did not write (no merge.json)")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    refused(capsys, _merge(base, models, a_file), tmp_path, "is not a folder")


def test_merge_may_replace_its_own_output_and_fill_an_empty_folder(capsys, inputs, tmp_path):
    base, models = inputs
    out = tmp_path / "merged"
    out.mkdir()
    assert main(["-q", *_merge(base, models, out)]) == 0
    assert "replacing" not in capsys.readouterr().err  # an empty folder replaces nothing
    assert main(["-q", *_merge(base, models, out, "--seed", "1")]) == 0
    assert json.loads((out / "merge.json").read_text())["seed"] == 1
    # replacing its own output is allowed, but said in one line, with what wrote it and when
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"ordermerge: replacing {re.escape(str(out))}, written by ordermerge merge "
                        r"at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", err), err


def test_merge_refuses_a_sub_model_given_twice(capsys, inputs, tmp_path):
    base, models = inputs
    refused(capsys, _merge(base, [models[0], models[1], models[0]], tmp_path / "o"), tmp_path,
            "is given twice")


def test_sft_prepare_base_and_prepare_data_refuse_before_any_work(capsys, tiny_base, tiny_data, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    order = tmp_path / "order.json"
    main(["-q", "make-order", "--data", str(tiny_data / "train.jsonl"), "--k", "1", "--epochs", "1",
          "--out", str(order)])
    sft = ["sft", "--base", str(tiny_base), "--data", str(tiny_data / "train.jsonl"), "--order",
           str(order), "--out"]
    refused(capsys, [*sft, str(foreign)], foreign, "did not write (no ordermerge_sft.json)")
    refused(capsys, [*sft, str(tiny_base)], tiny_base, "is one of the inputs")
    refused(capsys, ["prepare-base", "--spec", "tiny", "--out", str(foreign)], foreign,
            "did not write (no ordermerge_base.json)")
    refused(capsys, ["prepare-base", "--spec", str(tiny_base), "--out", str(tiny_base)], tiny_base,
            "is one of the inputs")
    data = ["prepare-data", "--config", json.dumps({"format": "gsm_symbolic", "train_size": 4,
                                                     "test_size": 2}), "--base", str(tiny_base), "--out"]
    refused(capsys, [*data, str(foreign)], foreign, "did not write (no stats.json)")
    refused(capsys, [*data, str(tiny_base)], tiny_base, "is one of the inputs")
    assert main(["-q", *data, str(tmp_path / "d")]) == 0
    assert main(["-q", *data, str(tmp_path / "d")]) == 0  # its own output: replaced
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "stats.json", "test_id.jsonl", "test_ood.jsonl", "train.jsonl", "val.jsonl"]


def test_evaluate_refuses_the_model_folder_and_foreign_folders(capsys, tiny_base, tiny_data, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    cfg = json.dumps({"data": str(tiny_data / "test_id.jsonl"), "limit": 1})
    suite = json.dumps({"l": {"benchmark": "response_loss", "settings": json.loads(cfg)}})
    single = ["evaluate", "--model", str(tiny_base), "--benchmark", "response_loss", "--config", cfg,
              "--out-dir"]
    refused(capsys, ["evaluate", "--model", str(tiny_base), "--suite", suite, "--out-dir",
                     str(tiny_base)], tiny_base, "is one of the inputs")
    refused(capsys, [*single, str(tiny_base)], tiny_base, "is one of the inputs")
    refused(capsys, [*single, str(foreign)], foreign, "did not write (no ordermerge_eval.json)")
    refused(capsys, [*single, str(tiny_data)], tiny_data, "contains the input")
    out = tmp_path / "ev"
    assert main(["-q", *single, str(out)]) == 0
    assert main(["-q", *single, str(out), "--name", "again"]) == 0  # adds to its own folder
    assert json.loads((out / "ordermerge_eval.json").read_text()) == {"benchmarks": ["again", "response_loss"]}
    assert "replacing" not in capsys.readouterr().err
    assert main(["-q", *single, str(out)]) == 0  # the same benchmark again: said in one line
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ordermerge: replacing {out / 'response_loss.json'}, written by "
                          "ordermerge evaluate at "), err
    assert main(["-q", "evaluate", "--model", str(tiny_base), "--suite", suite, "--out-dir",
                 str(out)]) == 0  # a suite replaces the whole folder
    assert capsys.readouterr().err.startswith(f"ordermerge: replacing {out}, written by ordermerge evaluate")
