"""Offline default data: bAbI-style open-book stories with known gold supporting facts and question type.

Each story is a short sequence of movement and pick-up events. Each item asks one question of one of
four types, and records the indices of exactly the facts that support its answer. Everything is
deterministic from the seed.
"""

from __future__ import annotations

import random

from kdlib.data.schema import ANNOTATION, CLASS_SOURCE, FACTS_SOURCE, QUESTION_TYPE, SUPPORTING_FACTS, QAItem

PEOPLE = ("Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma")
PLACES = ("kitchen", "garden", "hallway", "bathroom", "office", "bedroom", "cellar", "park")
OBJECTS = ("apple", "football", "milk", "key", "book", "box")
MOVE_VERBS = ("went to", "moved to", "journeyed to", "travelled to")
TAKE_VERBS = ("picked up", "grabbed", "took", "got")

QUESTION_TYPES = ("where_person", "where_object", "yes_no", "counting")
"""where_person: one supporting fact (the person's last move).
where_object: two (who took the object, and that person's last move).
yes_no: one (the person's last move), answer yes or no.
counting: every pick-up by the person (possibly none), answer a number word."""

NUMBER_WORDS = ("none", "one", "two", "three", "four")


def _story(rng: random.Random, n_events: int) -> tuple[list[str], list[tuple]]:
    """Sentences plus the events they state: ("move", person, place) or ("take", person, object)."""
    people = rng.sample(PEOPLE, 3)
    places = rng.sample(PLACES, 4)
    objects = rng.sample(OBJECTS, 3)
    events: list[tuple] = []
    taken: set[str] = set()
    located: set[str] = set()
    while len(events) < n_events:
        person = rng.choice(people)
        free = [o for o in objects if o not in taken]
        if person in located and free and rng.random() < 0.4:
            obj = rng.choice(free)
            taken.add(obj)
            events.append(("take", person, obj))
        else:
            events.append(("move", person, rng.choice(places)))
            located.add(person)
    verbs = {"move": MOVE_VERBS, "take": TAKE_VERBS}
    sentences = [f"{who} {rng.choice(verbs[kind])} the {what}." for kind, who, what in events]
    return sentences, events


def _last_move(events: list[tuple], person: str) -> int | None:
    moves = [i for i, (kind, who, _) in enumerate(events) if kind == "move" and who == person]
    return moves[-1] if moves else None


def _question(
    rng: random.Random, qtype: str, events: list[tuple]
) -> tuple[str, str, list[int], list[str]] | None:
    """(question, answer, supporting fact indices, answer choices), or None if the story cannot ask it."""
    people = sorted({who for _, who, _ in events})
    if qtype in ("where_person", "yes_no"):
        located = [p for p in people if _last_move(events, p) is not None]
        if not located:
            return None
        person = rng.choice(located)
        fact = _last_move(events, person)
        place = events[fact][2]
        if qtype == "where_person":
            return f"Where is {person}?", place, [fact], sorted(PLACES)
        asked = place if rng.random() < 0.5 else rng.choice([p for p in PLACES if p != place])
        return f"Is {person} in the {asked}?", "yes" if asked == place else "no", [fact], ["yes", "no"]
    if qtype == "where_object":
        takes = [i for i, (kind, _, _) in enumerate(events) if kind == "take"]
        if not takes:
            return None
        take = rng.choice(takes)
        _, holder, obj = events[take]
        move = _last_move(events, holder)
        if move is None:
            return None
        return f"Where is the {obj}?", events[move][2], sorted([take, move]), sorted(PLACES)
    if qtype == "counting":
        person = rng.choice(people)
        takes = [i for i, (kind, who, _) in enumerate(events) if kind == "take" and who == person]
        return f"How many objects is {person} carrying?", NUMBER_WORDS[len(takes)], takes, list(NUMBER_WORDS)
    raise ValueError(f"unknown question type {qtype!r}; choose from {QUESTION_TYPES}")


def generate_items(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
    min_events: int = 4,
    max_events: int = 8,
) -> list[QAItem]:
    """`n` items, cycling through `question_types` so that each type is equally frequent.

    Splits draw from disjoint seeded streams, so train and test never share a story.
    """
    unknown = [q for q in question_types if q not in QUESTION_TYPES]
    if unknown:
        raise ValueError(f"unknown question type(s) {unknown}; choose from {QUESTION_TYPES}")
    if not 1 <= min_events <= max_events:
        raise ValueError(f"need 1 <= min_events <= max_events, got {min_events}, {max_events}")
    rng = random.Random(f"kdlib-generated/{seed}/{split}")
    items: list[QAItem] = []
    while len(items) < n:
        qtype = question_types[len(items) % len(question_types)]
        context, events = _story(rng, rng.randint(min_events, max_events))
        asked = _question(rng, qtype, events)
        if asked is None:
            continue
        question, answer, support, choices = asked
        items.append(
            QAItem(
                id=f"gen-{split}-{seed}-{len(items):05d}",
                dataset="generated",
                split=split,
                question=question,
                answer=answer,
                context=context,
                choices=choices,
                metadata={
                    QUESTION_TYPE: qtype,
                    SUPPORTING_FACTS: support,
                    CLASS_SOURCE: ANNOTATION,
                    FACTS_SOURCE: ANNOTATION,
                },
            )
        )
    return items
