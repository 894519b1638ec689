"""Immutable on-disk index builds of a collection: dense FAISS + BM25 + the row -> chunk map.

A build is written into a fresh directory and only then registered as active in the database, so a
crash at any point leaves the previous build and the database consistent.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from citeloop.config import Settings
from citeloop.files import staged
from retrieval.dense import DenseIndex, build_dense_index
from retrieval.sparse import BM25Index

DENSE_FILE = "dense.faiss"
BM25_DIR = "bm25"
ROWS_FILE = "chunk_ids.json"


@dataclass
class IndexBuildFiles:
    build_id: str
    path: Path
    dense_kind: str
    n_chunks: int


def collection_index_dir(settings: Settings, collection_id: int) -> Path:
    return settings.index_dir / str(collection_id)


def write_build(
    settings: Settings,
    collection_id: int,
    chunk_ids: list[str],
    vectors: np.ndarray,
    bm25_texts: list[str],
) -> IndexBuildFiles:
    """Write a complete build next to the live ones; the directory appears under its final name only when complete."""
    build_id = uuid.uuid4().hex
    final = collection_index_dir(settings, collection_id) / build_id
    with staged(final, replace=False) as staging:
        staging.mkdir()
        dense, kind = build_dense_index(vectors, settings.hnsw_min_chunks, settings.hnsw_m)
        DenseIndex(dense).save(staging / DENSE_FILE)
        bm25 = BM25Index.build(bm25_texts, settings.bm25_method) if bm25_texts else None
        if bm25 is not None:
            bm25.save(staging / BM25_DIR)
        (staging / ROWS_FILE).write_text(json.dumps(chunk_ids))
    return IndexBuildFiles(build_id, final, kind, len(chunk_ids))


def prune_builds(settings: Settings, collection_id: int, keep: set[str]) -> None:
    """Remove build directories not in `keep`, including staging leftovers of a crashed ingest."""
    parent = collection_index_dir(settings, collection_id)
    if not parent.is_dir():
        return
    for child in parent.iterdir():
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


@dataclass
class LoadedIndex:
    build_id: str
    chunk_ids: list[str]
    dense: DenseIndex
    bm25: BM25Index | None

    @classmethod
    def load(cls, build_id: str, path: Path, settings: Settings) -> LoadedIndex:
        path = Path(path)
        chunk_ids = json.loads((path / ROWS_FILE).read_text())
        bm25 = BM25Index.load(path / BM25_DIR) if (path / BM25_DIR).exists() else None
        return cls(build_id, chunk_ids, DenseIndex.load(path / DENSE_FILE, settings.hnsw_ef_search), bm25)
