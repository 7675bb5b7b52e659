"""Where everything lives under results/, and the model ids: the one owner of both.

The workflow builds its rule patterns from a Layout whose fields are wildcards
(`Layout(RES, "{exp}", "{rep}").sft("{k}")`), aggregation and figures build real paths from the
same methods, so no path is spelled twice. Torch-free.

    {results}/{exp}/base, data/            shared by every replicate
    {results}/{exp}/rep{r}/orders, sft, scratch, merged, eval, logs, benchmarks
                                           one training replicate: its own N orders and seed
    {results}/{exp}/tables, figures, logs  the experiment's claims across replicates
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_MERGE_ID = re.compile(
    r"^(?P<merge>[A-Za-z0-9_]+)-n(?P<m>\d+)(?:-o(?P<orders>\d+(?:\.\d+)*))?-s(?P<seed>\d+)$")
# the `sub` part of a merge's folder: n{m} (orders 1..m) or n{m}-o{k1.k2...} (an order subset)
SUB = r"n\d+(?:-o\d+(?:\.\d+)*)?"


@dataclass(frozen=True)
class ModelId:
    """`base`, `order{k}` (the sub-model of data order k) or `{merge}-n{m}[-o{k1.k2…}]-s{seed}`
    (merge `merge` of m sub-models with merge seed `seed`: orders 1..m, or the subset `orders`
    of an ablation). Within one replicate: the same id names another model in another
    replicate (its folder is under rep{r}/)."""

    kind: str  # base | order | merge
    k: int = 0
    merge: str = ""
    m: int = 0
    seed: int = 0
    orders: tuple[int, ...] = ()  # an ablation's order subset; () = orders 1..m

    def __str__(self) -> str:
        if self.kind == "order":
            return f"order{self.k}"
        if self.kind == "merge":
            return f"{self.merge}-{self.sub}-s{self.seed}"
        return "base"

    @property
    def sub(self) -> str:
        """n{m}, or n{m}-o{k1.k2…} for an order subset (a merge's folder under merged/{merge})."""
        return f"n{self.m}" + (f"-o{'.'.join(map(str, self.orders))}" if self.orders else "")

    @property
    def merged_orders(self) -> list[int]:
        return list(self.orders) if self.orders else list(range(1, self.m + 1))

    @classmethod
    def parse(cls, text: str) -> ModelId:
        if text == "base":
            return cls("base")
        if (o := re.fullmatch(r"order(\d+)", text)) is not None:
            return cls("order", k=int(o.group(1)))
        if (m := _MERGE_ID.match(text)) is not None:
            orders = tuple(int(x) for x in m["orders"].split(".")) if m["orders"] else ()
            return cls("merge", merge=m["merge"], m=int(m["m"]), seed=int(m["seed"]), orders=orders)
        raise ValueError(f"not a model id: {text!r} (base, order<k> or <merge>-n<m>[-o<k.k>]-s<seed>)")

    @classmethod
    def merged(cls, merge: str, sub: str, seed: int | str) -> ModelId:
        return cls.parse(f"{merge}-{sub}-s{seed}")


@dataclass(frozen=True)
class Layout:
    """The folder of one experiment, `{results}/{exp}/…`, and of its replicate `rep`."""

    results: str
    exp: str
    rep: int | str = 1

    @property
    def root(self) -> str:
        return f"{self.results}/{self.exp}"

    @property
    def rep_root(self) -> str:
        return f"{self.root}/rep{self.rep}"

    # inputs of the DAG, shared by the replicates
    @property
    def base(self) -> str:
        return f"{self.root}/base"

    @property
    def data_dir(self) -> str:
        return f"{self.root}/data"

    def data(self, split: str) -> str:  # train, val, test_id, test_ood, or stats (json)
        return f"{self.data_dir}/{split}.json" if split == "stats" else f"{self.data_dir}/{split}.jsonl"

    # one replicate
    def order(self, k: int | str) -> str:
        return f"{self.rep_root}/orders/order{k}.json"

    def sft(self, k: int | str) -> str:
        return f"{self.rep_root}/sft/order{k}/model"

    def train_log(self, k: int | str) -> str:
        return f"{self.sft(k)}/train_log.jsonl"

    def sample_losses(self, k: int | str) -> str:
        return f"{self.rep_root}/sft/order{k}/sample_losses.parquet"

    def scratch(self, k: int | str) -> str:
        return f"{self.rep_root}/scratch/order{k}"

    def merged(self, merge: str, sub: str, seed: int | str) -> str:
        return f"{self.rep_root}/merged/{merge}/{sub}/s{seed}/model"

    def merge_sample_losses(self, merge: str, sub: str, seed: int | str) -> str:
        return f"{self.rep_root}/merged/{merge}/{sub}/s{seed}/sample_losses.parquet"

    def tuned(self, merge: str) -> str:
        """The tuning record of a merge in this replicate (ordermerge.tuning)."""
        return f"{self.rep_root}/tuned/{merge}.json"

    def model(self, model: ModelId | str) -> str:
        mid = model if isinstance(model, ModelId) else ModelId.parse(model)
        if mid.kind == "order":
            return self.sft(mid.k)
        if mid.kind == "merge":
            return self.merged(mid.merge, mid.sub, mid.seed)
        return self.base

    def merge_json(self, model: ModelId | str) -> str:
        return f"{self.model(model)}/merge.json"

    def eval_dir(self, model: ModelId | str) -> str:
        return f"{self.rep_root}/eval/{model}"

    def eval_result(self, model: ModelId | str, bench: str) -> str:
        return f"{self.eval_dir(model)}/{bench}.json"

    def eval_items(self, model: ModelId | str, bench: str) -> str:
        return f"{self.eval_dir(model)}/{bench}.items.jsonl"

    def rep_log(self, name: str) -> str:
        return f"{self.rep_root}/logs/{name}.log"

    def rep_benchmark(self, name: str) -> str:
        return f"{self.rep_root}/benchmarks/{name}.tsv"

    # the experiment: tables, figures, its own logs
    def table(self, name: str) -> str:  # name with its extension: main.md, paired.csv
        return f"{self.root}/tables/{name}"

    def figure(self, name: str, ext: str = "png") -> str:
        return f"{self.root}/figures/{name}.{ext}"

    def log(self, name: str) -> str:
        return f"{self.root}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        return f"{self.root}/benchmarks/{name}.tsv"


def front_page(results: str, config_digest: str) -> str:
    """The HTML report's front page of one config (every experiment of a run): named by the
    config's digest, so `snakemake --report --configfile Y` never shows config X's page."""
    return f"{results}/report/front_page-{config_digest}.rst"


def config_digest(config_json: str) -> str:
    """A short digest of a config, as deterministic JSON."""
    return hashlib.sha256(config_json.encode()).hexdigest()[:12]
