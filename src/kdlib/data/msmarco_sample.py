"""A small generated stand-in for MS MARCO v2.1, for offline runs: rows in the hub's exact row shape.

The real dataset (microsoft/ms_marco, 1M queries) needs the network; these rows go through the same
converter as hub rows, so the decomposition (query type, selected passages) is exercised offline.
Each row has the answer passage (is_selected 1), a near-miss passage about the same subject without
the answer, and 3-5 passages of other queries. About a fifth are unanswerable: the answer passage is
left out and the answer is "No Answer Present.". Train and dev draw from disjoint query sets. It is a
test of the machinery, not a benchmark: there are 30 queries in all.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

NO_ANSWER = "No Answer Present."

# query type -> (query, answer, answer passage, near-miss passage about the same subject)
_QUERIES: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "NUMERIC": (
        (
            "how many ounces are in a pound",
            "16",
            "A pound is a unit of mass equal to 16 ounces in the avoirdupois system.",
            "The pound is used in the United States to weigh groceries and people.",
        ),
        (
            "how many bones are in the adult human body",
            "206",
            "The adult human skeleton is made up of 206 bones.",
            "Bones in the human body are living tissue that is rebuilt throughout life.",
        ),
        (
            "how many feet are in a mile",
            "5,280",
            "One statute mile is exactly 5,280 feet long.",
            "The mile is a unit of length used mostly in the United States and the United Kingdom.",
        ),
        (
            "how many days are in a leap year",
            "366",
            "A leap year has 366 days, one more than a common year.",
            "Leap years keep the calendar year in step with the astronomical year.",
        ),
        (
            "how many players are on a soccer team",
            "11",
            "Each soccer team fields 11 players, one of whom is the goalkeeper.",
            "Soccer is played on a rectangular grass or artificial turf field.",
        ),
        (
            "how many grams are in a kilogram",
            "1,000",
            "A kilogram is equal to 1,000 grams.",
            "The kilogram is the base unit of mass in the International System of Units.",
        ),
    ),
    "DESCRIPTION": (
        (
            "what is photosynthesis",
            "the process by which plants use sunlight to make food from carbon dioxide and water",
            "Photosynthesis is the process by which plants use sunlight to make food from carbon dioxide "
            "and water.",
            "Photosynthesis takes place mostly in the leaves of green plants.",
        ),
        (
            "what is a tariff",
            "a tax on imported goods",
            "A tariff is a tax on imported goods, paid to the government of the importing country.",
            "Tariffs have been debated by economists for centuries.",
        ),
        (
            "what is erosion",
            "the wearing away of land by water, wind or ice",
            "Erosion is the wearing away of land by water, wind or ice.",
            "Erosion shaped many of the canyons in the American Southwest.",
        ),
        (
            "what is a sonnet",
            "a poem of fourteen lines with a fixed rhyme scheme",
            "A sonnet is a poem of fourteen lines with a fixed rhyme scheme.",
            "Sonnets were popular in Elizabethan England.",
        ),
        (
            "what is inflation",
            "a general rise in prices over time",
            "Inflation is a general rise in prices over time, which lowers the value of money.",
            "Central banks publish inflation figures every month.",
        ),
        (
            "what is a glacier",
            "a large mass of ice that moves slowly over land",
            "A glacier is a large mass of ice that moves slowly over land.",
            "Glaciers are found in Greenland, Antarctica and high mountain ranges.",
        ),
    ),
    "LOCATION": (
        (
            "where is mount kilimanjaro",
            "Tanzania",
            "Mount Kilimanjaro is a dormant volcano in Tanzania.",
            "Mount Kilimanjaro is climbed by tens of thousands of people every year.",
        ),
        (
            "where is the great barrier reef",
            "off the coast of Queensland, Australia",
            "The Great Barrier Reef lies off the coast of Queensland, Australia.",
            "The Great Barrier Reef is the largest coral reef system in the world.",
        ),
        (
            "where is machu picchu",
            "Peru",
            "Machu Picchu is an Inca citadel in the Andes of Peru.",
            "Machu Picchu was built in the fifteenth century.",
        ),
        (
            "where is the atacama desert",
            "northern Chile",
            "The Atacama Desert is a plateau in northern Chile.",
            "The Atacama Desert is one of the driest places on Earth.",
        ),
        (
            "where is the hague",
            "the Netherlands",
            "The Hague is a city on the North Sea coast of the Netherlands.",
            "The Hague is home to the International Court of Justice.",
        ),
        (
            "where is lake titicaca",
            "on the border of Peru and Bolivia",
            "Lake Titicaca lies on the border of Peru and Bolivia.",
            "Lake Titicaca is one of the highest navigable lakes in the world.",
        ),
    ),
    "PERSON": (
        (
            "who wrote pride and prejudice",
            "Jane Austen",
            "Pride and Prejudice is a novel by Jane Austen, published in 1813.",
            "Pride and Prejudice has been adapted for film and television many times.",
        ),
        (
            "who discovered penicillin",
            "Alexander Fleming",
            "Penicillin was discovered by Alexander Fleming in 1928.",
            "Penicillin was the first widely used antibiotic.",
        ),
        (
            "who painted the starry night",
            "Vincent van Gogh",
            "The Starry Night is an oil painting by Vincent van Gogh from 1889.",
            "The Starry Night hangs in the Museum of Modern Art in New York.",
        ),
        (
            "who invented the telephone",
            "Alexander Graham Bell",
            "Alexander Graham Bell was granted the first patent for the telephone in 1876.",
            "The telephone changed how businesses and families communicated.",
        ),
        (
            "who composed the four seasons",
            "Antonio Vivaldi",
            "The Four Seasons is a set of violin concertos composed by Antonio Vivaldi.",
            "The Four Seasons is among the most recorded pieces of Baroque music.",
        ),
        (
            "who developed the theory of relativity",
            "Albert Einstein",
            "The theory of relativity was developed by Albert Einstein.",
            "The theory of relativity changed ideas about space and time.",
        ),
    ),
    "ENTITY": (
        (
            "what gas do plants absorb from the air",
            "carbon dioxide",
            "Plants absorb carbon dioxide from the air and release oxygen.",
            "Plants also need water and minerals from the soil.",
        ),
        (
            "what is the largest planet in the solar system",
            "Jupiter",
            "Jupiter is the largest planet in the solar system.",
            "The solar system has eight planets that orbit the Sun.",
        ),
        (
            "what metal is liquid at room temperature",
            "mercury",
            "Mercury is the only metal that is liquid at room temperature.",
            "Most metals are solid at room temperature and conduct electricity.",
        ),
        (
            "what organ pumps blood through the body",
            "the heart",
            "The heart is the organ that pumps blood through the body.",
            "Blood carries oxygen and nutrients to the body's cells.",
        ),
        (
            "what language is spoken in brazil",
            "Portuguese",
            "The official language of Brazil is Portuguese.",
            "Brazil is the largest country in South America.",
        ),
        (
            "what currency is used in japan",
            "the yen",
            "The currency of Japan is the yen.",
            "Japan has one of the largest economies in the world.",
        ),
    ),
}
SPLITS = ("train", "dev")


def _entries(split: str) -> list[tuple[str, tuple[str, str, str, str]]]:
    """(query type, entry) pairs of one split: every third query of each type is dev, the rest train."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for msmarco-sample; valid splits: {', '.join(SPLITS)}")
    return [
        (query_type, entry)
        for query_type, entries in _QUERIES.items()
        for i, entry in enumerate(entries)
        if (i % 3 == 0) == (split == "dev")
    ]


def _url(passage: str) -> str:
    return f"https://example.org/msmarco-sample/{hashlib.sha1(passage.encode()).hexdigest()[:12]}"


def sample_rows(n: int, *, seed: int, split: str) -> list[dict[str, Any]]:
    """`n` rows shaped like microsoft/ms_marco v2.1 rows, deterministic from the seed and split."""
    rng = random.Random(f"kdlib-msmarco-sample/{seed}/{split}")
    entries = _entries(split)
    every_passage = [passage for entries_of in _QUERIES.values() for _, _, passage, _ in entries_of]
    rows = []
    for row_number in range(n):
        query_type, (query, answer, passage, near_miss) = entries[row_number % len(entries)]
        answerable = rng.random() >= 0.2
        others = rng.sample([p for p in every_passage if p != passage], rng.randint(3, 5))
        texts = [passage, near_miss, *others] if answerable else [near_miss, *others]
        rng.shuffle(texts)
        rows.append(
            {
                "answers": [answer] if answerable else [NO_ANSWER],
                "passages": {
                    "is_selected": [int(text == passage) for text in texts],
                    "passage_text": texts,
                    "url": [_url(text) for text in texts],
                },
                "query": query,
                "query_id": 10_000 * SPLITS.index(split) + row_number,
                "query_type": query_type,
                "wellFormedAnswers": [],
            }
        )
    return rows
