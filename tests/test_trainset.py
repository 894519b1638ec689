"""Training sets from stored feedback: every signal rule, conflict resolution, key reliability, the quality gates
(opt-outs, too few questions), personal-data scrubbing with the real Presidio + spaCy pipeline, snapshots and
erasure reaching them. Events are stored through feedback.store on a real collection and both databases."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from citeloop.catalog import set_collection_training_opt_out
from citeloop.db import TrainingSnapshot, session_scope
from citeloop.keys import Principal, create_key, set_key_training_opt_out
from citeloop.registry import get_version, register_candidate
from feedback.events import FeedbackEvent
from feedback.examples import STRONG, WEAK, query_key
from feedback.pii import PiiScrubber
from feedback.store import erase_actor, record_event, save_search
from feedback.trainset import (
    TrainingSetError,
    build_training_set,
    examples_from_rows,
    judgements_from_events,
    key_reliability,
    load_snapshot,
    resolve,
    save_snapshot,
)
from retrieval.ingest import ingest
from retrieval.readers import SourceDocument
from retrieval.retriever import CollectionRetriever, RetrievedChunk

T0 = datetime(2026, 11, 27, tzinfo=timezone.utc)
Q = "How do I open a file?"


def event(kind, minutes=0, actor="ana", query=Q, **fields):
    return FeedbackEvent(id=f"{actor}-{kind}-{minutes}", kind=kind, collection="docs", query=query, actor=actor, created_at=T0 + timedelta(minutes=minutes), **fields)


def labels(events, supported=None):
    dropped, counts = Counter(), Counter()
    judgements = judgements_from_events(events, supported or {}, dropped)
    rows = resolve(judgements, key_reliability(judgements), counts, dropped)
    return {r.chunk_id: (r.label, r.weight, r.signal) for r in rows}, counts, dropped


def test_each_signal_kind_becomes_its_label():
    rows, _, dropped = labels(
        [
            event("relevant", 0, chunk_id="c1"),
            event("not_relevant", 1, chunk_id="c2"),
            event("citation_flag", 2, chunk_id="c3", reason="does not say that"),
            event("thumbs_up", 3, actor="bo", answer_id="a1", cited=("c4", "c5")),  # c5's citation was unsupported
            event("thumbs_down", 4, actor="cy", answer_id="a2", cited=("c6",)),
            event("correction", 5, answer_id="a1", correction="Use open()."),  # trains the generator, not the reranker
            event("thumbs_up", 6, actor="di", answer_id="a3", cited=("c7",)),  # nothing it cited was supported
        ],
        supported={"a1": {"c4"}, "a3": set()},
    )
    assert rows == {
        "c1": (+1, STRONG, "curator"),
        "c2": (-1, STRONG, "curator"),
        "c3": (-1, STRONG, "curator"),
        "c4": (+1, WEAK, "vote"),
        "c6": (-1, WEAK, "vote"),
    }
    assert dropped["vote_without_supported_citation"] == 1


def test_latest_vote_per_key_wins_and_a_repeated_judgement_counts_once():
    rows, _, dropped = labels(
        [
            event("thumbs_down", 0, actor="bo", answer_id="a1", cited=("c1",)),
            event("thumbs_up", 5, actor="bo", answer_id="a1", cited=("c1",)),  # bo changed their mind
            event("relevant", 1, chunk_id="c2"),
            event("relevant", 2, chunk_id="c2"),
        ],
        supported={"a1": {"c1"}},
    )
    assert rows["c1"] == (+1, WEAK, "vote") and rows["c2"][0] == +1
    assert dropped["superseded_vote"] == 1 and dropped["duplicate_judgement"] == 1


def test_curators_outrank_votes_and_disagreeing_curators_go_by_majority_with_ties_dropped():
    rows, counts, dropped = labels(
        [
            event("thumbs_up", 0, actor="bo", answer_id="a1", cited=("c1",)),
            event("not_relevant", 1, actor="ana", chunk_id="c1"),
            event("relevant", 0, actor="ana", chunk_id="c2"),
            event("relevant", 1, actor="eve", chunk_id="c2"),
            event("not_relevant", 2, actor="fay", chunk_id="c2"),
            event("relevant", 0, actor="ana", chunk_id="c3"),
            event("not_relevant", 1, actor="eve", chunk_id="c3"),
        ],
        supported={"a1": {"c1"}},
    )
    assert rows["c1"][0] == -1 and rows["c1"][2] == "curator"
    assert rows["c2"][0] == +1  # two against one
    assert "c3" not in rows
    assert counts["curator_conflicts"] == 2 and counts["curator_conflicts_by_majority"] == 1
    assert dropped["curator_tie"] == 1 and dropped["vote_overridden_by_curator"] == 1


def test_a_key_that_disagrees_with_the_others_is_down_weighted():
    events = []
    for i in range(6):  # ana and bo agree on six chunks; mal says the opposite every time
        events += [
            event("relevant", i, actor="ana", chunk_id=f"c{i}"),
            event("relevant", i, actor="bo", chunk_id=f"c{i}"),
            event("not_relevant", i, actor="mal", chunk_id=f"c{i}"),
        ]
    events += [event("relevant", 9, actor="ana", chunk_id="solo-a"), event("relevant", 9, actor="mal", chunk_id="solo-m")]
    dropped = Counter()
    judgements = judgements_from_events(events, {}, dropped)
    reliability = key_reliability(judgements)
    assert reliability["ana"] == reliability["bo"] == 1.0
    assert reliability["mal"] == pytest.approx(2 / 8)
    rows = {r.chunk_id: r for r in resolve(judgements, reliability, Counter(), dropped)}
    assert rows["solo-m"].weight == pytest.approx(STRONG * 2 / 8) and rows["solo-a"].weight == STRONG
    assert all(rows[f"c{i}"].label == +1 for i in range(6))


def test_rows_become_examples_heaviest_first():
    rows = [
        *resolve(judgements_from_events([event("relevant", 0, chunk_id="p"), event("not_relevant", 0, chunk_id="n")], {}, Counter()), {"ana": 1.0}, Counter(), Counter())
    ]
    (example,) = examples_from_rows(rows)
    assert example.query_id == query_key(Q) and [p.chunk_id for p in example.positives] == ["p"]
    assert [n.chunk_id for n in example.negatives] == ["n"] and example.source == "feedback"
    assert examples_from_rows([r for r in rows if r.label < 0]) == []  # negatives alone wait for a positive


@pytest.fixture(scope="module")
def scrubber():
    return PiiScrubber()


def test_scrubbing_replaces_personal_data_and_keeps_the_documents_vocabulary(scrubber):
    text = scrubber.scrub("I'm Maria Gonzalez (maria.gonzalez@example.org, card 4111 1111 1111 1111): how do I sort a list?")
    assert "Maria" not in text and "Gonzalez" not in text and "example.org" not in text and "4111" not in text
    assert "<PERSON>" in text and "<EMAIL_ADDRESS>" in text and "<CREDIT_CARD>" in text and "how do I sort a list?" in text
    assert scrubber.scrub("How do I sort a list in place?") == "How do I sort a list in place?"
    # spaCy's small model calls "Python" a person; a word the documents use widely is vocabulary, not a name.
    question = "How do I sort a list in Python 3.11?"
    assert scrubber.scrub(question, vocabulary=lambda word: word == "Python") == question


# --- stored events ------------------------------------------------------------------------------------------------

CURATOR = Principal("cur", "curator", ("*",))


@pytest.fixture
def site(settings):
    docs = [SourceDocument(f"d{i}", f"d{i}", f"Topic {i}", f"Document {i} explains topic number {i} in detail.", {}) for i in range(30)]
    ingest(docs, "docs", settings)
    rows = CollectionRetriever("docs", settings).chunks()
    for name in ("cur", "cur2", "voter"):
        create_key(name, "curator", ["*"], settings)
    return settings, rows


def shown(rows):
    return [RetrievedChunk(r.chunk_id, r.doc_id, r.title, r.text, r.char_start, r.char_end, r.metadata, score=1.0, rank=i + 1) for i, r in enumerate(rows)]


def judge(settings, query, hits, relevant, actor=CURATOR):
    """A search of `hits` for `query`, with the first chunk judged relevant (or not) by `actor`."""
    with session_scope(settings) as session:
        search = save_search(session, "docs", query, hits, {"reranker": "none"}, actor.name)
        session.flush()
        return record_event(session, "relevant" if relevant else "not_relevant", actor, search_id=search.id, chunk_id=hits[0].chunk_id)


def build(settings, scrub=lambda t: t, min_queries=1, holdout=0.2):
    with session_scope(settings) as session:
        return build_training_set(session, "docs", scrub, holdout, min_queries)


def test_stored_events_build_a_snapshot_with_counts_and_without_opted_out_keys(site):
    settings, rows = site
    hits = shown(rows)
    for i in range(12):
        judge(settings, f"what does document {i} explain?", hits[i : i + 3], True)
        judge(settings, f"what does document {i} explain?", hits[i + 1 : i + 3], False)
    judge(settings, "what is topic twenty?", hits[20:22], True, Principal("voter", "curator", ("*",)))
    set_key_training_opt_out("voter", True, settings)
    training_set = build(settings, holdout=0.25)
    assert training_set.dropped["key_opted_out"] == 1
    assert {r.query for r in training_set.rows + training_set.eval_rows} == {f"what does document {i} explain?" for i in range(12)}
    assert training_set.counts["events_relevant"] == 12 and training_set.counts["events_not_relevant"] == 12
    assert training_set.counts["curator_positive"] + training_set.counts["curator_negative"] == 24
    held = {r.query_id for r in training_set.eval_rows}
    assert held and not held & {r.query_id for r in training_set.rows}  # the held-out share never trains
    with session_scope(settings) as session:
        snapshot = save_snapshot(session, "docs", "reranker", training_set)
    with session_scope(settings) as session:
        again = load_snapshot(session, snapshot.id)
    assert again.rows == tuple(training_set.rows) and again.sha256 == snapshot.sha256 and len(snapshot.sha256) == 64
    assert again.first_event_at is not None and again.last_event_at >= again.first_event_at
    # A snapshot altered behind the registry's back is refused.
    with session_scope(settings) as session:
        record = session.get(TrainingSnapshot, snapshot.id)
        tampered = [dict(r) for r in record.rows]
        tampered[0]["label"] = -tampered[0]["label"]
        record.rows = tampered
    with session_scope(settings) as session, pytest.raises(TrainingSetError, match="corrupt"):
        load_snapshot(session, snapshot.id)


def test_gates_refuse_with_the_reason(site):
    settings, rows = site
    with pytest.raises(TrainingSetError, match="no feedback to train on"):
        build(settings)
    judge(settings, "what does document 1 explain?", shown(rows)[1:3], True)
    with pytest.raises(TrainingSetError, match="at least 20"):
        build(settings, min_queries=20, holdout=0.01)
    set_key_training_opt_out("cur", True, settings)
    with pytest.raises(TrainingSetError, match="opted out"):
        build(settings)
    set_key_training_opt_out("cur", False, settings)
    set_collection_training_opt_out("docs", True, settings)
    with pytest.raises(TrainingSetError, match="collection 'docs' has opted out"):
        build(settings)


def test_questions_are_scrubbed_before_they_enter_a_set(site, scrubber):
    settings, rows = site
    judge(settings, "I am Maria Gonzalez, maria@example.org: what does document 3 explain?", shown(rows)[3:5], True)
    training_set = build(settings, scrub=scrubber.scrub, holdout=0.0001)
    (row,) = training_set.rows
    assert "Maria" not in row.query and "maria@example.org" not in row.query and "<PERSON>" in row.query
    assert row.query_id == query_key(row.query) and training_set.counts["texts_scrubbed"] == 1


def test_erasure_removes_snapshot_rows_and_marks_the_models_trained_on_them(site, tmp_path):
    settings, rows = site
    hits = shown(rows)
    judge(settings, "what does document 1 explain?", hits[1:3], True)
    judge(settings, "what does document 2 explain?", hits[2:4], True, Principal("cur2", "curator", ("*",)))
    training_set = build(settings, holdout=0.0001)
    with session_scope(settings) as session:
        snapshot = save_snapshot(session, "docs", "reranker", training_set)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "weights.bin").write_bytes(b"w")
    version = register_candidate(artifact, "docs", "reranker", snapshot.id, {}, {}, settings=settings)
    assert get_version(version.id, settings).data_erased_at is None
    with session_scope(settings) as session:
        erased = erase_actor(session, "cur2", Principal("admin", "admin", ("*",)))
    assert erased["docs"]["snapshot_rows"] == 1
    with session_scope(settings) as session:
        after = load_snapshot(session, snapshot.id)  # still verifies: its sha256 follows the erasure
    assert [r.query for r in after.rows] == ["what does document 1 explain?"] and after.erased_rows == 1
    assert get_version(version.id, settings).data_erased_at is not None
    assert [r.query for r in build(settings, holdout=0.0001).rows] == ["what does document 1 explain?"]


def test_a_set_can_stop_at_a_point_in_time(site):
    settings, rows = site
    hits = shown(rows)
    first = judge(settings, "what does document 1 explain?", hits[1:3], True)
    judge(settings, "what does document 2 explain?", hits[2:4], True)
    with session_scope(settings) as session:
        early = build_training_set(session, "docs", lambda t: t, 0.0001, 1, until=first.created_at)
    assert [r.query for r in early.rows] == ["what does document 1 explain?"] and early.last_event_at == first.created_at
