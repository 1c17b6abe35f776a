"""Importers for published teacher outputs, as rationale rows (see rationales.TRACE_COLUMNS).

* `palm_cot`: the PaLM-540B CoT completions of distilling step-by-step (Hsieh et al. 2023) for cqa,
  svamp and anli1. Each completion is cut where PaLM starts inventing the next few-shot question
  ("Q:" or "Premise:"), then split at "So the answer is" / "The answer is" into rationale and label.
* `hendriks`: the CommonsenseQA rationale sets of Hendriks et al. (2025): positive, negative, revised,
  and one counterfactual rationale per answer choice. They are label-conditioned rationalisations, so
  the row's label is the label the teacher was asked to explain (`label_source` "conditioned").

Both read the layout documented in each folder's README under the data directory.
"""

from __future__ import annotations

import ast
import json
import operator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from kdlib.data.schema import QAItem
from kdlib.io import read_utf8, read_utf8_lines
from kdlib.paths import resolve_data_dir
from kdlib.teacher.rationales import split_label_last, trace_row, traces_frame

PALM_DATASETS = {
    # name: (input id key, where PaLM's continuation starts, splits with inputs)
    "cqa": ("id", "Q:", ("train", "test")),
    "svamp": (None, "Q:", ("train", "test")),
    "anli1": ("uid", "Premise:", ("valid", "test")),
}
PALM_MODEL = "PaLM-540B"
ANLI_LABELS = ("entailment", "neutral", "contradiction")

HENDRIKS_TEACHERS = {
    # teacher: (folder under llm_outputs, model as recorded in the data's README, kinds available)
    "llama": ("consolidated/cqa-llama-{split}", "llama (checkpoint not recorded; repo default Llama-2-13b)"),
    "qwen": ("rationales/cqa-qwen-{split}", "Qwen3-30B-A3B-Instruct-2507"),
}
HENDRIKS_KINDS = {
    "positive": "few_shot_positive_rationale",
    "negative": "few_shot_negative_rationale",
    "revised": "few_shot_revision",
    "counterfactual": "counterfactual_prompt_answer_{k}_rationale",
}


def csqa_item_id(csqa_id: str) -> str:
    """The item id kdlib's commonsenseqa loader gives the same question, so imports join run items."""
    return f"csqa-{csqa_id}"


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_no, line in enumerate(read_utf8_lines(path), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line_no}: not valid JSON: {error.msg}") from None
    return rows


def _palm_item(dataset: str, split: str, n: int, row: dict, where: str) -> QAItem:
    try:
        if dataset == "cqa":
            return QAItem(
                csqa_item_id(row["id"]),
                "commonsenseqa",
                split,
                row["question"],
                row["answer"],
                choices=row["choices"],
            )
        if dataset == "anli1":
            question = f"Premise: {row['premise']}\nHypothesis: {row['hypothesis']}"
            return QAItem(
                row["uid"], "anli1", split, question, ANLI_LABELS[row["label"]], choices=list(ANLI_LABELS)
            )
        return QAItem(f"svamp-{split}-{n}", "svamp", split, row["input"], row["label"])
    except KeyError as error:
        raise ValueError(f"{where}: missing key {error.args[0]!r}") from None


def palm_cot_inputs(dataset: str, split: str, data_dir: str | Path | None = None) -> Path:
    """The input file of one PaLM CoT dataset and split; its completions are in llm/ beside it."""
    return (
        resolve_data_dir(data_dir)
        / "distilling_step_by_step"
        / "datasets"
        / dataset
        / f"{dataset}_{split}.json"
    )


def hendriks_folder(teacher: str, split: str, data_dir: str | Path | None = None) -> Path:
    """The folder of one Hendriks et al. teacher's rationale shards (shard_*/ of arrow files)."""
    pattern, _ = HENDRIKS_TEACHERS[teacher]
    return (
        resolve_data_dir(data_dir) / "hendriks_llm_distillation" / "llm_outputs" / pattern.format(split=split)
    )


def palm_cot(dataset: str, split: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    """PaLM CoT rationale rows for one dataset and split, in input-file order."""
    if dataset not in PALM_DATASETS:
        raise ValueError(f"palm_cot dataset {dataset!r}: choose from {sorted(PALM_DATASETS)}")
    _, continuation, splits = PALM_DATASETS[dataset]
    if split not in splits:
        raise ValueError(f"palm_cot {dataset} split {split!r}: inputs exist for {list(splits)}")
    inputs_path = palm_cot_inputs(dataset, split, data_dir)
    root = inputs_path.parent
    if not inputs_path.exists():
        raise FileNotFoundError(f"{inputs_path}: input file missing (see distilling_step_by_step/README.md)")
    inputs = _read_jsonl(inputs_path)
    output_files = sorted(root.glob(f"llm/{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    completions = [text for path in output_files for text in json.loads(read_utf8(path))]
    if len(completions) != len(inputs):
        raise ValueError(
            f"{root}/llm/{split}_CoT_*.json: {len(completions)} completions "
            f"for {len(inputs)} rows of {inputs_path}"
        )
    rows = []
    for n, (row, completion) in enumerate(zip(inputs, completions, strict=True)):
        item = _palm_item(dataset, split, n, row, f"{inputs_path}:{n + 1}")
        text = completion.split(continuation)[0].strip()
        rationale, label = split_label_last(text, item)
        record = trace_row(
            item,
            source="palm_cot",
            model=PALM_MODEL,
            prompt_id=f"distilling_step_by_step/{dataset}_cot",
            recipe="cot_label_last",
            rationale=rationale,
            completion=text,
            parsed_label=label,
            label_source="parsed",
        )
        if dataset == "svamp":  # equations agree when their values do: "(10 * 45)" vs "( 10.0 * 45.0 )"
            record["label_correct"] = label is not None and _equation_value(label) == _equation_value(
                item.answer
            )
        rows.append(record)
    return traces_frame(rows)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _equation_value(text: str) -> float | None:
    """The value of an arithmetic expression of numbers and + - * /; None when it is anything else."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(text)

    try:
        return round(value(ast.parse(text.strip().rstrip("."), mode="eval").body), 6)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None


def _read_arrow_shards(folder: Path) -> pd.DataFrame:
    shards = sorted(folder.glob("shard_*"), key=lambda p: int(p.name.split("_")[1]))
    if not shards:
        raise FileNotFoundError(f"{folder}: no shard_*/ folders (see hendriks_llm_distillation/README.md)")
    tables = []
    for shard in shards:
        for arrow in sorted(shard.glob("*.arrow")):
            with pa.memory_map(str(arrow)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables).to_pandas()


def hendriks(
    teacher: str,
    split: str,
    kinds: list[str] | tuple[str, ...] = ("positive",),
    data_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Hendriks et al. rationale rows for CommonsenseQA: one row per item and kind (counterfactual: one
    per answer choice, including the gold one)."""
    if teacher not in HENDRIKS_TEACHERS:
        raise ValueError(f"hendriks teacher {teacher!r}: choose from {sorted(HENDRIKS_TEACHERS)}")
    unknown = sorted(set(kinds) - set(HENDRIKS_KINDS))
    if unknown:
        raise ValueError(f"hendriks kinds {unknown}: choose from {sorted(HENDRIKS_KINDS)}")
    _, model = HENDRIKS_TEACHERS[teacher]
    folder = hendriks_folder(teacher, split, data_dir)
    table = _read_arrow_shards(folder)
    rows = []
    for n, row in enumerate(table.itertuples(index=False)):
        record = row._asdict()
        where = f"{folder} row {n}"
        item = QAItem(
            csqa_item_id(str(record["id"])),
            "commonsenseqa",
            split,
            record["question"],
            record["answer"],
            choices=list(record["choices"]),
        )
        for kind in kinds:
            targets = (
                [(HENDRIKS_KINDS[kind].format(k=k + 1), choice) for k, choice in enumerate(item.choices)]
                if kind == "counterfactual"
                else [(HENDRIKS_KINDS[kind], item.answer)]
            )
            for column, target in targets:
                if column not in record:
                    raise ValueError(f"{where}: column {column!r} missing; {teacher} has {sorted(record)}")
                text = (record[column] or "").strip()
                rows.append(
                    trace_row(
                        item,
                        source="hendriks",
                        model=model,
                        prompt_id=f"hendriks/{column}",
                        recipe=kind,
                        rationale=text,
                        completion=text,
                        parsed_label=target,
                        label_source="conditioned",
                        target_label=target,
                    )
                )
    return traces_frame(rows)
