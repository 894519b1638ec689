"""What the routes share, built once per process: settings, one `RankedSearch` and one `AnswerPipeline` per
collection (the pipeline answers over that same search, so each collection's index and chunk texts are
loaded once), the generation queue, the ingest lock and the per-key rate limiter."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from citeloop.config import Settings
from citeloop.errors import UnknownCollectionError

if TYPE_CHECKING:  # both load models: imported on first use, after the server is up
    from generation.pipeline import AnswerPipeline
    from retrieval.rerank import RankedSearch


class RateLimiter:
    """Token bucket per key: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1, now)
            return 0.0


class Services:
    """The process's loaded collections and the locks the routes share (kept on `app.state.services`)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        # asyncio.Lock wakes waiters in arrival order: concurrent asks queue fairly for the one generator.
        self.generation_queue = asyncio.Lock()
        self.ingest_lock = threading.Lock()
        self._searches: dict[str, RankedSearch] = {}
        self._pipelines: dict[str, AnswerPipeline] = {}
        self._lock = threading.Lock()
        self.models_ready = threading.Event()
        self.load_error: str | None = None

    def warm_up(self) -> None:
        """Load the embedder and generator before the first question (they take seconds)."""
        try:
            from generation.engines import load_generator
            from retrieval.embedder import load_embedder

            load_embedder(self.settings)
            load_generator(self.settings)
            self.models_ready.set()
        except Exception as exc:  # reported by /readyz; asks will raise the same error with its message
            self.load_error = str(exc)

    def search(self, collection: str) -> RankedSearch:
        """The collection's `RankedSearch`, on its newest index build. A collection deleted since it was loaded
        is dropped from memory and raises `UnknownCollectionError`, like one that never existed."""
        from retrieval.rerank import RankedSearch

        with self._lock:
            if collection not in self._searches:
                self._searches[collection] = RankedSearch(collection, self.settings)
            ranked = self._searches[collection]
        try:
            ranked.refresh()
        except UnknownCollectionError:
            self.forget(collection)
            raise
        return ranked

    def pipeline(self, collection: str) -> AnswerPipeline:
        """The collection's `AnswerPipeline`, answering over the same `RankedSearch` as `search`."""
        from generation.pipeline import AnswerPipeline

        ranked = self.search(collection)
        with self._lock:
            if collection not in self._pipelines:
                self._pipelines[collection] = AnswerPipeline(collection, self.settings, search=ranked)
            return self._pipelines[collection]

    def forget(self, collection: str) -> None:
        with self._lock:
            self._searches.pop(collection, None)
            self._pipelines.pop(collection, None)
