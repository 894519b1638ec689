"""The model registry on both databases: candidates, gated and forced promotion, the deployment history that
rollbacks walk, the one-active-version constraint, the migration that builds the history of an existing database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import JSON, column, create_engine, insert, table, update
from sqlalchemy.exc import IntegrityError

from citeloop.db import ModelVersion, session_scope
from citeloop.migrate import upgrade
from citeloop.registry import (
    CorruptArtifactError,
    RegistryError,
    active_version,
    artifact_sha256,
    deployment_history,
    gate_decision,
    get_version,
    list_versions,
    promote,
    register_candidate,
    rollback,
)
from retrieval.ingest import delete_collection, ingest
from retrieval.readers import SourceDocument

PASSED = {"gate": {"passed": True, "reason": "nDCG@10 up"}}


def _artifact(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    (path / "weights.bin").write_bytes(name.encode())
    return path


@pytest.fixture
def docs(settings):
    ingest([SourceDocument("d1", "d1", "T", "some text", {})], "docs", settings)
    return settings


def _candidates(tmp_path, settings, names, metrics=PASSED):
    return [register_candidate(_artifact(tmp_path, n), "docs", "reranker", n * 8, {}, metrics, settings=settings) for n in names]


def _serving(settings):
    active = active_version("docs", "reranker", settings)
    return active.id if active else None


def test_rollback_returns_to_the_version_active_before_the_current_one(docs, tmp_path):
    a, b, c = _candidates(tmp_path, docs, "abc")
    assert _serving(docs) is None
    promote(a.id, docs)
    promote(b.id, docs)
    assert rollback("docs", "reranker", docs).id == a.id
    promote(c.id, docs)
    # C was deployed over A: undoing it brings A back, not B (whose deployment was already undone).
    assert rollback("docs", "reranker", docs).id == a.id
    assert _serving(docs) == a.id and get_version(b.id, docs).status == get_version(c.id, docs).status == "retired"
    assert rollback("docs", "reranker", docs) is None
    assert _serving(docs) is None
    with pytest.raises(RegistryError, match="no active reranker"):
        rollback("docs", "reranker", docs)


def test_repeated_rollbacks_walk_back_through_promotions(docs, tmp_path):
    a, b, c = _candidates(tmp_path, docs, "abc")
    for version in (a, b, c):
        promote(version.id, docs)
    assert [rollback("docs", "reranker", docs).id for _ in range(2)] == [b.id, a.id]
    assert rollback("docs", "reranker", docs) is None
    with pytest.raises(RegistryError, match="no collection"):
        register_candidate(_artifact(tmp_path, "d"), "nope", "reranker", "", {}, {}, settings=docs)
    with pytest.raises(RegistryError, match="no collection"):
        rollback("nope", "reranker", docs)
    with pytest.raises(RegistryError, match="no model version"):
        promote("rer-missing", docs)


def test_history_records_each_change_with_its_actor_and_reason(docs, tmp_path):
    a, b = _candidates(tmp_path, docs, "ab")
    (unchecked,) = _candidates(tmp_path, docs, "u", metrics={})
    promote(a.id, docs, actor="train-job")
    promote(unchecked.id, docs, actor="ops", force=True)
    rollback("docs", "reranker", docs, actor="ops")
    promote(b.id, docs, actor="cli", force=True)  # forced, but its gate passed: recorded as gate-passed
    history = deployment_history("docs", "reranker", docs)
    assert [(d.from_version, d.to_version, d.actor, d.reason) for d in history] == [
        (None, a.id, "train-job", "gate_passed"),
        (a.id, unchecked.id, "ops", "forced"),
        (unchecked.id, a.id, "ops", "rollback"),
        (a.id, b.id, "cli", "gate_passed"),
    ]
    assert all(d.collection == "docs" and d.kind == "reranker" for d in history)
    assert [d.deployed_at for d in history] == sorted(d.deployed_at for d in history)
    assert deployment_history("docs", "generator", docs) == []
    # The history goes with its collection.
    assert delete_collection("docs", docs) and list_versions(docs) == []
    with pytest.raises(RegistryError, match="no collection"):
        deployment_history("docs", "reranker", docs)


def test_a_version_without_a_passed_gate_needs_force(docs, tmp_path):
    (ungated,) = _candidates(tmp_path, docs, "n", metrics={})
    (failed,) = _candidates(tmp_path, docs, "f", metrics={"gate": {"passed": False, "reason": "nDCG@10 gain -0.01"}})
    with pytest.raises(RegistryError, match="no gate result.*--force"):
        promote(ungated.id, docs)
    with pytest.raises(RegistryError, match="gain -0.01.*--force"):
        promote(failed.id, docs)
    assert _serving(docs) is None and deployment_history("docs", "reranker", docs) == []
    promote(failed.id, docs, actor="ops", force=True)
    assert _serving(docs) == failed.id
    assert [(d.to_version, d.reason) for d in deployment_history("docs", "reranker", docs)] == [(failed.id, "forced")]


def test_the_database_refuses_a_second_active_version(docs, tmp_path):
    a, b = _candidates(tmp_path, docs, "ab")
    other_kind = register_candidate(_artifact(tmp_path, "g"), "docs", "generator", "g" * 8, {}, PASSED, settings=docs)
    promote(a.id, docs)
    promote(other_kind.id, docs)  # one active per kind: a generator beside the reranker is fine
    with pytest.raises(IntegrityError):
        with session_scope(docs) as session:
            session.execute(update(ModelVersion).where(ModelVersion.id == b.id).values(status="active"))
    assert _serving(docs) == a.id and get_version(b.id, docs).status == "candidate"


def test_altered_artifact_is_not_promoted(docs, tmp_path):
    good, bad = _candidates(tmp_path, docs, ["good", "bad"])
    promote(good.id, docs)
    (bad.path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(CorruptArtifactError):
        promote(bad.id, docs)
    assert _serving(docs) == good.id


def test_rollback_refuses_a_corrupted_previous_artifact_and_changes_nothing(docs, tmp_path):
    a, b = _candidates(tmp_path, docs, "ab")
    promote(a.id, docs)
    promote(b.id, docs)
    (a.path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(CorruptArtifactError, match=f"cannot roll back to '{a.id}'.*'{b.id}' stays active"):
        rollback("docs", "reranker", docs)
    assert _serving(docs) == b.id and get_version(a.id, docs).status == "retired"
    assert [d.reason for d in deployment_history("docs", "reranker", docs)] == ["gate_passed", "gate_passed"]


def test_upgrade_builds_the_history_of_a_database_from_before_it(settings, tmp_path):
    """A database at revision 0003 where A, B, C were promoted in turn and the old rollback left B active; in a
    second collection two generators were active at once."""
    settings.data_dir.mkdir(parents=True)
    engine = create_engine(settings.sqlalchemy_url)
    upgrade(engine, "0003")
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    promoted = {"a": ("retired", PASSED), "b": ("active", {}), "c": ("retired", PASSED)}
    # Rows written as that revision's schema had them (the ORM models describe the latest schema).
    collections = table("collections", column("id"), column("name"), column("created_at"))
    plain = ("id", "collection_id", "kind", "status", "parent_id", "path", "artifact_sha256", "snapshot_id", "created_at", "promoted_at")
    versions = table("model_versions", *(column(c) for c in plain), column("params", JSON), column("metrics", JSON))

    def version(version_id, collection_id, kind, status, path, metrics, promoted_at):
        return dict(
            id=version_id, collection_id=collection_id, kind=kind, status=status, parent_id=None, path=str(path),
            artifact_sha256=artifact_sha256(path), snapshot_id="s" * 64, params={}, metrics=metrics,
            created_at=start, promoted_at=promoted_at,
        )

    with engine.begin() as conn:
        conn.execute(insert(collections), [{"id": 1, "name": "docs", "created_at": start}, {"id": 2, "name": "other", "created_at": start}])
        rows = [version(f"rer-{name}", 1, "reranker", status, _artifact(tmp_path, name), metrics, start + timedelta(days=i)) for i, (name, (status, metrics)) in enumerate(promoted.items())]
        rows.append(version("rer-new", 1, "reranker", "candidate", _artifact(tmp_path, "new"), {}, None))
        rows += [version(name, 2, "generator", "active", _artifact(tmp_path, name), {}, start + timedelta(days=i)) for i, name in enumerate(["gen-x", "gen-y"])]
        conn.execute(insert(versions), rows)
    upgrade(engine)
    engine.dispose()

    assert [(d.from_version, d.to_version, d.reason, d.actor) for d in deployment_history("docs", "reranker", settings)] == [
        (None, "rer-a", "gate_passed", "unrecorded"),
        ("rer-a", "rer-b", "forced", "unrecorded"),
        ("rer-b", "rer-c", "gate_passed", "unrecorded"),
        ("rer-c", "rer-b", "rollback", "unrecorded"),
    ]
    assert rollback("docs", "reranker", settings).id == "rer-a"
    assert rollback("docs", "reranker", settings) is None
    # The generator promoted last stays active; the other is retired so that the unique index could be built.
    assert active_version("other", "generator", settings).id == "gen-y"
    assert get_version("gen-x", settings).status == "retired"
    assert [(d.from_version, d.to_version) for d in deployment_history("other", "generator", settings)] == [(None, "gen-x"), ("gen-x", "gen-y")]


def test_gate_needs_a_margin_and_no_recall_loss():
    base = {"ndcg@10": 0.70, "recall@100": 0.95}
    assert gate_decision({"ndcg@10": 0.72, "recall@100": 0.95}, base, "hybrid", 0.005, 0.005).passed
    assert not gate_decision({"ndcg@10": 0.703, "recall@100": 0.95}, base, "hybrid", 0.005, 0.005).passed
    refused = gate_decision({"ndcg@10": 0.75, "recall@100": 0.90}, base, "hybrid", 0.005, 0.005)
    assert not refused.passed and "Recall@100" in refused.reason


def test_gate_refuses_a_gain_whose_paired_bootstrap_interval_reaches_zero():
    base = {"ndcg@10": 0.5, "recall@100": 0.9, "per_query": {str(q): 0.5 for q in range(10)}}
    # The mean gain (+0.05) clears the margin, but one query carries it all: a lucky split, not a better model.
    lucky = {"ndcg@10": 0.55, "recall@100": 0.9, "per_query": {str(q): 0.5 for q in range(9)} | {"9": 1.0}}
    refused = gate_decision(lucky, base, "hybrid", 0.005, 0.005, min_ci_lower=0.0)
    assert not refused.passed and refused.ci_low <= 0 < refused.gain and "lower bound" in refused.reason
    assert gate_decision(lucky, base, "hybrid", 0.005, 0.005, min_ci_lower=None).passed  # configurable off
    steady = {"ndcg@10": 0.55, "recall@100": 0.9, "per_query": {str(q): 0.55 + (0.01 if q % 2 else -0.01) for q in range(10)}}
    passed = gate_decision(steady, base, "hybrid", 0.005, 0.005, min_ci_lower=0.0)
    assert passed.passed and 0 < passed.ci_low <= passed.gain <= passed.ci_high
    assert "per_query" not in passed.candidate  # the record keeps the means only
    # Gains equal but for float rounding: BCa has no interval there (NaN), which must neither pass nor vanish.
    even = {"ndcg@10": 0.6, "recall@100": 0.9, "per_query": {str(q): 0.5 + 0.1 * (1 + q * 1e-12) for q in range(10)}}
    decision = gate_decision(even, base, "hybrid", 0.005, 0.005, min_ci_lower=0.0)
    assert decision.passed and decision.ci_low == pytest.approx(0.1) and decision.ci_high == pytest.approx(0.1)
