"""Load the real QA datasets as `QAItem`s, from files under the data directory or from the Hugging Face hub.

`load_items(name, split)` reads `<data_dir>/<folder>/...` in the layout of /work/shared/data (each folder's
README gives its source). With source="auto" (the default) it falls back to the hub only when those local
files are missing; source="hub" always uses the hub and needs the network or a warm HF cache. Local rows
and hub rows go through the same per-dataset converter; hub rows are first reshaped by a small adapter.

Every item's metadata holds `source_file` (path relative to the data dir, or "hub:<dataset>...") and
`source_line` (1-based line in that file, or 1-based row on the hub). A malformed row raises ValueError
naming the file, the line and the offending key.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlib.data.msmarco_sample import NO_ANSWER, sample_rows
from kdlib.data.openbook import OpenBook, fact_relation
from kdlib.data.retrieval import BM25Index
from kdlib.data.schema import (
    ANNOTATION,
    BM25,
    CLASS_SOURCE,
    FACTS_SOURCE,
    HEURISTIC,
    QUESTION_TYPE,
    RULE,
    SUPPORTING_FACTS,
    QAItem,
)
from kdlib.data.temporal import supporting_facts as temporal_supporting_facts
from kdlib.io import read_utf8, read_utf8_lines
from kdlib.paths import DATA_DIR_ENV, resolve_data_dir

logger = logging.getLogger(__name__)

SOURCES = ("auto", "local", "hub")

Options = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Raw rows and where they came from


@dataclass(frozen=True)
class _Record:
    """One raw row plus its origin, so that every error can name the file, the line and the key."""

    data: Mapping[str, Any]
    source_file: str
    source_line: int
    location: str

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.location}: {message}")

    def field(self, path: str, kind: type | tuple[type, ...] = object) -> Any:
        """The value at a dotted key path such as "question.stem", checked to be of `kind`."""
        value: Any = self.data
        for key in path.split("."):
            if not isinstance(value, Mapping) or key not in value:
                raise self.error(f"missing key {path!r}")
            value = value[key]
        if not isinstance(value, kind):
            raise self.error(f"key {path!r} should be {_type_names(kind)}, got {type(value).__name__}")
        return value

    def strings(self, path: str) -> list[str]:
        values = self.field(path, list)
        if not all(isinstance(value, str) for value in values):
            raise self.error(f"key {path!r} should be a list of strings")
        return list(values)

    def number(self, path: str) -> float:
        value = self.field(path, (str, int, float))
        try:
            return float(value)
        except ValueError:
            raise self.error(f"key {path!r} should be a number, got {value!r}") from None

    @property
    def provenance(self) -> dict[str, Any]:
        return {"source_file": self.source_file, "source_line": self.source_line}


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _local_record(data: Any, path: Path, root: Path, line: int) -> _Record:
    location = f"{path} line {line}"
    if not isinstance(data, Mapping):
        raise ValueError(f"{location}: expected a JSON object, got {type(data).__name__}")
    return _Record(data, path.relative_to(root).as_posix(), line, location)


def _jsonl_records(path: Path, root: Path) -> Iterator[_Record]:
    """The objects of a JSON Lines file (blank lines skipped)."""
    for line_number, line in enumerate(read_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {line_number}: bad JSON ({error.msg} at column {error.colno})"
            ) from error
        yield _local_record(data, path, root, line_number)


_WHITESPACE = re.compile(r"\s*")


def _json_array_records(path: Path, root: Path) -> Iterator[_Record]:
    """The objects of a file holding one JSON list, each with the line on which it starts."""
    text = read_utf8(path)
    decoder = json.JSONDecoder()
    position = _WHITESPACE.match(text).end()
    if not text.startswith("[", position):
        raise ValueError(f"{path} line 1: expected a JSON list")
    position = _WHITESPACE.match(text, position + 1).end()
    line, counted_to = 1, 0
    while not text.startswith("]", position):
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            data, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {error.lineno}: bad JSON ({error.msg})") from error
        yield _local_record(data, path, root, line)
        position = _WHITESPACE.match(text, position).end()
        if text.startswith(",", position):
            position = _WHITESPACE.match(text, position + 1).end()
        elif not text.startswith("]", position):
            line = text.count("\n", 0, position) + 1
            raise ValueError(f"{path} line {line}: expected ',' or ']' after a list entry")


def _hub_records(
    dataset_id: str,
    split: str,
    *,
    config: str | None = None,
    data_file: str | None = None,
    adapt: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
) -> Iterator[_Record]:
    """Rows of a Hugging Face hub dataset, reshaped by `adapt` into the local files' row shape."""
    import datasets

    if data_file is None:
        rows = datasets.load_dataset(dataset_id, config, split=split)
        source = f"hub:{dataset_id}" + (f"[{config}]" if config else "") + f":{split}"
    else:
        rows = datasets.load_dataset(dataset_id, data_files={split: data_file}, split=split)
        source = f"hub:{dataset_id}/{data_file}"
    for row_number, row in enumerate(rows, 1):
        yield _Record(adapt(row), source, row_number, f"{source} row {row_number}")


# ---------------------------------------------------------------------------------------------------------
# Multiple choice (CommonsenseQA, OpenBookQA)


def _choices_and_answer(record: _Record) -> tuple[list[str], list[str], str]:
    """(choice texts, labels), both in label order, and the gold choice text named by `answerKey`."""
    pairs = []
    for position, choice in enumerate(record.field("question.choices", list)):
        if not (
            isinstance(choice, Mapping) and all(isinstance(choice.get(k), str) for k in ("label", "text"))
        ):
            raise record.error(f"key 'question.choices[{position}]' needs a string 'label' and 'text'")
        pairs.append((choice["label"], choice["text"]))
    pairs.sort(key=lambda pair: pair[0])
    labels = [label for label, _ in pairs]
    texts = [text for _, text in pairs]
    answer_key = record.field("answerKey", str)
    if answer_key not in labels:
        raise record.error(f"key 'answerKey' is {answer_key!r}, not one of the choice labels {labels}")
    return texts, labels, texts[labels.index(answer_key)]


def _choices_from_columns(choices: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """Hub rows store choices as {"label": [...], "text": [...]}; local rows as a list of dicts."""
    return [
        {"label": label, "text": text} for label, text in zip(choices["label"], choices["text"], strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------
# CommonsenseQA


_CSQA_FILES = {"train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"}
_CSQA_HUB_SPLITS = {"train": "train", "dev": "validation"}


def _csqa_item(record: _Record, split: str) -> QAItem:
    choices, labels, answer = _choices_and_answer(record)
    return QAItem(
        id=f"csqa-{record.field('id', str)}",
        dataset="commonsenseqa",
        split=split,
        question=record.field("question.stem", str),
        answer=answer,
        choices=choices,
        metadata={
            "choice_labels": labels,
            "answer_label": record.field("answerKey", str),
            "question_concept": record.field("question.question_concept", str),
            **record.provenance,
        },
    )


def _csqa_from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    question = {"stem": row["question"], "question_concept": row["question_concept"]}
    return {
        "id": row["id"],
        "answerKey": row["answerKey"],
        "question": {**question, "choices": _choices_from_columns(row["choices"])},
    }


def _csqa_files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "commonsenseqa" / _CSQA_FILES[split]]


def _csqa_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """CommonsenseQA random split: train -> train_rand_split.jsonl, dev -> dev_rand_split.jsonl."""
    for record in _jsonl_records(_csqa_files(root, split, options)[0], root):
        yield _csqa_item(record, split)


def _csqa_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """tau/commonsense_qa: train -> train, dev -> validation."""
    for record in _hub_records("tau/commonsense_qa", _CSQA_HUB_SPLITS[split], adapt=_csqa_from_hub):
        yield _csqa_item(record, split)


# ---------------------------------------------------------------------------------------------------------
# OpenBookQA


_OBQA_DIR = Path("openbookqa", "OpenBookQA-V1-Sep2018", "Data")
_OBQA_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _obqa_item(
    record: _Record, split: str, with_facts: bool, book: OpenBook | None, distractors: int
) -> QAItem:
    """Context: the supporting fact (gold `fact1` with facts, else BM25's silver pick from the book) and
    `distractors` BM25-ranked book facts; none at all without facts and distractors. The class is the
    relation the supporting fact states (see kdlib.data.openbook). humanScore/clarity go to metadata."""
    choices, labels, answer = _choices_and_answer(record)
    question = record.field("question.stem", str)
    item_id = f"obqa-{record.field('id', str)}"
    metadata: dict[str, Any] = {"choice_labels": labels, "answer_label": record.field("answerKey", str)}
    gold_fact = record.field("fact1", str) if with_facts else None
    if with_facts:
        metadata |= {"humanScore": record.number("humanScore"), "clarity": record.number("clarity")}
    context: list[str] = []
    if book is not None:
        try:
            context, position = book.context(item_id, question, choices, answer, gold_fact, distractors)
        except ValueError as error:
            raise record.error(str(error)) from None
    elif gold_fact is not None:
        context, position = [gold_fact], 0
    if context:
        metadata |= {
            QUESTION_TYPE: fact_relation(context[position]),
            SUPPORTING_FACTS: [position],
            CLASS_SOURCE: RULE,
            FACTS_SOURCE: ANNOTATION if with_facts else BM25,
        }
    return QAItem(
        id=item_id,
        dataset="openbookqa",
        split=split,
        question=question,
        answer=answer,
        context=context,
        choices=choices,
        metadata={**metadata, **record.provenance},
    )


def _obqa_from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    facts = {key: row[key] for key in ("fact1", "humanScore", "clarity") if key in row}
    question = {"stem": row["question_stem"], "choices": _choices_from_columns(row["choices"])}
    return {"id": row["id"], "answerKey": row["answerKey"], "question": question, **facts}


def _obqa_book_file(root: Path) -> Path:
    return root / _OBQA_DIR / "Main" / "openbook.txt"


def _obqa_files(root: Path, split: str, options: Options) -> list[Path]:
    rows = (
        root / _OBQA_DIR / "Additional" / f"{split}_complete.jsonl"
        if options["with_facts"]
        else root / _OBQA_DIR / "Main" / f"{split}.jsonl"
    )
    return [rows, _obqa_book_file(root)] if options["distractors"] else [rows]


def _obqa_book(options: Options, root: Path | None) -> OpenBook | None:
    """The open book when distractors are asked for; the hub has no book, so it is read locally."""
    if not options["distractors"]:
        return None
    if root is None or not _obqa_book_file(root).is_file():
        raise FileNotFoundError(
            f"openbookqa distractors need the open book {_OBQA_DIR}/Main/openbook.txt under the data "
            "directory; set it up or pass distractors: 0"
        )
    return OpenBook.read(_obqa_book_file(root))


def _obqa_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """Main/<split>.jsonl, or with facts Additional/<split>_complete.jsonl: the same rows in the same order
    (same ids, stems, choices and answer keys) plus fact1, humanScore, clarity and turkIdAnonymized.
    Distractors come from Main/openbook.txt."""
    book = _obqa_book(options, root)
    for record in _jsonl_records(_obqa_files(root, split, options)[0], root):
        yield _obqa_item(record, split, options["with_facts"], book, options["distractors"])


def _obqa_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """allenai/openbookqa, config "additional" with facts else "main"; dev -> validation. Distractors
    still need the local open book."""
    book = _obqa_book(options, root)
    config = "additional" if options["with_facts"] else "main"
    records = _hub_records("allenai/openbookqa", _OBQA_HUB_SPLITS[split], config=config, adapt=_obqa_from_hub)
    for record in records:
        yield _obqa_item(record, split, options["with_facts"], book, options["distractors"])


# ---------------------------------------------------------------------------------------------------------
# bAbI (tasks 1-20, English, 1k)


BABI_TASKS = {
    1: "single-supporting-fact",
    2: "two-supporting-facts",
    3: "three-supporting-facts",
    4: "two-arg-relations",
    5: "three-arg-relations",
    6: "yes-no-questions",
    7: "counting",
    8: "lists-sets",
    9: "simple-negation",
    10: "indefinite-knowledge",
    11: "basic-coreference",
    12: "conjunction",
    13: "compound-coreference",
    14: "time-reasoning",
    15: "basic-deduction",
    16: "basic-induction",
    17: "positional-reasoning",
    18: "size-reasoning",
    19: "path-finding",
    20: "agents-motivations",
}
_BABI_DIR = Path("babi", "tasks_1-20_v1-2", "en")
_BABI_LINE = re.compile(r"(\d+) (\S.*)")
_BABI_SUPPORT = re.compile(r"\d+(?: \d+)*")


def _babi_file(root: Path, task: int, split: str) -> Path:
    return root / _BABI_DIR / f"qa{task}_{BABI_TASKS[task]}_{split}.txt"


def _babi_items(path: Path, root: Path, task: int, split: str) -> Iterator[QAItem]:
    """One item per question line. Its context is the story's statements so far (question lines excluded);
    supporting_facts map the bAbI line ids, in the file's order, to positions in that context."""
    story: list[str] = []
    position_of: dict[int, int] = {}
    previous_id = 0
    question_count = 0
    for line_number, line in enumerate(read_utf8_lines(path), 1):
        where = f"{path} line {line_number}"
        match = _BABI_LINE.fullmatch(line)
        if not match:
            raise ValueError(f"{where}: expected '<id> <sentence>' or '<id> <question>\\t<answer>\\t<ids>'")
        line_id, text = int(match[1]), match[2]
        if line_id == 1:
            story, position_of = [], {}
        elif line_id != previous_id + 1:
            raise ValueError(f"{where}: line id {line_id} does not follow {previous_id}")
        previous_id = line_id
        if "\t" not in text:
            position_of[line_id] = len(story)
            story.append(text.strip())
            continue
        fields = [part.strip() for part in text.split("\t")]
        if len(fields) != 3 or not all(fields):
            raise ValueError(f"{where}: a question line needs 3 tab-separated fields: question, answer, ids")
        question, answer, support = fields
        if not _BABI_SUPPORT.fullmatch(support):
            raise ValueError(f"{where}: supporting fact ids {support!r} are not line ids")
        unknown = [int(s) for s in support.split() if int(s) not in position_of]
        if unknown:
            raise ValueError(f"{where}: supporting fact ids {unknown} name no statement of this story")
        yield QAItem(
            id=f"babi-qa{task}-{split}-{question_count}",
            dataset="babi",
            split=split,
            question=question,
            answer=answer,
            context=list(story),
            metadata={
                QUESTION_TYPE: BABI_TASKS[task],
                SUPPORTING_FACTS: [position_of[int(s)] for s in support.split()],
                CLASS_SOURCE: ANNOTATION,
                FACTS_SOURCE: ANNOTATION,
                "task": task,
                "source_file": path.relative_to(root).as_posix(),
                "source_line": line_number,
            },
        )
        question_count += 1


def _babi_files(root: Path, split: str, options: Options) -> list[Path]:
    return [_babi_file(root, task, split) for task in options["tasks"]]


def _babi_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """babi/tasks_1-20_v1-2/en/qa<N>_<name>_<split>.txt for each task, in the order given."""
    for task in options["tasks"]:
        yield from _babi_items(_babi_file(root, task, split), root, task, split)


# ---------------------------------------------------------------------------------------------------------
# CoTempQA


COTEMPQA_SUBSETS = ("equal", "overlap", "mix", "during")
_NAME_CONTINUES_BEFORE = re.compile(r"(?<!\w)[A-Z][\w'.&-]*(?:,| of| of the)? $")
_NAME_CONTINUES_AFTER = re.compile(r" (?:\(|of\b|[A-Z0-9])")


def _names(fact: str, answer: str) -> bool:
    """Whether `fact` mentions `answer` as a whole name, not inside a longer one ("Maersk" in "Maersk Line",
    "Amsterdam" in "University of Amsterdam", "Holy Roman Emperor" in "Frederick III, Holy Roman Emperor")."""
    for match in re.finditer(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", fact):
        if not (
            _NAME_CONTINUES_BEFORE.search(fact, 0, match.start())
            or _NAME_CONTINUES_AFTER.match(fact, match.end())
        ):
            return True
    return False


def _cotempqa_item(record: _Record, subset: str) -> QAItem:
    """The class is the subset (the temporal relation). The supporting facts are found by the time-span
    rule of kdlib.data.temporal: the anchor event's fact and the co-temporal facts naming an answer.
    Where it does not apply, they are the facts that name an answer (see `_names`; facts_source
    "heuristic"), which can miss the anchor fact and include a distractor naming the answer."""
    facts = record.strings("facts")
    answers = record.strings("answer")
    if not answers:
        raise record.error("key 'answer' is an empty list")
    question = record.field("question", str)
    support = temporal_supporting_facts(question, facts, answers)
    facts_source = RULE
    if support is None:
        support = [i for i, fact in enumerate(facts) if any(_names(fact, a) for a in answers)]
        facts_source = HEURISTIC
    return QAItem(
        id=f"cotempqa-{subset}-{record.field('index', int)}",
        dataset="cotempqa",
        split="test",
        question=question,
        answer=", ".join(answers),
        context=facts,
        metadata={
            QUESTION_TYPE: subset,
            SUPPORTING_FACTS: support,
            CLASS_SOURCE: ANNOTATION,
            FACTS_SOURCE: facts_source,
            "answers": answers,
            "triple_element": record.field("triple_element", str),
            **record.provenance,
        },
    )


def _cotempqa_file(root: Path, subset: str) -> Path:
    return root / "cotempqa" / f"{subset}.json"


def _cotempqa_subsets(root: Path, options: Options) -> tuple[str, ...]:
    """The chosen subsets, or by default every subset whose file is present (all of them if none is)."""
    if options["subsets"] is not None:
        return options["subsets"]
    present = tuple(s for s in COTEMPQA_SUBSETS if _cotempqa_file(root, s).is_file())
    return present or COTEMPQA_SUBSETS


def _cotempqa_files(root: Path, split: str, options: Options) -> list[Path]:
    return [_cotempqa_file(root, subset) for subset in _cotempqa_subsets(root, options)]


def _cotempqa_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """cotempqa/<subset>.json (JSON Lines despite the name); the only split is "test"."""
    for subset in _cotempqa_subsets(root, options):
        for record in _jsonl_records(_cotempqa_file(root, subset), root):
            yield _cotempqa_item(record, subset)


def _cotempqa_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """Warrieryes/CotempQA/<subset>.json; all four subsets by default."""
    for subset in options["subsets"] or COTEMPQA_SUBSETS:
        for record in _hub_records("Warrieryes/CotempQA", split, data_file=f"{subset}.json"):
            yield _cotempqa_item(record, subset)


# ---------------------------------------------------------------------------------------------------------
# StrategyQA


_STRATEGYQA_HUB_SPLITS = {"train": "train", "dev": "test"}


def _strategyqa_item(record: _Record, split: str) -> QAItem:
    """Answer "yes"/"no"; context is the human-written facts, all of which are the gold support."""
    facts = record.strings("facts")
    return QAItem(
        id=f"strategyqa-{record.field('qid', str)}",
        dataset="strategyqa",
        split=split,
        question=record.field("question", str),
        answer="yes" if record.field("answer", bool) else "no",
        context=facts,
        choices=["yes", "no"],
        metadata={
            SUPPORTING_FACTS: list(range(len(facts))),
            FACTS_SOURCE: ANNOTATION,
            "decomposition": record.strings("decomposition"),
            **record.provenance,
        },
    )


def _strategyqa_from_hub(row: Mapping[str, Any]) -> dict[str, Any]:
    """Wraps facts stored as one string into a one-element list; decomposition is [] where absent."""
    facts = row.get("facts")
    return {
        **row,
        "facts": [facts] if isinstance(facts, str) else facts,
        "decomposition": row.get("decomposition", []),
    }


def _strategyqa_files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "strategyqa" / f"{split}.json"]


def _strategyqa_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """strategyqa/{train,dev}.json: the authors' 90/10 split (2,061/229) of the official train set."""
    for record in _json_array_records(_strategyqa_files(root, split, options)[0], root):
        yield _strategyqa_item(record, split)


def _strategyqa_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """ChilleD/StrategyQA, whose train/test is a different random split of the official train questions
    than the local one; its test is served as "dev". Do not mix hub and local StrategyQA splits."""
    records = _hub_records("ChilleD/StrategyQA", _STRATEGYQA_HUB_SPLITS[split], adapt=_strategyqa_from_hub)
    for record in records:
        yield _strategyqa_item(record, split)


# ---------------------------------------------------------------------------------------------------------
# GSM8K


def _gsm8k_item(record: _Record, split: str, position: int) -> QAItem:
    """Answer: the number after the final "####" with thousands commas removed; metadata["solution"]: all."""
    solution = record.field("answer", str)
    _, marker, final = solution.rpartition("####")
    if not marker or not final.strip():
        raise record.error("key 'answer' has no final '#### <number>' line")
    return QAItem(
        id=f"gsm8k-{split}-{position}",
        dataset="gsm8k",
        split=split,
        question=record.field("question", str),
        answer=final.strip().replace(",", ""),
        metadata={"solution": solution, **record.provenance},
    )


def _gsm8k_files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "gsm8k" / f"{split}.jsonl"]


def _gsm8k_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """gsm8k/{train,test}.jsonl; ids count rows from 0."""
    for position, record in enumerate(_jsonl_records(_gsm8k_files(root, split, options)[0], root)):
        yield _gsm8k_item(record, split, position)


def _gsm8k_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """openai/gsm8k, config "main"."""
    for position, record in enumerate(_hub_records("openai/gsm8k", split, config="main")):
        yield _gsm8k_item(record, split, position)


# ---------------------------------------------------------------------------------------------------------
# MS MARCO (v2.1) and its generated offline sample


MSMARCO_CLASSES = ("query_type", "answerability")
MSMARCO_QUERY_TYPES = ("description", "numeric", "entity", "location", "person")
_MSMARCO_OPTIONS = {"classify": lambda value: _one_of("classify", value, MSMARCO_CLASSES)}
_MSMARCO_HUB_SPLITS = {"train": "train", "dev": "validation"}


def _msmarco_item(record: _Record, split: str, dataset: str, classify: str) -> QAItem:
    """Context: the query's passages. Supporting facts: the passages marked is_selected; for an answered
    query with none marked, the passage BM25 ranks first for the query and answer (silver). Unanswerable
    queries ("No Answer Present.") have none. The class is the query type (description, numeric,
    entity, location, person) or, with classify "answerability", answerable/unanswerable."""
    texts = record.strings("passages.passage_text")
    selected = record.field("passages.is_selected", list)
    if len(selected) != len(texts) or not all(flag in (0, 1) for flag in selected):
        raise record.error("key 'passages.is_selected' must hold one 0/1 flag per passage")
    if not texts:
        raise record.error("key 'passages.passage_text' is an empty list")
    answers = record.strings("answers")
    answerable = bool(answers) and answers[0] != NO_ANSWER
    support = [i for i, flag in enumerate(selected) if flag]
    facts_source = ANNOTATION
    if answerable and not support:
        support = BM25Index(texts).top(f"{record.field('query', str)} {answers[0]}", 1)
        facts_source = BM25
    if not answerable:
        support = []
    query_type = record.field("query_type", str).lower()
    return QAItem(
        id=f"{dataset}-{record.field('query_id', int)}",
        dataset=dataset,
        split=split,
        question=record.field("query", str),
        answer=answers[0] if answerable else NO_ANSWER,
        context=texts,
        metadata={
            QUESTION_TYPE: query_type
            if classify == "query_type"
            else ("answerable" if answerable else "unanswerable"),
            SUPPORTING_FACTS: support,
            CLASS_SOURCE: ANNOTATION,
            FACTS_SOURCE: facts_source,
            "query_type": query_type,
            "answers": answers,
            "well_formed_answers": record.strings("wellFormedAnswers"),
            "urls": record.strings("passages.url"),
            **record.provenance,
        },
    )


def _msmarco_files(root: Path, split: str, options: Options) -> list[Path]:
    return [root / "msmarco" / f"{split}.jsonl"]


def _msmarco_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """msmarco/<split>.jsonl: rows in the hub's shape (e.g. written by `Dataset.to_json`)."""
    for record in _jsonl_records(_msmarco_files(root, split, options)[0], root):
        yield _msmarco_item(record, split, "msmarco", options["classify"])


def _msmarco_hub(split: str, options: Options, root: Path | None) -> Iterator[QAItem]:
    """microsoft/ms_marco, config v2.1; dev -> validation (the test split has no answers)."""
    for record in _hub_records("microsoft/ms_marco", _MSMARCO_HUB_SPLITS[split], config="v2.1"):
        yield _msmarco_item(record, split, "msmarco", options["classify"])


def _msmarco_sample_local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """Generated rows (kdlib.data.msmarco_sample), converted exactly like hub rows."""
    source = "generated:msmarco-sample"
    for row_number, row in enumerate(sample_rows(options["rows"], seed=options["seed"], split=split), 1):
        record = _Record(row, f"{source}:{split}", row_number, f"{source}:{split} row {row_number}")
        yield _msmarco_item(record, split, "msmarco-sample", options["classify"])


# ---------------------------------------------------------------------------------------------------------
# Options and the registry


def _from_choices(option: str, value: Any, valid: tuple) -> tuple | None:
    """A list option whose entries come from `valid` (no repeats); None keeps the default."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"option {option!r} must be a list of values from {list(valid)}, got {value!r}")
    chosen = tuple(value)
    invalid = [v for v in chosen if type(v) is not type(valid[0]) or v not in valid]
    if not chosen or invalid or len(set(chosen)) < len(chosen):
        raise ValueError(
            f"option {option!r} must be a non-empty list of distinct values from {list(valid)}, got {value!r}"
        )
    return chosen


def _flag(option: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"option {option!r} must be True or False, got {value!r}")
    return value


def _one_of(option: str, value: Any, valid: tuple[str, ...]) -> str:
    if value is None:
        return valid[0]
    if value not in valid:
        raise ValueError(f"option {option!r} must be one of {list(valid)}, got {value!r}")
    return value


def _count(option: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option {option!r} must be a non-negative int, got {value!r}")
    return value


@dataclass(frozen=True)
class _Dataset:
    folder: str
    splits: tuple[str, ...]
    files: Callable[[Path, str, Options], list[Path]]
    local: Callable[[Path, str, Options], Iterator[QAItem]]
    hub: Callable[[str, Options, Path | None], Iterator[QAItem]] | None
    no_hub_reason: str = ""
    refused_splits: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


_DATASETS: dict[str, _Dataset] = {
    "commonsenseqa": _Dataset(
        folder="commonsenseqa",
        splits=("train", "dev"),
        files=_csqa_files,
        local=_csqa_local,
        hub=_csqa_hub,
        refused_splits={
            "test": "the CommonsenseQA test file (test_rand_split_no_answers.jsonl) has no answers; "
            "use 'dev', the usual evaluation split"
        },
    ),
    "openbookqa": _Dataset(
        folder="openbookqa",
        splits=("train", "dev", "test"),
        files=_obqa_files,
        local=_obqa_local,
        hub=_obqa_hub,
        options={
            "with_facts": lambda value: _flag("with_facts", value, default=True),
            "distractors": lambda value: _count("distractors", value, default=4),
        },
    ),
    "babi": _Dataset(
        folder="babi",
        splits=("train", "test"),
        files=_babi_files,
        local=_babi_local,
        hub=None,
        no_hub_reason="bAbI is on the hub only as facebook/babi_qa, a loading-script dataset that "
        "datasets>=4 cannot run; put tasks_1-20_v1-2/en under <data_dir>/babi/ instead",
        options={
            "tasks": lambda value: _from_choices("tasks", value, tuple(BABI_TASKS)) or tuple(BABI_TASKS)
        },
    ),
    "cotempqa": _Dataset(
        folder="cotempqa",
        splits=("test",),
        files=_cotempqa_files,
        local=_cotempqa_local,
        hub=_cotempqa_hub,
        options={"subsets": lambda value: _from_choices("subsets", value, COTEMPQA_SUBSETS)},
    ),
    "strategyqa": _Dataset(
        folder="strategyqa",
        splits=("train", "dev"),
        files=_strategyqa_files,
        local=_strategyqa_local,
        hub=_strategyqa_hub,
    ),
    "gsm8k": _Dataset(
        folder="gsm8k",
        splits=("train", "test"),
        files=_gsm8k_files,
        local=_gsm8k_local,
        hub=_gsm8k_hub,
    ),
    "msmarco": _Dataset(
        folder="msmarco",
        splits=("train", "dev"),
        files=_msmarco_files,
        local=_msmarco_local,
        hub=_msmarco_hub,
        refused_splits={"test": "the MS MARCO v2.1 test split has no answers; use 'dev'"},
        options=_MSMARCO_OPTIONS,
    ),
    "msmarco-sample": _Dataset(
        folder="",
        splits=("train", "dev"),
        files=lambda root, split, options: [],
        local=_msmarco_sample_local,
        hub=None,
        no_hub_reason="msmarco-sample is generated offline; use dataset 'msmarco' for the hub",
        options={
            **_MSMARCO_OPTIONS,
            "rows": lambda value: _count("rows", value, default=200),
            "seed": lambda value: _count("seed", value, default=0),
        },
    ),
}

DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)


def _dataset(name: str) -> _Dataset:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def check_split(name: str, split: str) -> None:
    """Raise ValueError unless `split` is a split of dataset `name` with answers."""
    dataset = _dataset(name)
    if split in dataset.refused_splits:
        raise ValueError(f"split {split!r} of {name} is not supported: {dataset.refused_splits[split]}")
    if split not in dataset.splits:
        raise ValueError(f"unknown split {split!r} for {name}; valid splits: {', '.join(dataset.splits)}")


def check_options(name: str, options: Mapping[str, Any]) -> Options:
    """Every loader option of dataset `name`, checked: the given ones, and defaults for the rest."""
    dataset = _dataset(name)
    unknown = sorted(set(options) - set(dataset.options))
    if unknown:
        valid = ", ".join(dataset.options) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {name}; valid options: {valid}")
    return {option: check(options.get(option)) for option, check in dataset.options.items()}


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")


def load_items(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    limit: int | None = None,
    **options: Any,
) -> list[QAItem]:
    """The items of one dataset split, in file order, keeping the first `limit` if given.

    Splits: commonsenseqa train/dev ("test" has no answers and is refused); openbookqa train/dev/test;
    babi train/test; cotempqa test; strategyqa train/dev; gsm8k train/test; msmarco and msmarco-sample
    train/dev. Options: openbookqa with_facts (default True) and distractors (open-book facts added
    by BM25, default 4); babi tasks (default 1..20); cotempqa subsets (default: those present);
    msmarco classify (query_type or answerability); msmarco-sample also rows (200) and seed (0).
    source: "local" reads `resolve_data_dir(data_dir)`, "hub" the Hugging Face hub, "auto" local files
    when present and the hub otherwise.
    """
    dataset = _dataset(name)
    check_split(name, split)
    chosen = check_options(name, options)
    check_source(source)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    try:
        root: Path | None = resolve_data_dir(data_dir)
        problem = None
    except FileNotFoundError as error:
        root, problem = None, str(error)
    if source == "hub":
        if dataset.hub is None:
            raise ValueError(f"source='hub' is not available for {name}: {dataset.no_hub_reason}")
        items = dataset.hub(split, chosen, root)
    else:
        if not dataset.folder:  # generated: no files
            problem = None
        elif root is not None:
            missing = [path for path in dataset.files(root, split, chosen) if not path.is_file()]
            problem = f"{name} file {missing[0]} does not exist" if missing else None
        if problem is None:
            items = dataset.local(root, split, chosen)
        elif source == "auto" and dataset.hub is not None:
            logger.warning("%s; loading %s %s from the Hugging Face hub instead", problem, name, split)
            items = dataset.hub(split, chosen, root)
        else:
            raise FileNotFoundError(
                f"{problem}; pass data_dir=... or set ${DATA_DIR_ENV} to the data folder that holds "
                f"{dataset.folder}/"
            )
    return list(itertools.islice(items, limit))
