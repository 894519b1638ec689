"""First-stage retrieval of a collection: dense (FAISS), sparse (BM25) and their fusion.

Every result carries its chunk, its document, and the score and rank it got at each stage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select

from citeloop.config import Settings, get_settings
from citeloop.db import Chunk, Document, IndexBuild, get_collection, session_scope
from retrieval.embedder import load_embedder
from retrieval.fusion import minmax_fusion, reciprocal_rank_fusion
from retrieval.index import LoadedIndex

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class StageScore:
    score: float
    rank: int  # 1-based rank within that stage's list


@dataclass(frozen=True)
class StoredChunk:
    """A chunk of the loaded index build, with its document's id, title and metadata."""

    chunk_id: str
    doc_id: str
    title: str
    text: str
    char_start: int
    char_end: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class RetrievedChunk(StoredChunk):
    """A chunk as a search returned it."""

    score: float = 0.0  # of the final stage
    rank: int = 0
    stages: dict[str, StageScore] = field(default_factory=dict)


def _matches(metadata: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    """Equality on each key; a list value means any of its members."""
    for key, wanted in filters.items():
        value = metadata.get(key)
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


# A dotted name: module.function, Class.method (each part two characters or more, so "e.g." is none).
DOTTED_NAME = re.compile(r"\b[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+")


class CollectionRetriever:
    """Searches the active index build of one collection; reloads when a new build becomes active."""

    def __init__(self, collection: str, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.collection = collection
        self.embedder = load_embedder(self.settings)
        # Index and rows are swapped together in one assignment, so a concurrent search sees one build.
        self._state: tuple[LoadedIndex, list[StoredChunk]] | None = None
        self._lowered: tuple[str, list[str]] | None = None  # (build id, its chunk texts lower-cased), built on first need
        self.refresh()

    @property
    def build_id(self) -> str | None:
        return self._state[0].build_id if self._state else None

    def refresh(self) -> None:
        """Load the active build if it is not the one in memory (a cheap query when nothing changed)."""
        with session_scope(self.settings) as session:
            collection = get_collection(session, self.collection)
            build = session.scalar(
                select(IndexBuild).where(IndexBuild.collection_id == collection.id, IndexBuild.status == "active")
            )
            if build is None:
                self._state = None
                return
            if self.build_id == build.id:
                return
            index = LoadedIndex.load(build.id, Path(build.path), self.settings)
            found = {
                r.id: r
                for r in session.execute(
                    select(Chunk.id, Chunk.text, Chunk.char_start, Chunk.char_end, Document.doc_id, Document.title, Document.meta)
                    .join(Document)
                    .where(Document.collection_id == collection.id)
                )
            }
        rows = [
            StoredChunk(cid, r.doc_id, r.title, r.text, r.char_start, r.char_end, r.meta or {})
            for cid in index.chunk_ids
            if (r := found.get(cid)) is not None
        ]
        if len(rows) != len(index.chunk_ids):
            raise RuntimeError(f"index build {build.id} of '{self.collection}' names chunks missing from the database")
        self._state = (index, rows)

    def chunks(self) -> list[StoredChunk]:
        """Every chunk of the loaded build, in index row order."""
        return list(self._state[1]) if self._state else []

    def vectors(self) -> np.ndarray:
        """The dense vectors of the loaded build, in the same row order as `chunks()`."""
        return self._state[0].dense.vectors() if self._state else np.zeros((0, self.embedder.dim), dtype=np.float32)

    def term_counts(self, text: str) -> dict[str, int]:
        """How many chunks of the loaded build contain each term of `text`: its words (by BM25 term; none
        without a BM25 index; stopwords left out), then its dotted names ("typing.override"), counted by their
        last two parts (documents write "Path.walk" as often as "pathlib.Path.walk")."""
        if self._state is None:
            return {}
        index, rows = self._state
        words = list(dict.fromkeys(re.findall(r"\w+", text)))
        counts = index.bm25.chunk_counts(words) if index.bm25 is not None else {}
        names = list(dict.fromkeys(DOTTED_NAME.findall(text)))
        if names and (self._lowered is None or self._lowered[0] != index.build_id):
            self._lowered = (index.build_id, [r.text.lower() for r in rows])
        for name in names:
            tail = ".".join(name.lower().split(".")[-2:])
            counts[name] = sum(tail in chunk for chunk in self._lowered[1])
        return counts

    def __len__(self) -> int:
        return len(self._state[1]) if self._state else 0

    def search(
        self,
        query: str,
        k: int = 10,
        mode: Mode = "hybrid",
        candidates: int | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[RetrievedChunk]:
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode '{mode}'; use one of {', '.join(MODES)}")
        if self._state is None or not query.strip():
            return []
        index, rows = self._state
        depth = max(k, candidates or self.settings.candidates)
        allowed = None
        if filters:
            allowed = np.array([i for i, r in enumerate(rows) if _matches(r.metadata, filters)], dtype=np.int64)
            if allowed.size == 0:
                return []
        stage_lists: dict[str, list[tuple[int, float]]] = {}
        if mode in ("dense", "hybrid"):
            found, scores = index.dense.search(self.embedder.embed_query(query), depth, allowed)
            stage_lists["dense"] = list(zip(found.tolist(), scores.tolist()))
        if mode in ("bm25", "hybrid") and index.bm25 is not None:
            mask = None
            if allowed is not None:
                mask = np.zeros(len(rows), dtype=bool)
                mask[allowed] = True
            found, scores = index.bm25.search(query, depth, mask)
            stage_lists["bm25"] = list(zip(found.tolist(), scores.tolist()))

        stages: dict[int, dict[str, StageScore]] = {}
        for name, ranking in stage_lists.items():
            for rank, (row, score) in enumerate(ranking, start=1):
                stages.setdefault(row, {})[name] = StageScore(float(score), rank)
        if mode == "hybrid":
            final = self._fuse(stage_lists)
            for rank, (row, score) in enumerate(final, start=1):
                stages[row]["hybrid"] = StageScore(score, rank)
        else:
            final = stage_lists.get(mode, [])
        results = []
        for rank, (row, score) in enumerate(final[:k], start=1):
            r = rows[row]
            results.append(
                RetrievedChunk(r.chunk_id, r.doc_id, r.title, r.text, r.char_start, r.char_end, r.metadata, float(score), rank, stages[row])
            )
        return results

    def _fuse(self, stage_lists: dict[str, list[tuple[int, float]]]) -> list[tuple[int, float]]:
        weights = {"dense": self.settings.dense_weight, "bm25": self.settings.bm25_weight}
        if self.settings.fusion == "rrf":
            return reciprocal_rank_fusion(stage_lists, weights, self.settings.rrf_k)
        return minmax_fusion(stage_lists, weights)
