"""BEIR qrels -> training examples, snapshots, the held-out split."""

from __future__ import annotations

from feedback.examples import ExampleSnapshot, examples_from_qrels, is_holdout


def test_qrels_become_chunk_examples_and_snapshots_round_trip(tmp_path):
    picks = {("q one", "d1"): "c1", ("q one", "d2"): None, ("q two", "d3"): "c9"}
    examples = examples_from_qrels(
        {"1": "q one", "2": "q two", "3": "q three"},
        {"1": {"d1": 1, "d2": 2}, "2": {"d3": 1}, "3": {"d4": 0}, "4": {"d5": 1}},
        lambda q, d: picks.get((q, d)),
    )
    assert [(e.query_id, [p.chunk_id for p in e.positives], e.exclude_doc_ids) for e in examples] == [
        ("1", ["c1"], ("d1", "d2")),
        ("2", ["c9"], ("d3",)),
    ]
    snapshot = ExampleSnapshot(tuple(examples))
    snapshot.save(tmp_path / "s.jsonl")
    again = ExampleSnapshot.load(tmp_path / "s.jsonl")
    assert again == snapshot and again.sha256 == snapshot.sha256
    assert ExampleSnapshot(tuple(examples[:1])).sha256 != snapshot.sha256


def test_holdout_is_deterministic_and_near_its_fraction():
    ids = [str(i) for i in range(2000)]
    held = [q for q in ids if is_holdout(q, 0.2)]
    assert held == [q for q in ids if is_holdout(q, 0.2)]
    assert 0.17 < len(held) / len(ids) < 0.23


def test_holdout_folds_are_disjoint_and_cover_every_query():
    ids = [str(i) for i in range(2000)]
    folds = [{q for q in ids if is_holdout(q, 0.2, fold)} for fold in range(5)]
    assert sum(len(f) for f in folds) == len(ids) and set().union(*folds) == set(ids)
    assert folds[0] == {q for q in ids if is_holdout(q, 0.2)}  # the default fold
