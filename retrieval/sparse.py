"""BM25 over chunk texts with bm25s: English stopwords and Snowball stemming."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

# bm25s logs every index build at DEBUG/INFO; keep the CLI output to what the user asked for.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def stem(word: str) -> str:
    return _stemmer().stemWord(word)


def tokenize(texts: list[str]) -> list[list[str]]:
    """The one tokeniser for indexing and querying (lower-case words, stopwords out, stemmed)."""
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


class BM25Index:
    def __init__(self, model: bm25s.BM25):
        self.model = model

    @classmethod
    def build(cls, texts: list[str], method: str = "lucene") -> BM25Index | None:
        """None when no text has an indexable word (only stopwords or digits): bm25s cannot index an empty
        vocabulary, and such a collection is served by dense retrieval alone."""
        tokens = tokenize(texts)
        if not any(tokens):
            return None
        model = bm25s.BM25(method=method)
        model.index(tokens, show_progress=False)
        return cls(model)

    def save(self, directory: Path) -> None:
        self.model.save(str(directory))

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        return cls(bm25s.BM25.load(str(directory), mmap=True))

    def unseen(self, words: list[str]) -> list[str]:
        """The words no indexed chunk contains (none of their BM25 terms is in the vocabulary); words that are
        only stopwords are never unseen."""
        vocab = self.model.vocab_dict
        return [w for w, terms in zip(words, tokenize(words)) if terms and not any(t in vocab for t in terms)]

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and scores of the top-k rows with a positive score, best first."""
        vocab = self.model.vocab_dict
        tokens = [t for t in tokenize([query])[0] if t in vocab]
        if not tokens:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores = self.model.get_scores(tokens, weight_mask=None if mask is None else mask.astype(np.float32))
        hits = np.flatnonzero(scores > 0)
        if hits.size > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.argsort(-scores[hits], kind="stable")]
        return order.astype(np.int64), scores[order].astype(np.float32)
