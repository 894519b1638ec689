"""Fuse ranked lists from several retrievers into one ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Ranking = Sequence[tuple[str, float]]  # (item id, score), best first


def reciprocal_rank_fusion(rankings: Mapping[str, Ranking], weights: Mapping[str, float], k: int = 60) -> list[tuple[str, float]]:
    """score(d) = sum over lists of weight / (k + rank of d), rank counted from 1 (Cormack et al., 2009)."""
    fused: dict[str, float] = {}
    for name, ranking in rankings.items():
        weight = weights.get(name, 1.0)
        for rank, (item, _score) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def minmax_fusion(rankings: Mapping[str, Ranking], weights: Mapping[str, float]) -> list[tuple[str, float]]:
    """Weighted sum of scores min-max normalised per list; an item absent from a list gets 0 there."""
    fused: dict[str, float] = {}
    for name, ranking in rankings.items():
        if not ranking:
            continue
        weight = weights.get(name, 1.0)
        scores = [s for _, s in ranking]
        low, high = min(scores), max(scores)
        span = high - low
        for item, score in ranking:
            normalised = (score - low) / span if span > 0 else 1.0
            fused[item] = fused.get(item, 0.0) + weight * normalised
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
