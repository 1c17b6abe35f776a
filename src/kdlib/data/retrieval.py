"""Lexical retrieval (BM25 through bm25s, Snowball stemming through PyStemmer) where no gold annotation
exists.

Used to pick OpenBookQA's distractor facts from the open book and a silver supporting fact or passage
when a dataset gives none. Ties are broken by corpus position, so results are deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer


class BM25Index:
    """A BM25 index over `corpus` (lower-cased, stemmed word tokens; English stopwords removed)."""

    def __init__(self, corpus: Sequence[str]):
        if not corpus:
            raise ValueError("BM25Index needs a non-empty corpus")
        self.corpus = list(corpus)
        self._retriever = bm25s.BM25()
        self._retriever.index(_tokens(self.corpus), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query`: shape (len(corpus),); 0 where no word is shared."""
        words = _tokens([query])[0]
        if not words:
            return np.zeros(len(self.corpus), dtype=np.float32)
        return np.asarray(self._retriever.get_scores(words))

    def top(self, query: str, k: int, exclude: Sequence[int] = ()) -> list[int]:
        """Positions of the `k` best-scoring documents that share a word with `query`, best first."""
        scores = self.scores(query)
        scores[list(exclude)] = 0.0
        order = np.lexsort((np.arange(len(scores)), -scores))
        return [int(i) for i in order[:k] if scores[i] > 0]


_STEMMER = Stemmer.Stemmer("english")
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at INFO


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=_STEMMER.stemWords, return_ids=False, show_progress=False
    )
