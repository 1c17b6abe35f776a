"""The typed params schema: one YAML file is one experiment, a `common:` block plus one section per notebook.

Every field has a one-line doc. Unknown keys and wrong types are errors raised before any compute,
naming the file and the dotted key.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from kdlib.data import check_options
from kdlib.data.registry import DATASET_NAMES, check_split
from kdlib.io import parse_yaml, read_text_file
from kdlib.model_registry import MODEL_NAMES
from kdlib.paths import check_run_name, resolve_repo_path


class Schema(BaseModel):
    """Strict: a bool is not an int, a string is not a number (YAML ints still fill float fields), and
    .inf / .nan are not numbers; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _must_exist(what: str, *, folder: bool = False) -> AfterValidator:
    """Check a path (relative to the repository root, or absolute) names an existing file or folder."""

    def check(value: str) -> str:
        path = resolve_repo_path(value)
        if folder and path.is_file():
            raise ValueError(f"{what} {path} is a file, not a directory")
        if not folder and path.is_dir():
            raise ValueError(f"{what} {path} is a directory, not a file")
        if not (path.is_dir() if folder else path.is_file()):
            raise ValueError(f"{what} {path} does not exist")
        return value

    return AfterValidator(check)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# Generative models the hub still serves under their old names, without an owner.
_OWNERLESS_HUB_IDS = frozenset(
    {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt"}
    | {"t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b"}
)


def _check_model_name(name: str) -> str:
    """A kdlib model name, an existing local folder, or a hub id (owner/name); see kdlib.models.load_model."""
    if _HUB_ID.fullmatch(name) or name in _OWNERLESS_HUB_IDS or Path(name).expanduser().is_dir():
        return name

    if name not in MODEL_NAMES:
        raise ValueError(
            f"unknown model {name!r}: not a kdlib model name {sorted(MODEL_NAMES)}, an existing folder "
            "or a hub id owner/name"
        )
    return name


ModelName = Annotated[str, AfterValidator(_check_model_name)]


class CommonParams(Schema):
    run_name: str = Field("demo", description="Folder name of the run under outputs/.")
    seed: int = Field(
        0, ge=0, description="Seed for data sampling, perturbations, initialisation and training."
    )
    data_dir: Annotated[str, _must_exist("data directory", folder=True)] | None = Field(
        None, description="Real-data directory; null means $KDLIB_DATA_DIR, else ../shared/data."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device; auto picks cuda if present."
    )

    @field_validator("run_name")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        return check_run_name(value)


class DatasetParams(Schema):
    name: str = Field(
        "generated",
        description="Dataset: generated, babi, cotempqa, openbookqa, msmarco, msmarco-sample, commonsenseqa, "
        "strategyqa, gsm8k.",
    )
    train_split: str = Field("train", description="Split the students are trained on.")
    eval_split: str = Field("test", description="Held-out split the students are evaluated on.")
    n_train: int = Field(64, gt=0, description="Training items kept (first n after a seeded shuffle).")
    n_eval: int = Field(32, gt=0, description="Evaluation items kept.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Loader keyword options, e.g. {tasks: [1, 2]} for bAbI."
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:

        names = list(DATASET_NAMES)
        if value not in names:
            raise ValueError(f"unknown dataset {value!r}; choose from {names}")
        return value

    @field_validator("train_split", "eval_split")
    @classmethod
    def _known_split(cls, value: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if name is not None:
            check_split(name, value)
        return value

    @field_validator("options")
    @classmethod
    def _loader_accepts_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("name") is not None:
            check_options(info.data["name"], value)
        return value


class TeacherParams(Schema):
    """The teacher LM and how it is reached; see kdlib.teacher.backends."""

    backend: Literal["transformers", "openai", "vllm"] = Field(
        "transformers", description="transformers (local), openai (any OpenAI-compatible server) or vllm."
    )
    model: str = Field(
        "smollm2-135m-instruct", description="A kdlib model name, HF id, local path or served id."
    )
    revision: str | None = Field(
        None,
        description="Hub revision, or for servers a tag you choose (e.g. the weights' sha256): cache key.",
    )
    trust_remote_code: bool = Field(
        False, description="Let a local or hub model run its own Python code (transformers, vllm)."
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="chat: chat template / chat API; completions: one flat prompt."
    )
    base_url: str | None = Field(
        None, description="openai backend: server URL, e.g. http://127.0.0.1:8000/v1."
    )
    api_key_env: str | None = Field(
        None,
        description="openai backend: NAME of the environment variable holding the API key (never the key).",
    )
    max_concurrency: int = Field(8, gt=0, description="openai backend: requests in flight at once.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="transformers backend: auto is bf16 where the hardware supports it."
    )
    batch_size: int = Field(8, gt=0, description="transformers backend: prompts per generate() call.")

    @model_validator(mode="after")
    def _server_needs_url(self) -> TeacherParams:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("api_key_env must be an environment variable NAME, not a key")
        return self

    @field_validator("model")
    @classmethod
    def _loadable_model(cls, value: str, info: ValidationInfo) -> str:
        return _check_model_name(value) if info.data.get("backend") == "transformers" else value


class CritiqueRevisionParams(Schema):
    critique: str = Field(description="Critique request, sent after the teacher's rationale.")
    revision: str = Field(description="Revision request, sent after the teacher's critique.")


class GenerationParams(Schema):
    """Which rationales the teacher writes, for how many items, and how it decodes."""

    recipes: list[
        Literal["cot_label_last", "label_first", "rationalize", "critique_revision", "counterfactual"]
    ] = Field(
        default_factory=lambda: ["cot_label_last", "label_first", "rationalize", "critique_revision"],
        description="Prompt recipes; see kdlib.teacher.recipes.",
    )
    n_items: int = Field(4, ge=0, description="Training items the teacher writes rationales for (0: none).")
    n_shots: int = Field(2, ge=0, description="Worked exemplars in each prompt (training items not asked).")
    exemplars_file: Annotated[str, _must_exist("exemplars file")] | None = Field(
        None, description="YAML list of {question, answer, rationale, choices?, context?}; else rule-written."
    )
    samples: int = Field(1, gt=0, description="Rationales per prompt; more than 1 needs temperature > 0.")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    max_new_tokens: int = Field(64, gt=0, description="Generation budget per completion.")
    stop: list[str] = Field(
        default_factory=list, description="Stop strings; the completion ends before them."
    )
    critique_revision: list[CritiqueRevisionParams] | None = Field(
        None,
        min_length=1,
        description="critique_revision recipe: (critique, revision) request pairs, applied in order; null: "
        "the recipe's own pair (kdlib.teacher.recipes.DEFAULT_CRITIQUE_REVISION).",
    )

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> GenerationParams:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy decoding repeats itself)")
        return self


class ImportParams(Schema):
    """Published teacher outputs to import; see kdlib.teacher.importers."""

    source: Literal["palm_cot", "hendriks"] = Field(
        description="palm_cot (distilling step-by-step) or hendriks."
    )
    dataset: Literal["cqa", "svamp", "anli1"] = Field("cqa", description="palm_cot: which dataset.")
    teacher: Literal["llama", "qwen"] = Field("llama", description="hendriks: which teacher's rationales.")
    split: str = Field("train", description="Split as the source names it (cqa: train/test).")
    kinds: list[Literal["positive", "negative", "revised", "counterfactual"]] = Field(
        default_factory=lambda: ["positive"], description="hendriks: which rationale sets."
    )
    only_run_items: bool = Field(
        True, description="Keep only rows for this run's items (matched by item id)."
    )


class FilterParams(Schema):
    drop_unparseable: bool = Field(
        True, description="Drop teacher outputs that are empty, too long, not UTF-8 or without an answer."
    )
    keep_label_correct: bool = Field(False, description="Keep only rationales whose label matches gold.")
    drop_duplicates: bool = Field(True, description="Drop repeated rationales of one item and recipe.")
    drop_leaking: bool = Field(False, description="Drop rationales that state their label (text or letter).")


class TeacherTracesParams(Schema):
    """01_teacher_traces: load items; generate, import and filter rationales."""

    dataset: DatasetParams = Field(default_factory=DatasetParams, description="What data to load.")
    rule_traces: bool = Field(True, description="Add rationales written by rule from gold supporting facts.")
    teacher: TeacherParams = Field(default_factory=TeacherParams, description="The teacher LM.")
    generation: GenerationParams = Field(default_factory=GenerationParams, description="Teacher rationales.")
    imports: list[ImportParams] = Field(default_factory=list, description="Published rationales to import.")
    filters: FilterParams = Field(default_factory=FilterParams, description="Which rationales are kept.")
    cache_path: str | None = Field(
        None, description="Generation cache (SQLite); null: $KDLIB_CACHE/teacher_generations.sqlite."
    )


class DecompositionParams(Schema):
    """02_decomposition: classification + retrieval steps, correct and perturbed."""

    trace_format: Literal["tagged", "plain"] = Field(
        "tagged", description="tagged: <think>...</think><answer>...</answer>; plain: labelled lines."
    )
    perturbations: list[Literal["class", "retrieval", "both", "shuffled"]] = Field(
        default_factory=lambda: ["class", "retrieval", "both", "shuffled"],
        description="Incorrect traces, one per item and kind where it applies: a wrong class, non-supporting "
        "facts, both, or the supporting facts out of order.",
    )


class LoraParams(Schema):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules adapted (Llama names; T5: q, k, v, o, wi, wo), or all-linear (any family).",
    )

    @field_validator("target_modules", mode="wrap")
    @classmethod
    def _names_or_all_linear(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> list[str] | str:
        try:
            return handler(value)
        except ValidationError:  # one message, not one per member of the union
            raise ValueError(f"expected a list of module names or 'all-linear', got {value!r}") from None


class ConditionSpec(Schema):
    """One training condition: a transform (kdlib.training.conditions.TRANSFORMS) and the traces it reads."""

    name: str = Field(description="Cell folder name, unique in the grid.")
    transform: str = Field(description="Which transform; see kdlib.training.conditions.TRANSFORMS.")
    rationale_recipe: str | None = Field(
        None, description="Recipe of the rationale rows (traces.parquet) it uses; null: sft.rationale_recipe."
    )
    rationale_source: str | None = Field(
        None, description="Source of those rows (rule, llm, palm_cot, hendriks); null: sft.rationale_source."
    )
    train_items: int | None = Field(
        None,
        gt=0,
        description="Train on the first N training items only (a seeded shuffle, so a random subset, nested "
        "across sizes): a learning-curve point; null: all of them.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_run_name(value)


class KeyTokenParams(Schema):
    """key_tokens_after_label: where its words come from, and how many are kept."""

    attributions: Annotated[str, _must_exist("attributions file")] | None = Field(
        None,
        description="Attributions parquet (item_id, word_index, word, attribution), relative to the "
        "repository root; null: integrated gradients in this run under the `condition` cell "
        "(sft/attributions.parquet).",
    )
    condition: str = Field(
        "rationale_after_label",
        description="Grid condition whose first causal cell is attributed (trained before the key-token "
        "cells).",
    )
    n_items: int | None = Field(
        None, gt=0, description="Training items attributed (null: all; the others get no key-token example)."
    )
    n_steps: int = Field(32, gt=0, description="Integration steps (Riemann, Gauss-Legendre by Captum).")
    internal_batch_size: int = Field(8, gt=0, description="Interpolated inputs per forward pass.")
    top_k: int | None = Field(None, gt=0, description="Keep this many words per rationale ...")
    fraction: float | None = Field(0.2, gt=0.0, le=1.0, description="... or this share of them (ceil).")

    @model_validator(mode="after")
    def _one_size(self) -> KeyTokenParams:
        if (self.top_k is None) == (self.fraction is None):
            raise ValueError("set exactly one of top_k and fraction")
        return self


class SftParams(Schema):
    """03_sft: the training grid, students x conditions x seeds."""

    students: list[ModelName] = Field(
        default_factory=lambda: ["smollm2-135m-instruct"],
        min_length=1,
        description="Student LMs (causal or T5-style seq2seq): kdlib model names, HF ids or paths.",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="Training seeds (init of LoRA, batch order)."
    )
    conditions: list[
        Annotated[
            Annotated[str, Tag("name")] | Annotated[ConditionSpec, Tag("spec")],
            Discriminator(lambda value: "name" if isinstance(value, str) else "spec"),
        ]
    ] = Field(
        default_factory=lambda: ["no_trace", "correct_trace", "incorrect_trace"],
        min_length=1,
        description="Conditions: a transform name, or {name, transform, rationale_recipe, rationale_source}.",
    )
    rationale_recipe: str = Field(
        "rule", description="Default rationale rows for rationale conditions (recipe in traces.parquet)."
    )
    rationale_source: str | None = Field(None, description="Default source of those rows; null: any.")
    counterfactual_recipe: str = Field(
        "counterfactual",
        description="Recipe of the rationales for wrong choices (counterfactual conditions).",
    )
    counterfactuals_per_item: int | None = Field(
        1,
        gt=0,
        description="Counterfactual examples per item; the wrong choices are drawn per item and seed "
        "(Hendriks et al.: 1). null: one per wrong choice.",
    )
    incorrect_perturbation: Literal["class", "retrieval", "both", "shuffled"] = Field(
        "both", description="Which perturbed trace the incorrect_trace condition trains on."
    )
    multitask_alpha: float = Field(1.0, ge=0.0, description="Loss weight of [predict] examples (multitask).")
    multitask_beta: float = Field(1.0, ge=0.0, description="Loss weight of [explain] examples (multitask).")
    key_tokens: KeyTokenParams = Field(
        default_factory=KeyTokenParams, description="key_tokens_after_label: attributions and how many."
    )
    finetune: Literal["full", "lora", "qlora"] = Field(
        "lora", description="full fine-tuning, LoRA, or QLoRA (NF4 base through bitsandbytes)."
    )
    lora: LoraParams = Field(default_factory=LoraParams, description="LoRA adapter settings (lora, qlora).")
    epochs: int = Field(2, gt=0, description="Passes over the training examples.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimiser step.")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW peak learning rate (linear decay).")
    max_length: int = Field(512, gt=0, description="Examples longer than this many tokens are an error.")
    bf16: bool = Field(
        True,
        description="bf16 autocast where the device computes bf16 natively (a CPU with AVX512-BF16 or AMX, "
        "recent CUDA); fp32 elsewhere.",
    )
    compile: bool = Field(False, description="torch.compile the student's forward pass.")
    checkpoint_every: int = Field(
        50, ge=0, description="Optimiser steps between resumable checkpoints (0: none)."
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Data-parallel processes per cell (accelerate DDP: one per GPU, or gloo on CPU). Each "
        "step's grad_accum micro-batches are spread over them, so results do not depend on it.",
    )
    trust_remote_code: bool = Field(False, description="Let the students run their own Python code.")

    @field_validator("conditions")
    @classmethod
    def _unique_conditions(cls, value: list[str | ConditionSpec]) -> list[str | ConditionSpec]:
        names = [c if isinstance(c, str) else c.name for c in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"condition names {repeated} appear more than once")
        return value

    @model_validator(mode="after")
    def _key_tokens_have_a_source(self) -> SftParams:
        specs = self.condition_specs()
        if self.key_tokens.attributions or not any(s.transform == "key_tokens_after_label" for s in specs):
            return self
        rationale_conditions = [s.name for s in specs if s.transform != "key_tokens_after_label"]
        if self.key_tokens.condition not in rationale_conditions:
            raise ValueError(
                f"key_tokens.condition {self.key_tokens.condition!r} is not a condition of the grid "
                f"{rationale_conditions}; the key-token words are attributed under it (or set "
                "key_tokens.attributions)"
            )
        return self

    @field_validator("students", "seeds")
    @classmethod
    def _no_repeats(cls, value: list) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"repeated entries in {value}")
        return value

    def condition_specs(self) -> list[ConditionSpec]:
        """Every condition as a full spec, defaults filled in from this section."""
        specs = []
        for c in self.conditions:
            spec = ConditionSpec(name=c, transform=c) if isinstance(c, str) else c
            specs.append(
                spec.model_copy(
                    update={
                        "rationale_recipe": spec.rationale_recipe or self.rationale_recipe,
                        "rationale_source": spec.rationale_source or self.rationale_source,
                    }
                )
            )
        return specs


class SamplingParams(Schema):
    """Sampled decoding in 04_evaluation, besides the greedy output every item gets."""

    samples: int = Field(
        0, ge=0, description="Sampled outputs per item (sample k seeded by seed + k); 0: none."
    )
    temperature: float = Field(0.7, gt=0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")


class LensParams(Schema):
    """Logit lens and tuned lens per trained cell in 04_evaluation (kdlib.evaluation.lens)."""

    enabled: bool = Field(True, description="Read every cell's layers through the logit lens.")
    tuned: bool = Field(True, description="Also fit and read a tuned lens per cell.")
    train_items: int = Field(
        32, gt=0, description="Training items whose answer positions fit each tuned lens (held out: eval)."
    )
    steps: int = Field(30, gt=0, description="Tuned-lens optimiser steps (Adam).")
    positions_per_step: int = Field(32, gt=0, description="Residual-stream positions drawn per step.")
    learning_rate: float = Field(1e-3, gt=0, description="Tuned-lens Adam learning rate.")
    batch_size: int = Field(8, gt=0, description="Contexts per forward pass while reading the layers.")


JudgeMode = Literal["joint", "per_dimension", "rating_probabilities"]


class ExplanationParams(Schema):
    """Explanation quality in 04_evaluation (kdlib.evaluation.explanations): LLM judge, rating sheets,
    agreement."""

    enabled: bool = Field(True, description="Collect each cell's explanations, and rate them with the judge.")
    n_items: int = Field(16, gt=0, description="Held-out items per cell whose explanations are rated.")
    judge: TeacherParams = Field(
        default_factory=TeacherParams, description="The judge LM: any teacher backend (see teacher_traces)."
    )
    judge_mode: JudgeMode = Field(
        "joint",
        description="joint: one call rates all five dimensions, in five 'dimension: rating' lines. "
        "per_dimension: one call per dimension, whose reply's first number is the rating. "
        "rating_probabilities (transformers judges): one call per dimension, no text generated; the "
        "rating is the expectation of 1-5 under the judge's probabilities of replying with each "
        "(G-Eval's probability-weighted score), so a judge too small to follow the reply format still "
        "rates every dimension.",
    )
    max_new_tokens: int = Field(
        48,
        gt=0,
        description="Judge reply budget: joint needs about 48 tokens, per_dimension a few; "
        "rating_probabilities generates none.",
    )
    cache_path: str | None = Field(
        None, description="Judge call cache (SQLite); null: $KDLIB_CACHE/teacher_generations.sqlite."
    )
    human_ratings: list[Annotated[str, _must_exist("rating file")]] = Field(
        default_factory=list,
        description="Filled rating sheets (CSV from evaluation/rating_sheet.csv or rating_form.html) to "
        "import and compare with the judge; paths relative to the repository root.",
    )

    @model_validator(mode="after")
    def _probabilities_need_transformers(self) -> ExplanationParams:
        if (
            self.enabled
            and self.judge_mode == "rating_probabilities"
            and self.judge.backend != "transformers"
        ):
            raise ValueError(
                f"judge_mode 'rating_probabilities' reads the judge's token probabilities, which only the "
                f"transformers backend gives (judge.backend is {self.judge.backend!r})"
            )
        return self


class EvaluationParams(Schema):
    """04_evaluation: generate trace + answer on the held-out split and check both; score choices."""

    max_new_tokens: int = Field(96, gt=0, description="Generation budget per answer.")
    batch_size: int = Field(16, gt=0, description="Prompts (or scored choices) per forward batch.")
    label_first: bool = Field(
        True, description="Score each answer choice by log-probability (acc, acc_norm); items with choices."
    )
    generation: SamplingParams = Field(
        default_factory=SamplingParams, description="Sampled outputs besides the greedy one."
    )
    lens: LensParams = Field(default_factory=LensParams, description="Logit and tuned lens per cell.")
    explanations: ExplanationParams = Field(
        default_factory=ExplanationParams, description="Explanation quality on Hendriks et al.'s dimensions."
    )


class CorrelationParams(Schema):
    """05_correlation: trace against answer, conditions against each other, and the published results."""

    trace_criterion: Literal["both_steps", "classification", "retrieval"] = Field(
        "both_steps", description="Headline criterion: which steps must be right for a trace to be correct."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Level of every confidence interval.")
    bootstrap_resamples: int = Field(
        2000, ge=100, description="Resamples of each percentile bootstrap over items."
    )
    baseline_condition: str | None = Field(
        None, description="Compare each condition with this one (McNemar, paired bootstrap); null: all pairs."
    )
    min_parse_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="Flag a cell whose answers are readable less often than this."
    )
    collapse_share: float = Field(
        0.9, gt=0.0, le=1.0, description="Flag a cell giving one answer for at least this share of items."
    )
    seed_outlier_gap: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Flag a seed this far (and 3.5 robust z) from its condition's median.",
    )
    reference_results: str | None = Field(
        None,
        description="Published-results table (YAML, see kdlib/analysis/reference_results.yaml; checked by "
        "kdlib.preflight); null: packaged.",
    )


SECTIONS: dict[str, type[Schema]] = {
    "01_teacher_traces": TeacherTracesParams,
    "02_decomposition": DecompositionParams,
    "03_sft": SftParams,
    "04_evaluation": EvaluationParams,
    "05_correlation": CorrelationParams,
}
SECTION_KEYS = {nb: nb.split("_", 1)[1] for nb in SECTIONS}  # "03_sft" -> "sft"
NOTEBOOKS = tuple(SECTIONS)


class ExperimentParams(Schema):
    common: CommonParams = Field(default_factory=CommonParams, description="Settings every notebook sees.")
    teacher_traces: TeacherTracesParams = Field(default_factory=TeacherTracesParams)
    decomposition: DecompositionParams = Field(default_factory=DecompositionParams)
    sft: SftParams = Field(default_factory=SftParams)
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    correlation: CorrelationParams = Field(default_factory=CorrelationParams)

    def notebook_parameters(self, notebook: str, run_dir: str | os.PathLike) -> dict[str, Any]:
        """The papermill parameters for one notebook: run_dir, the common block and its own section."""
        section = getattr(self, SECTION_KEYS[notebook])
        return {"run_dir": str(run_dir), **self.common.model_dump(), **section.model_dump()}


class ParamsError(ValueError):
    """A params file is malformed; the message names the file and the dotted key."""


def format_errors(source: str, error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: key '{key}': {msg}")
    return "\n".join(lines)


def validate_params(raw: Any, source: str = "<params>") -> ExperimentParams:
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{source}: key '<root>': expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return ExperimentParams.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_errors(source, error)) from None


def _repeated_key(text: str) -> tuple[str, int] | None:
    """(dotted key, line) of a mapping key given twice in valid YAML text, which safe_load would let the
    last one win silently; None if there is none."""
    pending, visited = [((), yaml.compose(text, Loader=yaml.SafeLoader))], set()
    while pending:
        path, node = pending.pop()
        if node is None or id(node) in visited:  # aliases can revisit a node
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend(((*path, str(i)), item) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if key.value in seen:
                    return ".".join((*path, key.value)), key.start_mark.line + 1
                seen.add(key.value)
                pending.append(((*path, key.value), value))
    return None


def load_params(path: str | os.PathLike) -> ExperimentParams:
    """Read and validate one params YAML file (safe_load only; a key given twice is an error, and so is
    a file with no settings: an empty file never stands for "all defaults")."""
    text = read_text_file(path, "params file", ParamsError)
    raw = parse_yaml(text, path, ParamsError)
    if raw is None or raw == {}:
        raise ParamsError(
            f"{path}: key '<root>': params file is empty; to run the defaults, give at least common.run_name"
        )
    repeated = _repeated_key(text)
    if repeated:
        raise ParamsError(f"{path}: key '{repeated[0]}': given twice (again on line {repeated[1]})")
    return validate_params(raw, str(path))


def notebook_params(notebook: str, namespace: dict[str, Any]) -> tuple[CommonParams, Schema]:
    """Validate the parameters a notebook received (its globals after the parameters cell).

    Returns (common, section). Used by every notebook right after its parameters cell, so that a
    notebook run by hand in JupyterLab is checked exactly like one run by `kdlib run`.
    """

    def picked(model: type[Schema]) -> dict[str, Any]:
        return {name: namespace[name] for name in model.model_fields if name in namespace}

    raw = {"common": picked(CommonParams), SECTION_KEYS[notebook]: picked(SECTIONS[notebook])}
    params = validate_params(raw, f"notebook {notebook} parameters")
    return params.common, getattr(params, SECTION_KEYS[notebook])


def dump_params(params: ExperimentParams) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def params_digest(params: ExperimentParams) -> str:
    """sha256 of the validated params (comments and layout of the file aside)."""
    return hashlib.sha256(dump_params(params).encode()).hexdigest()
