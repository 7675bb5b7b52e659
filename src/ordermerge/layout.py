"""Where everything lives under results/, and the model ids: the one owner of both.

The workflow builds its rule patterns from a Layout whose fields are wildcards
(`Layout(RES, "{exp}").sft("{k}")`), aggregation and figures build real paths from the same
methods, so no path is spelled twice. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MERGE_ID = re.compile(r"^(?P<merge>[A-Za-z0-9_]+)-n(?P<m>\d+)-s(?P<seed>\d+)$")


@dataclass(frozen=True)
class ModelId:
    """`base`, `order{k}` (the sub-model of data order k) or `{merge}-n{m}-s{seed}` (merge
    `merge` of the first m sub-models with merge seed `seed`)."""

    kind: str  # base | order | merge
    k: int = 0
    merge: str = ""
    m: int = 0
    seed: int = 0

    def __str__(self) -> str:
        if self.kind == "order":
            return f"order{self.k}"
        if self.kind == "merge":
            return f"{self.merge}-n{self.m}-s{self.seed}"
        return "base"

    @classmethod
    def parse(cls, text: str) -> ModelId:
        if text == "base":
            return cls("base")
        if (o := re.fullmatch(r"order(\d+)", text)) is not None:
            return cls("order", k=int(o.group(1)))
        if (m := _MERGE_ID.match(text)) is not None:
            return cls("merge", merge=m["merge"], m=int(m["m"]), seed=int(m["seed"]))
        raise ValueError(f"not a model id: {text!r} (base, order<k> or <merge>-n<m>-s<seed>)")


@dataclass(frozen=True)
class Layout:
    """The folder of one experiment: `{results}/{exp}/…`."""

    results: str
    exp: str

    @property
    def root(self) -> str:
        return f"{self.results}/{self.exp}"

    # inputs of the DAG
    @property
    def base(self) -> str:
        return f"{self.root}/base"

    @property
    def data_dir(self) -> str:
        return f"{self.root}/data"

    def data(self, split: str) -> str:  # train, test_id, test_ood, or stats (json)
        return f"{self.data_dir}/{split}.json" if split == "stats" else f"{self.data_dir}/{split}.jsonl"

    def order(self, k: int | str) -> str:
        return f"{self.root}/orders/order{k}.json"

    # models
    def sft(self, k: int | str) -> str:
        return f"{self.root}/sft/order{k}/model"

    def train_log(self, k: int | str) -> str:
        return f"{self.sft(k)}/train_log.jsonl"

    def sample_losses(self, k: int | str) -> str:
        return f"{self.root}/sft/order{k}/sample_losses.parquet"

    def scratch(self, k: int | str) -> str:
        return f"{self.root}/scratch/order{k}"

    def merged(self, merge: str, m: int | str, seed: int | str) -> str:
        return f"{self.root}/merged/{merge}/n{m}/s{seed}/model"

    def merge_sample_losses(self, merge: str, m: int | str, seed: int | str) -> str:
        return f"{self.root}/merged/{merge}/n{m}/s{seed}/sample_losses.parquet"

    def merge_json(self, merge: str, m: int | str, seed: int | str) -> str:
        return f"{self.merged(merge, m, seed)}/merge.json"

    def model(self, model: ModelId | str) -> str:
        mid = model if isinstance(model, ModelId) else ModelId.parse(model)
        if mid.kind == "order":
            return self.sft(mid.k)
        if mid.kind == "merge":
            return self.merged(mid.merge, mid.m, mid.seed)
        return self.base

    # evaluation, tables, figures, logs
    def eval_dir(self, model: ModelId | str) -> str:
        return f"{self.root}/eval/{model}"

    def eval_result(self, model: ModelId | str, bench: str) -> str:
        return f"{self.eval_dir(model)}/{bench}.json"

    def eval_items(self, model: ModelId | str, bench: str) -> str:
        return f"{self.eval_dir(model)}/{bench}.items.jsonl"

    def table(self, name: str) -> str:  # name with its extension: main.md, paired.csv
        return f"{self.root}/tables/{name}"

    def figure(self, name: str, ext: str = "png") -> str:
        return f"{self.root}/figures/{name}.{ext}"

    def log(self, name: str) -> str:
        return f"{self.root}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        return f"{self.root}/benchmarks/{name}.tsv"


def front_page(results: str) -> str:
    """The HTML report's front page, across every experiment of a run."""
    return f"{results}/report_front_page.rst"
