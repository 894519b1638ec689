"""Reranking stage: a cross-encoder scores the top-N fused candidates; a learned linear combiner turns its
logit plus the first-stage evidence (dense cosine, BM25, fused rank) into the final score.

The combiner is why a young cross-encoder never serves worse than hybrid retrieval: it is fitted on the
same labels, so it leans on the evidence that works, and the promotion gate refuses it otherwise.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from citeloop.lru import LRUCache
from citeloop.registry import RegistryError, VersionInfo, active_version, artifact_sha256, verified_path
from retrieval.ingest import index_text
from retrieval.backends import load_with_backend
from retrieval.retriever import CollectionRetriever, RetrievedChunk, StageScore

CROSS_ENCODER_DIR = "cross-encoder"
COMBINER_FILE = "combiner.json"
# Per-query normalised cross-encoder logit and reciprocal ranks of every stage: a logit's scale differs from one
# query to the next, so one linear fit across queries ranks better on them (held-out SciFact, bench/README.md).
FEATURES = ("cross_encoder_z", "cross_encoder_rank", "dense", "dense_rank", "bm25", "bm25_rank", "fused_rank")
SCORE_CACHE_SIZE = 100_000  # (query, chunk) logits kept per loaded version


def stage_features(hits: Sequence[RetrievedChunk], logits: np.ndarray, rrf_k: int = 60) -> np.ndarray:
    """Per candidate, in FEATURES order: the cross-encoder logit standardised over the candidates and
    rrf_k / (rrf_k + its rank among them); dense cosine and rank score; BM25 / best BM25 in the list and rank
    score; rrf_k / (rrf_k + fused rank). A stage that did not return the candidate contributes 0."""

    def stage(name: str, value: str) -> np.ndarray:
        return np.array([getattr(h.stages[name], value) if name in h.stages else 0.0 for h in hits], dtype=np.float64)

    def rank_score(ranks: np.ndarray) -> np.ndarray:
        return np.where(ranks > 0, rrf_k / (rrf_k + ranks), 0.0)

    logits = np.asarray(logits, dtype=np.float64)
    ce_rank = np.empty(len(logits))
    ce_rank[np.argsort(-logits, kind="stable")] = np.arange(1, len(logits) + 1)
    spread = logits.std() if len(logits) > 1 else 0.0
    bm25 = stage("bm25", "score")
    bm25_max = bm25.max() if len(bm25) and bm25.max() > 0 else 1.0
    return np.column_stack(
        [
            (logits - logits.mean()) / spread if spread > 0 else np.zeros(len(logits)),
            rank_score(ce_rank),
            stage("dense", "score"),
            rank_score(stage("dense", "rank")),
            bm25 / bm25_max,
            rank_score(stage("bm25", "rank")),
            rank_score(np.array([h.rank for h in hits], dtype=np.float64)),
        ]
    )


@dataclass(frozen=True)
class ScoreCombiner:
    weights: tuple[float, ...]  # one per FEATURES entry
    bias: float = 0.0

    @classmethod
    def only(cls, feature: str, weight: float = 1.0) -> ScoreCombiner:
        """Orders by one feature: the provisional combiner a fit starts from, and deliberately bad ones in tests."""
        if feature not in FEATURES:
            raise ValueError(f"unknown combiner feature '{feature}'; one of {', '.join(FEATURES)}")
        return cls(tuple(weight if name == feature else 0.0 for name in FEATURES))

    def score(self, features: np.ndarray) -> np.ndarray:
        return features @ np.asarray(self.weights) + self.bias

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"features": FEATURES, "weights": self.weights, "bias": self.bias}, indent=2))

    @classmethod
    def load(cls, path: Path) -> ScoreCombiner:
        data = json.loads(path.read_text())
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"{path}: combiner features {data['features']} are not {FEATURES}")
        return cls(tuple(float(w) for w in data["weights"]), float(data["bias"]))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, seed: int) -> ScoreCombiner:
        """Logistic regression of relevance on the features (balanced classes: few positives per query)."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(class_weight="balanced", C=1.0, max_iter=1000, random_state=seed)
        model.fit(features, labels)
        return cls(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]))


class CrossEncoderReranker:
    """One registered reranker version, loaded after its artifact digest is checked."""

    def __init__(self, path: Path, settings: Settings, version_id: str = "unregistered", weights_digest: str | None = None):
        from sentence_transformers import CrossEncoder

        self.version_id = version_id
        self.settings = settings
        weights = path / CROSS_ENCODER_DIR
        # Exports are cached per exact weights: the registry's verified digest, or one computed here.
        cache_key = f"reranker-{(weights_digest or artifact_sha256(weights))[:16]}"
        self.model = load_with_backend(
            CrossEncoder, weights, settings.rerank_backend, settings.model_cache_dir, cache_key, max_length=settings.rerank_max_tokens
        )
        self.combiner = ScoreCombiner.load(path / COMBINER_FILE)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()

    @classmethod
    def from_version(cls, version: VersionInfo, settings: Settings) -> CrossEncoderReranker:
        return cls(verified_path(version), settings, version.id, version.artifact_sha256)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def logits(self, query: str, hits: Sequence[RetrievedChunk]) -> np.ndarray:
        """Cross-encoder logits; (query, chunk) pairs already scored by this version come from the cache
        (a chunk id names immutable text: a changed document gets new chunk ids)."""
        keys = [(query, h.chunk_id) for h in hits]
        with self._lock:
            missing = [i for i, key in enumerate(keys) if key not in self._cache]
            if missing:
                pairs = [(query, index_text(hits[i].title, hits[i].text)) for i in missing]
                scores = self.model.predict(pairs, batch_size=self.settings.rerank_batch_size, activation_fn=None, show_progress_bar=False)
                for i, score in zip(missing, np.asarray(scores, dtype=np.float64).reshape(-1)):
                    self._cache[keys[i]] = float(score)
                while len(self._cache) > SCORE_CACHE_SIZE:
                    self._cache.popitem(last=False)
            return np.array([self._cache[key] for key in keys], dtype=np.float64)

    def rerank(self, query: str, hits: Sequence[RetrievedChunk], top_n: int) -> list[RetrievedChunk]:
        """Reorder the first `top_n` hits; the rest keep their order below them."""
        head, tail = list(hits[:top_n]), list(hits[top_n:])
        logits = self.logits(query, head)
        final = self.combiner.score(stage_features(head, logits, self.settings.rrf_k))
        ce_rank = {i: r for r, i in enumerate(np.argsort(-logits, kind="stable"), start=1)}
        order = np.argsort(-final, kind="stable")
        out = []
        for rank, i in enumerate(order, start=1):
            h = head[i]
            stages = h.stages | {
                "cross_encoder": StageScore(float(logits[i]), ce_rank[i]),
                "rerank": StageScore(float(final[i]), rank),
            }
            out.append(replace(h, score=float(final[i]), rank=rank, stages=stages))
        floor = float(final.min()) if len(final) else 0.0
        for offset, h in enumerate(tail, start=len(out) + 1):
            out.append(replace(h, score=floor - offset, rank=offset))
        return out


# One active reranker per collection served, plus candidates under evaluation; each holds a ~90 MB model and up
# to SCORE_CACHE_SIZE scores. A version found broken (altered files, a combiner of other features) is remembered
# as its error: a version's artifact never changes, so it is not re-read per request.
LOADED_RERANKERS = 8
_loaded: LRUCache[CrossEncoderReranker] = LRUCache(LOADED_RERANKERS, remembered_errors=(RegistryError, ValueError))


def load_reranker(version: VersionInfo, settings: Settings) -> CrossEncoderReranker:
    """One loaded model per version and inference configuration (model loads take seconds)."""
    key = (version.id, settings.rerank_backend, settings.rerank_max_tokens, settings.rerank_batch_size, str(settings.model_cache_dir))
    return _loaded.get(key, lambda: CrossEncoderReranker.from_version(version, settings))


@dataclass
class SearchResult:
    hits: list[RetrievedChunk]
    reranker: str | None  # the version that reranked, or None
    note: str | None = None  # why the results are not reranked


@dataclass
class RetrievedHits:
    hits: list[RetrievedChunk]
    chunks: int  # in the index build searched: 0 when the collection has no documents


class HybridRetriever:
    """Component: hybrid (dense + BM25, fused) retrieval of one collection, on its newest index build."""

    def __init__(self, retriever: CollectionRetriever, min_hits: int = 0):
        self._retriever = retriever
        self.min_hits = min_hits  # returned even when fewer are asked for: the candidates a reranker reorders

    def run(self, query: str, k: int, filters: dict | None = None) -> RetrievedHits:
        """The best max(k, min_hits) chunks; raises UnknownCollectionError once the collection is deleted."""
        self._retriever.refresh()
        hits = self._retriever.search(query, k=max(k, self.min_hits), mode="hybrid", filters=filters)
        return RetrievedHits(hits, len(self._retriever))

    def term_counts(self, query: str) -> dict[str, int]:
        """How many chunks of the collection contain each term of the query (`CollectionRetriever.term_counts`)."""
        return self._retriever.term_counts(query)


class Reranker:
    """Component: the collection's active cross-encoder over first-stage hits, or those hits unchanged with a
    note saying why (none promoted, or its artifact cannot be loaded). Picks up promotions and rollbacks per run."""

    def __init__(self, collection: str, settings: Settings):
        import logging

        self.collection = collection
        self.settings = settings
        self._log = logging.getLogger("citeloop.rerank")

    def run(self, query: str, hits: list[RetrievedChunk], k: int, version: VersionInfo | None = None) -> SearchResult:
        """The best `k` of `hits`; `version` (a reranker asked for by id) instead of the active one."""
        active = version or active_version(self.collection, "reranker", self.settings)
        if active is None:
            note = f"no promoted reranker for collection '{self.collection}': serving hybrid retrieval"
            self._log.info(note)
            return SearchResult(hits[:k], None, note)
        try:
            model = load_reranker(active, self.settings)
        except (RegistryError, ValueError, OSError) as error:
            if version is not None:  # asked for by id (an evaluation): its results would not be what was asked
                raise
            # A broken active artifact must not take search down: serve the stage below and say why.
            note = f"active reranker {active.id} of '{self.collection}' cannot be loaded ({error}): serving hybrid retrieval"
            self._log.error(note)
            return SearchResult(hits[:k], None, note)
        return SearchResult(model.rerank(query, hits, self.settings.rerank_top_n)[:k], active.id)


class RankedSearch:
    """Hybrid retrieval, then the collection's active reranker: the composition that search, evaluation and the
    answer pipeline share, so a process holds one copy of a collection's index and texts.

    `retriever` is the collection's loaded index (evaluation scores its dense and BM25 stages alone); `hybrid`
    and `reranker` are the two components `search` runs.
    """

    def __init__(self, collection: str, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.collection = collection
        self.retriever = CollectionRetriever(collection, self.settings)
        self.hybrid = HybridRetriever(self.retriever, min_hits=self.settings.rerank_top_n)
        self.reranker = Reranker(collection, self.settings)

    def refresh(self) -> None:
        """Pick up the collection's newest index build (raises UnknownCollectionError once it is deleted)."""
        self.retriever.refresh()

    def search(self, query: str, k: int = 10, filters: dict | None = None, reranker: VersionInfo | None = None, depth: int | None = None) -> SearchResult:
        """The best max(k, depth) chunks, reranked by `reranker` (default: the active one) when there is one."""
        wanted = max(k, depth or 0)
        return self.reranker.run(query, self.hybrid.run(query, wanted, filters).hits, wanted, reranker)
