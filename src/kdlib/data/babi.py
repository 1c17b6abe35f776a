"""bAbI tasks 1-20 (English, 1k): <data_dir>/babi/tasks_1-20_v1-2/en/qa<N>_<name>_<split>.txt. Not read
from the hub (facebook/babi_qa is a loading-script dataset).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from kdlib.data.records import Options
from kdlib.data.schema import ANNOTATION, CLASS_SOURCE, FACTS_SOURCE, QUESTION_TYPE, SUPPORTING_FACTS, QAItem
from kdlib.io import read_utf8_lines

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
_DIR = Path("babi", "tasks_1-20_v1-2", "en")
_LINE = re.compile(r"(\d+) (\S.*)")
_SUPPORT = re.compile(r"\d+(?: \d+)*")


def _file(root: Path, task: int, split: str) -> Path:
    return root / _DIR / f"qa{task}_{BABI_TASKS[task]}_{split}.txt"


def _items(path: Path, root: Path, task: int, split: str) -> Iterator[QAItem]:
    """One item per question line. Its context is the story's statements so far (question lines excluded);
    supporting_facts map the bAbI line ids, in the file's order, to positions in that context."""
    story: list[str] = []
    position_of: dict[int, int] = {}
    previous_id = 0
    question_count = 0
    for line_number, line in enumerate(read_utf8_lines(path), 1):
        where = f"{path} line {line_number}"
        match = _LINE.fullmatch(line)
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
        if not _SUPPORT.fullmatch(support):
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


def files(root: Path, split: str, options: Options) -> list[Path]:
    return [_file(root, task, split) for task in options["tasks"]]


def local(root: Path, split: str, options: Options) -> Iterator[QAItem]:
    """babi/tasks_1-20_v1-2/en/qa<N>_<name>_<split>.txt for each task, in the order given."""
    for task in options["tasks"]:
        yield from _items(_file(root, task, split), root, task, split)
