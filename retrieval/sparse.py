"""BM25 over chunk texts with bm25s: English stopwords and Snowball stemming."""

from __future__ import annotations

import logging
import pickle
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from citeloop.modelpkg import ModelPackage

# Webster's 2nd International word list (234k words) as the english-words package ships it: pinned and
# checked before it is unpickled; the package's code is never imported.
ENGLISH_WORDS = ModelPackage(
    name="english_words",
    requirement="english-words==2.0.2",
    folder="data",
    checksums={"web2_alpha_lower.pickle": "1ce2ffb422a00239aa28a8923ada777ce1809c2b60c82cb1b9b7cf049039c264"},
)

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


@lru_cache(maxsize=1)
def english_stems() -> frozenset[str]:
    """The stems (`stem`) of an English dictionary's words: a word whose stem is here is an English word,
    in any inflection ("theorized", "calories"), rather than a name."""
    (file,) = ENGLISH_WORDS.checksums
    with (ENGLISH_WORDS.verified_path() / file).open("rb") as f:
        words = pickle.load(f)
    return frozenset(_stemmer().stemWords(sorted(words)))


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

    def chunk_counts(self, words: list[str]) -> dict[str, int]:
        """How many indexed chunks contain each word (the most of any of its BM25 terms; 0: none); words that
        are only stopwords are left out."""
        vocab, indptr = self.model.vocab_dict, self.model.scores["indptr"]

        def count(term: str) -> int:
            column = vocab.get(term)
            return int(indptr[column + 1] - indptr[column]) if column is not None and column + 1 < len(indptr) else 0

        return {w: max(count(t) for t in terms) for w, terms in zip(words, tokenize(words)) if terms}

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
