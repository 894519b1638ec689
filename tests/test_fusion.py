import pytest

from retrieval.fusion import minmax_fusion, reciprocal_rank_fusion


def test_rrf_sums_weighted_reciprocal_ranks():
    fused = dict(reciprocal_rank_fusion({"dense": [("a", 0.9), ("b", 0.8)], "bm25": [("b", 12.0), ("c", 3.0)]}, {"dense": 1.0, "bm25": 2.0}, k=10))
    assert fused["a"] == pytest.approx(1 / 11)
    assert fused["b"] == pytest.approx(1 / 12 + 2 / 11)
    assert fused["c"] == pytest.approx(2 / 12)


def test_rrf_orders_by_fused_score_and_ignores_raw_scores():
    ranking = reciprocal_rank_fusion({"x": [("a", 100.0), ("b", 0.1)], "y": [("b", 5.0), ("a", 4.9)]}, {}, k=60)
    # a and b tie on reciprocal ranks; ties break by id so the order is deterministic.
    assert [item for item, _ in ranking] == ["a", "b"]


def test_minmax_normalises_each_list_then_weights():
    fused = dict(minmax_fusion({"dense": [("a", 0.9), ("b", 0.5), ("c", 0.1)], "bm25": [("c", 30.0), ("a", 10.0)]}, {"dense": 0.5, "bm25": 1.0}))
    assert fused["a"] == pytest.approx(0.5 * 1.0 + 1.0 * 0.0)
    assert fused["b"] == pytest.approx(0.5 * 0.5)
    assert fused["c"] == pytest.approx(0.5 * 0.0 + 1.0 * 1.0)


def test_minmax_single_item_list_counts_fully_and_empty_list_is_ignored():
    fused = dict(minmax_fusion({"dense": [("a", 0.3)], "bm25": []}, {}))
    assert fused == {"a": 1.0}
