"""The bounded cache of loaded models."""

import pytest

from citeloop.lru import LRUCache


def test_the_model_cache_evicts_the_least_recently_used_beyond_its_bound():
    loads: list[str] = []
    cache: LRUCache[str] = LRUCache(2)

    def get(key: str) -> str:
        return cache.get(key, lambda: loads.append(key) or f"model {key}")

    assert [get("a"), get("b"), get("a")] == ["model a", "model b", "model a"]
    assert loads == ["a", "b"]
    get("c")  # over the bound: "b" is the least recently used
    get("a")
    assert loads == ["a", "b", "c"]
    get("b")  # loaded again; "c" goes
    get("c")
    assert loads == ["a", "b", "c", "b", "c"]


def test_the_model_cache_remembers_only_the_errors_it_is_told_to():
    calls: list[str] = []
    cache: LRUCache[str] = LRUCache(4, remembered_errors=(ValueError,))

    def broken(error: Exception):
        def load() -> str:
            calls.append(type(error).__name__)
            raise error

        return load

    for _ in range(2):
        with pytest.raises(ValueError, match="altered"):
            cache.get("broken", broken(ValueError("artifact altered")))
        with pytest.raises(OSError, match="disk"):
            cache.get("flaky", broken(OSError("disk not mounted")))
    assert calls == ["ValueError", "OSError", "OSError"]  # the remembered error is not loaded again
    with pytest.raises(ValueError):
        LRUCache(0)
