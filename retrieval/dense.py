"""FAISS inner-product search over L2-normalised embeddings (cosine similarity)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


def build_dense_index(vectors: np.ndarray, hnsw_min_chunks: int, hnsw_m: int) -> tuple[faiss.Index, str]:
    """Exact flat search for small collections; HNSW once a flat scan gets slow."""
    dim = vectors.shape[1]
    if len(vectors) >= hnsw_min_chunks:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        kind = "hnsw"
    else:
        index = faiss.IndexFlatIP(dim)
        kind = "flat"
    if len(vectors):
        index.add(vectors)
    return index, kind


def gpu_count() -> int:
    """GPUs FAISS can use: > 0 only with the `[gpu]` extra (faiss-gpu) on a CUDA machine."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class DenseIndex:
    def __init__(self, index: faiss.Index, ef_search: int = 128):
        self.index = index
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = ef_search
        # Flat search moves to the GPUs when faiss-gpu sees any; the CPU index stays the one saved and filtered.
        self._gpu_index = faiss.index_cpu_to_all_gpus(index) if gpu_count() and isinstance(index, faiss.IndexFlat) else None

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, ef_search: int = 128) -> DenseIndex:
        return cls(faiss.read_index(str(path)), ef_search)

    def vectors(self) -> np.ndarray:
        """All stored vectors in row order (to rebuild an index without re-embedding)."""
        if self.index.ntotal == 0:
            return np.zeros((0, self.index.d), dtype=np.float32)
        return self.index.reconstruct_n(0, self.index.ntotal)

    def search(self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and cosine scores of the k nearest rows, optionally among `allowed_rows` only."""
        k = min(k, self.index.ntotal if allowed_rows is None else len(allowed_rows))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        params = None
        if allowed_rows is not None:
            selector = faiss.IDSelectorBatch(allowed_rows.astype(np.int64))
            params = (
                faiss.SearchParametersHNSW(sel=selector, efSearch=self.index.hnsw.efSearch)
                if isinstance(self.index, faiss.IndexHNSW)
                else faiss.SearchParameters(sel=selector)
            )
        if params is None and self._gpu_index is not None:
            scores, rows = self._gpu_index.search(query.reshape(1, -1), k)
        else:
            scores, rows = self.index.search(query.reshape(1, -1), k, params=params)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep]
