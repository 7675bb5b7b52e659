"""Training replicates, order subsets of the ablation, model ids and tuning records: the pieces
of the design that the claims' intervals rely on."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from ordermerge import OrdermergeError
from ordermerge.cli import main
from ordermerge.layout import Layout, ModelId
from ordermerge.orders import ablation_subsets, make_order, write_order
from ordermerge.tuning import choose, grid

IDS = [f"s{i}" for i in range(40)]


def test_replicate_1_is_the_unreplicated_draw_and_others_differ(tmp_path):
    plain = make_order(IDS, 2, 3, seed=5)
    assert make_order(IDS, 2, 3, seed=5, replicate=1) == plain
    write_order(plain, tmp_path / "a.json")
    write_order(make_order(IDS, 2, 3, seed=5, replicate=1), tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    others = [make_order(IDS, 2, 3, seed=5, replicate=r) for r in (2, 3)]
    firsts = [tuple(o["epochs"][0]) for o in (plain, *others)]
    assert len(set(firsts)) == 3  # three replicates, three different permutations
    assert others[0]["replicate"] == 2 and "replicate" not in plain
    assert others[0] == make_order(IDS, 2, 3, seed=5, replicate=2)  # deterministic


def test_batch_shuffle_composition_differs_between_replicates_only():
    a1, b1 = (make_order(IDS, k, 1, "batch_shuffle", 0, 8, 1)["epochs"][0] for k in (1, 2))
    a2 = make_order(IDS, 1, 1, "batch_shuffle", 0, 8, 2)["epochs"][0]
    batches = lambda p: {frozenset(p[i : i + 8]) for i in range(0, len(p), 8)}  # noqa: E731
    assert batches(a1) == batches(b1)  # same replicate: the same batches
    assert batches(a1) != batches(a2)  # another replicate: another composition


def test_ablation_subsets_are_all_or_a_seeded_sample():
    assert ablation_subsets(3, 2, 3, 0) == list(combinations((1, 2, 3), 2))
    assert ablation_subsets(3, 2, 10, 0) == list(combinations((1, 2, 3), 2))
    one = ablation_subsets(5, 2, 3, 7, replicate=1)
    assert len(one) == 3 and len(set(one)) == 3 and one == sorted(one)
    assert one == ablation_subsets(5, 2, 3, 7, replicate=1)
    drawn = {tuple(ablation_subsets(5, 2, 1, 7, replicate=r)) for r in range(1, 9)}
    assert len(drawn) > 1  # replicates draw different subsets
    with pytest.raises(OrdermergeError, match=r"ablation size 3: expected 1 ≤ m < 3"):
        ablation_subsets(3, 3, 1, 0)


@pytest.mark.parametrize("text", ["base", "order3", "ties-n5-s0", "selection_resample-n2-o1.3-s2",
                                  "ties__t1-n3-s0", "average-n2-o10.12-s0"])
def test_model_ids_round_trip(text):
    assert str(ModelId.parse(text)) == text


def test_subset_ids_name_their_orders_and_folders():
    mid = ModelId.parse("selection_resample-n2-o1.3-s0")
    assert (mid.m, mid.orders, mid.merged_orders, mid.sub) == (2, (1, 3), [1, 3], "n2-o1.3")
    assert ModelId.parse("average-n3-s1").merged_orders == [1, 2, 3]
    lay = Layout("results", "exp", 2)
    assert lay.model(mid) == "results/exp/rep2/merged/selection_resample/n2-o1.3/s0/model"
    assert lay.base == "results/exp/base" and lay.data("val") == "results/exp/data/val.jsonl"
    assert lay.eval_dir("order1") == "results/exp/rep2/eval/order1"
    assert lay.table("claims.csv") == "results/exp/tables/claims.csv"
    with pytest.raises(ValueError, match="not a model id"):
        ModelId.parse("ties-n3")


def test_grid_is_the_product_in_order_and_ties_go_to_the_first_point():
    points = grid({"density": 0.5, "lambda": 1.0}, {"lambda": [0.5, 1.0], "density": [0.2, 0.5]})
    assert points == [{"density": 0.2, "lambda": 0.5}, {"density": 0.5, "lambda": 0.5},
                      {"density": 0.2, "lambda": 1.0}, {"density": 0.5, "lambda": 1.0}]
    rec = choose(points, [0.9, 0.7, 0.7, 0.8], lower_is_better=True, benchmark="val")
    assert rec["chosen"] == {"density": 0.5, "lambda": 0.5}
    rec = choose(points, [0.1, 0.3, 0.2, 0.3], lower_is_better=False, benchmark="val")
    assert rec["chosen"] == points[1]
    with pytest.raises(OrdermergeError, match="2 grid points but 1 scores"):
        choose(points[:2], [0.1], True, "val")
    # a NaN validation score never wins at random: it is refused, naming the grid point
    with pytest.raises(OrdermergeError, match=r"grid point \{'density': 0.5, 'lambda': 0.5\} scored nan"):
        choose(points, [0.9, float("nan"), 0.7, 0.8], True, "val")


def test_grid_names_round_trip():
    from ordermerge.tuning import grid_name, split_grid_name

    assert grid_name("ties", 3) == "ties__t3" and split_grid_name("ties__t3") == ("ties", 3)
    assert split_grid_name("ties") == ("ties", None)


def test_tune_command_reads_the_validation_results(tmp_path, capsys):
    points = [{"lambda": 0.5}, {"lambda": 1.0}]
    evals = []
    for i, value in enumerate([2.0, 1.5]):
        d = tmp_path / f"e{i}"
        d.mkdir()
        (d / "val.json").write_text(json.dumps({"benchmark": "response_loss", "value": value}))
        evals.append(str(d))
    out = tmp_path / "tuned.json"
    assert main(["-q", "tune", "--grid", json.dumps(points), "--evals", *evals, "--benchmark", "val",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["chosen"] == {"lambda": 1.0} and rec["validation_scores"] == [2.0, 1.5]
    assert rec["lower_is_better"] is True
    assert main(["-q", "tune", "--grid", json.dumps(points), "--evals", str(tmp_path / "none"),
                 "--benchmark", "val", "--out", str(out)]) == 2
    assert "no validation result" in capsys.readouterr().err


def test_merge_with_a_tuning_record_uses_its_choice_and_records_it(tmp_path):
    from conftest import make_family

    base, subs = make_family(tmp_path / "in")
    rec = choose([{"lambda": 0.5}, {"lambda": 0.25}], [1.0, 0.9], True, "val (response_loss)")
    (tmp_path / "tuned.json").write_text(json.dumps(rec))
    common = ["-q", "merge", "--base", str(base), "--models", *map(str, subs), "--method",
              "task_arithmetic"]
    assert main([*common, "--tuning", str(tmp_path / "tuned.json"), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--config", '{"lambda": 0.25}', "--out", str(tmp_path / "b")]) == 0
    meta = json.loads((tmp_path / "a/merge.json").read_text())
    assert meta["parameters"] == {"lambda": 0.25} and meta["tuning"] == rec
    same = (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert same


def test_the_validation_split_is_fresh_training_templates_and_changes_no_other_split(tmp_path):
    """val: new instances of the training templates, no question of train or a test split, and
    drawn last, so asking for it leaves every other split byte-identical."""
    from ordermerge.data import prepare_data
    from ordermerge.jsonl import read_jsonl
    from ordermerge.models import load_tokenizer

    tok = load_tokenizer("tiny")
    cfg = {"format": "gsm_symbolic", "train_size": 12, "test_size": 6, "max_tokens": 400}
    prepare_data(cfg, tok, tmp_path / "a")
    stats = prepare_data({**cfg, "val_size": 8}, tok, tmp_path / "b")
    for split in ("train", "test_id", "test_ood"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert (tmp_path / "a/val.jsonl").read_text() == ""
    val = read_jsonl(tmp_path / "b/val.jsonl")
    assert len(val) == 8 and stats["splits"]["val"]["rows"] == 8
    rows = {s: read_jsonl(tmp_path / "b" / f"{s}.jsonl") for s in ("train", "test_id", "test_ood")}
    assert not {r["template"] for r in val} & {r["template"] for r in rows["test_ood"]}
    questions = {r["prompt"] for split in rows.values() for r in split}
    assert not {r["prompt"] for r in val} & questions
