"""Labelled signals -> training examples: strengths, precedence, snapshots, the held-out split."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from feedback.events import FeedbackEvent
from feedback.examples import STRONG, WEAK, ExampleSnapshot, Labelled, examples_from_events, examples_from_qrels, is_holdout

T0 = datetime(2026, 11, 27, tzinfo=timezone.utc)


def event(kind, minutes=0, query="How do I open a file?", **fields):
    return FeedbackEvent(id=f"e{kind}{minutes}", kind=kind, collection="docs", query=query, actor="ana", created_at=T0 + timedelta(minutes=minutes), **fields)


def test_event_strengths_and_precedence():
    examples = examples_from_events(
        [
            event("thumbs_up", 0, cited=("c1", "c2")),
            event("not_relevant", 1, chunk_id="c2"),  # strong beats the earlier weak positive
            event("thumbs_down", 2, query="how do I  OPEN a file?", cited=("c3",)),  # same question, other spelling
            event("relevant", 3, chunk_id="c4"),
            event("thumbs_down", 4, cited=("c4",)),  # weak never overrides strong, even later
            event("citation_flag", 5, chunk_id="c5", reason="does not say that"),
            event("correction", 6, correction="Use open()."),  # generator data, not reranker data
            event("thumbs_up", 0, query="only negatives here?", cited=()),
        ]
    )
    assert len(examples) == 1
    (example,) = examples
    assert example.source == "feedback"
    assert set(example.positives) == {Labelled("c1", WEAK), Labelled("c4", STRONG)}
    assert set(example.negatives) == {Labelled("c2", STRONG), Labelled("c3", WEAK), Labelled("c5", STRONG)}


def test_events_validate_their_shape():
    with pytest.raises(ValueError, match="needs the chunk_id"):
        event("relevant")
    with pytest.raises(ValueError, match="unknown feedback kind"):
        event("love")
    with pytest.raises(ValueError, match="corrected answer"):
        event("correction")


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
