"""Notebook 01's wiring: the run's items, and every rationale it asks for (rule-written, generated,
imported) as one table."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kdlib.config import CommonParams, GenerationParams, ImportParams, TeacherParams, TeacherTracesParams
from kdlib.data import load_train_eval
from kdlib.data.schema import QAItem, items_to_frame
from kdlib.paths import resolve_repo_path
from kdlib.teacher import importers
from kdlib.teacher.backends import Backend, Decoding, OpenAIBackend, TransformersBackend, VLLMBackend
from kdlib.teacher.cache import GenerationCache
from kdlib.teacher.rationales import rule_traces, traces_frame
from kdlib.teacher.recipes import (
    DEFAULT_CRITIQUE_REVISION,
    CritiqueRevision,
    exemplars_from_items,
    generate_rationales,
    load_exemplars,
)


def load_run_items(
    cfg: TeacherTracesParams, common: CommonParams
) -> tuple[list[QAItem], list[QAItem], pd.DataFrame]:
    """(training items, evaluation items, both as one frame with a `role` column: items.parquet)."""
    data = cfg.dataset
    train_items, eval_items = load_train_eval(
        data.name,
        data.train_split,
        data.eval_split,
        data.n_train,
        data.n_eval,
        seed=common.seed,
        data_dir=common.data_dir,
        options=data.options,
    )
    frame = pd.concat(
        [items_to_frame(train_items).assign(role="train"), items_to_frame(eval_items).assign(role="eval")],
        ignore_index=True,
    )
    return train_items, eval_items, frame


def make_backend(params: TeacherParams, *, device: str, seed: int) -> Backend:
    if params.backend == "openai":
        return OpenAIBackend(
            params.model,
            base_url=params.base_url,
            api_key_env=params.api_key_env,
            endpoint=params.endpoint,
            max_concurrency=params.max_concurrency,
            revision=params.revision,
        )
    if params.backend == "vllm":
        return VLLMBackend(
            params.model,
            endpoint=params.endpoint,
            revision=params.revision,
            seed=seed,
            trust_remote_code=params.trust_remote_code,
        )
    return TransformersBackend(
        params.model,
        endpoint=params.endpoint,
        device=device,
        dtype=params.dtype,
        batch_size=params.batch_size,
        revision=params.revision,
        seed=seed,
        trust_remote_code=params.trust_remote_code,
    )


def decoding_of(params: GenerationParams, seed: int) -> Decoding:
    return Decoding(
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=tuple(params.stop),
        seed=seed,
    )


def import_rationales(spec: ImportParams, items: list[QAItem], data_dir: str | None) -> pd.DataFrame:
    if spec.source == "palm_cot":
        rows = importers.palm_cot(spec.dataset, spec.split, data_dir)
    else:
        rows = importers.hendriks(spec.teacher, spec.split, spec.kinds, data_dir)
    if spec.only_run_items:
        rows = rows[rows["item_id"].isin({item.id for item in items})]
    return rows.reset_index(drop=True)


@dataclass
class TeacherReport:
    """What the teacher stage did: which items it asked, its cache statistics, the backend's calls."""

    asked_items: list[str] = field(default_factory=list)
    exemplar_items: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    model_calls: int = 0


def teacher_prompts(gen: GenerationParams, train_items: list[QAItem]) -> tuple[list, list[QAItem], list[str]]:
    """(worked exemplars, the items the teacher is asked about, ids of training items used as
    exemplars): from generation.exemplars_file, else the first n_shots training items, never asked."""
    if gen.exemplars_file:
        exemplars = load_exemplars(resolve_repo_path(gen.exemplars_file))[: gen.n_shots]
        return exemplars, train_items[: gen.n_items], []
    shots = train_items[: gen.n_shots]
    asked = train_items[gen.n_shots : gen.n_shots + gen.n_items]
    return exemplars_from_items(shots), asked, [item.id for item in shots]


def _stacked(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else traces_frame([])


def _rule_and_imported(
    cfg: TeacherTracesParams, train_items: list[QAItem], data_dir: str | None
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    with_gold = [item for item in train_items if item.supporting_facts is not None]
    rule = [rule_traces(with_gold)] if cfg.rule_traces else []
    return rule, [import_rationales(spec, train_items, data_dir) for spec in cfg.imports]


def offline_rationales(
    cfg: TeacherTracesParams, train_items: list[QAItem], data_dir: str | None
) -> pd.DataFrame:
    """The rationale rows that need no teacher model: written by rule from gold supporting facts, and
    imported from published outputs."""
    rule, imported = _rule_and_imported(cfg, train_items, data_dir)
    return _stacked([*rule, *imported])


def collect_rationales(
    cfg: TeacherTracesParams,
    train_items: list[QAItem],
    *,
    device: str,
    seed: int,
    data_dir: str | None,
) -> tuple[pd.DataFrame, TeacherReport]:
    """All rationale rows of a run, before filtering, and a report for meta.json."""
    report = TeacherReport()
    generated = []
    gen = cfg.generation
    if gen.recipes and gen.n_items:
        exemplars, asked, report.exemplar_items = teacher_prompts(gen, train_items)
        report.asked_items = [item.id for item in asked]
        backend = make_backend(cfg.teacher, device=device, seed=seed)
        pairs = (
            tuple(CritiqueRevision(p.critique, p.revision) for p in gen.critique_revision)
            if gen.critique_revision
            else DEFAULT_CRITIQUE_REVISION
        )
        with GenerationCache(cfg.cache_path) as cache:
            for recipe in gen.recipes:
                generated.append(
                    generate_rationales(
                        recipe,
                        asked,
                        exemplars,
                        backend,
                        cache,
                        decoding_of(gen, seed),
                        samples=gen.samples,
                        critique_revision=pairs,
                        model_name=cfg.teacher.model,
                    )
                )
            report.cache = {**cache.stats.as_dict(), "entries": len(cache), "path": str(cache.path)}
        report.model_calls = backend.calls
        backend.close()
    rule, imported = _rule_and_imported(cfg, train_items, data_dir)
    return _stacked([*rule, *generated, *imported]), report
