"""The process-wide cache of loaded models: bounded, least recently used out first.

A server keeps one loaded model per model version and configuration it serves; without a bound, every collection's
reranker and every generator version ever asked for would stay in memory until the process ends.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class LRUCache(Generic[Value]):
    """Up to `maxsize` values by key; a load that raises one of `remembered_errors` is cached as that error, so a
    key known to be broken is not loaded again on every request (it takes a slot like a value)."""

    def __init__(self, maxsize: int, remembered_errors: tuple[type[Exception], ...] = ()):
        if maxsize < 1:
            raise ValueError(f"an LRU cache holds at least one value, not {maxsize}")
        self.maxsize = maxsize
        self._remembered_errors = remembered_errors
        self._entries: OrderedDict[Hashable, Value | Exception] = OrderedDict()
        # Loads run under the lock: two requests for the same new model wait for one load instead of making two.
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Value]) -> Value:
        """The value cached under `key`, made by `load()` on a miss (evicting the least recently used past maxsize)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
            else:
                try:
                    self._entries[key] = load()
                except self._remembered_errors as error:
                    self._entries[key] = error
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
            entry = self._entries[key]
        if isinstance(entry, Exception):
            # Raised afresh each time: re-raising one object would grow its traceback by a request's frames per raise.
            raise entry.with_traceback(None)
        return entry
