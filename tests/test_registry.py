"""The model registry on both databases: candidates, promotion, rollback history, bad input."""

from __future__ import annotations

import pytest

from citeloop.registry import (
    CorruptArtifactError,
    RegistryError,
    active_version,
    gate_decision,
    promote,
    register_candidate,
    rollback,
)
from retrieval.ingest import ingest
from retrieval.readers import SourceDocument


def _artifact(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    (path / "weights.bin").write_bytes(name.encode())
    return path


def test_promotion_history_and_rollback(settings, tmp_path):
    ingest([SourceDocument("d1", "d1", "T", "some text", {})], "docs", settings)
    a, b, c = (register_candidate(_artifact(tmp_path, n), "docs", "reranker", n * 8, {}, {}, settings=settings) for n in "abc")
    assert active_version("docs", "reranker", settings) is None
    for version in (a, b, c):
        promote(version.id, settings)
    assert active_version("docs", "reranker", settings).id == c.id
    assert rollback("docs", "reranker", settings).id == b.id
    assert rollback("docs", "reranker", settings).id == a.id
    assert rollback("docs", "reranker", settings) is None
    with pytest.raises(RegistryError, match="no active reranker"):
        rollback("docs", "reranker", settings)
    with pytest.raises(RegistryError, match="no collection"):
        register_candidate(_artifact(tmp_path, "d"), "nope", "reranker", "", {}, {}, settings=settings)
    with pytest.raises(RegistryError, match="no model version"):
        promote("rer-missing", settings)


def test_altered_artifact_is_not_promoted(settings, tmp_path):
    ingest([SourceDocument("d1", "d1", "T", "some text", {})], "docs", settings)
    good = register_candidate(_artifact(tmp_path, "good"), "docs", "reranker", "", {}, {}, settings=settings)
    promote(good.id, settings)
    bad = register_candidate(_artifact(tmp_path, "bad"), "docs", "reranker", "", {}, {}, settings=settings)
    (bad.path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(CorruptArtifactError):
        promote(bad.id, settings)
    assert active_version("docs", "reranker", settings).id == good.id


def test_gate_needs_a_margin_and_no_recall_loss():
    base = {"ndcg@10": 0.70, "recall@100": 0.95}
    assert gate_decision({"ndcg@10": 0.72, "recall@100": 0.95}, base, "hybrid", 0.005, 0.005).passed
    assert not gate_decision({"ndcg@10": 0.703, "recall@100": 0.95}, base, "hybrid", 0.005, 0.005).passed
    refused = gate_decision({"ndcg@10": 0.75, "recall@100": 0.90}, base, "hybrid", 0.005, 0.005)
    assert not refused.passed and "Recall@100" in refused.reason
