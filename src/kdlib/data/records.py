"""Shared pieces of the dataset readers: raw rows with their origin, read from JSON Lines, a JSON list or the
Hugging Face hub; the multiple-choice columns; and the checks of loader options.

A `Record` keeps the file and line (or hub row) it came from, so that every error names the file, the line
and the offending key, and every item's metadata holds `source_file` and `source_line`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlib.io import read_utf8, read_utf8_lines

Options = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Raw rows and where they came from


@dataclass(frozen=True)
class Record:
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


def _local_record(data: Any, path: Path, root: Path, line: int) -> Record:
    location = f"{path} line {line}"
    if not isinstance(data, Mapping):
        raise ValueError(f"{location}: expected a JSON object, got {type(data).__name__}")
    return Record(data, path.relative_to(root).as_posix(), line, location)


def jsonl_records(path: Path, root: Path) -> Iterator[Record]:
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


def json_array_records(path: Path, root: Path) -> Iterator[Record]:
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


def hub_records(
    dataset_id: str,
    split: str,
    *,
    config: str | None = None,
    data_file: str | None = None,
    adapt: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
) -> Iterator[Record]:
    """Rows of a Hugging Face hub dataset, reshaped by `adapt` into the local files' row shape."""
    import datasets  # slow to import: only when the hub is read

    if data_file is None:
        rows = datasets.load_dataset(dataset_id, config, split=split)
        source = f"hub:{dataset_id}" + (f"[{config}]" if config else "") + f":{split}"
    else:
        rows = datasets.load_dataset(dataset_id, data_files={split: data_file}, split=split)
        source = f"hub:{dataset_id}/{data_file}"
    for row_number, row in enumerate(rows, 1):
        yield Record(adapt(row), source, row_number, f"{source} row {row_number}")


# ---------------------------------------------------------------------------------------------------------
# Multiple choice (CommonsenseQA, OpenBookQA)


def choices_and_answer(record: Record) -> tuple[list[str], list[str], str]:
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


def choices_from_columns(choices: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """Hub rows store choices as {"label": [...], "text": [...]}; local rows as a list of dicts."""
    return [
        {"label": label, "text": text} for label, text in zip(choices["label"], choices["text"], strict=True)
    ]


# ---------------------------------------------------------------------------------------------------------
# Loader options


def subset_option(option: str, value: Any, valid: tuple) -> tuple | None:
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


def flag_option(option: str, value: Any, default: bool) -> bool:
    """A True/False option; None keeps `default`."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"option {option!r} must be True or False, got {value!r}")
    return value


def choice_option(option: str, value: Any, valid: tuple[str, ...]) -> str:
    """One of `valid`; None keeps the first."""
    if value is None:
        return valid[0]
    if value not in valid:
        raise ValueError(f"option {option!r} must be one of {list(valid)}, got {value!r}")
    return value


def count_option(option: str, value: Any, default: int) -> int:
    """A non-negative int (not a bool); None keeps `default`."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"option {option!r} must be a non-negative int, got {value!r}")
    return value
