"""A reranker trained from stored feedback on a real (tiny) SciFact collection: a curator's judgements of search
results become a snapshot, the candidate records it and is gated on an evaluation set it never trained on (the
held-out share, or an uploaded set whose questions training leaves out). Smoke-sized training; gains are
measured by `citeloop eval feedback-loop` (bench/)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from citeloop.config import Settings
from citeloop.db import session_scope
from eval.beir import load_split
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.evalsets import EvalSetError, add_evalset, evalset_from_rows, get_evalset
from feedback.examples import query_key
from feedback.reranker_loop import train_from_feedback
from feedback.trainset import load_snapshot
from tests.conftest import judge_against_qrels

SMOKE = RerankerTrainingArgs(epochs=1, max_steps=2, batch_size=4, hard_negatives=2, random_negatives=1, max_tokens=64)


@pytest.fixture(scope="module")
def judged(tmp_path_factory, tiny_beir):
    """The tiny SciFact collection with every test claim's top 5 hybrid results judged against the qrels."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("var"), rerank_max_tokens=64, rerank_top_n=10)
    return settings, judge_against_qrels(settings, tiny_beir), load_split(tiny_beir, "test")


def test_a_reranker_trains_on_a_snapshot_of_the_feedback_and_is_gated_on_questions_it_never_saw(judged):
    settings, collection, data = judged
    report = train_from_feedback(collection, SMOKE, settings)
    version = report.version
    with session_scope(settings) as session:
        snapshot = load_snapshot(session, version.snapshot_id)
        evalset = get_evalset(session, version.params["eval"]["evalset"])
    assert snapshot.counts["events_relevant"] > 0 and snapshot.counts["curator_negative"] > 0
    assert version.params["eval"]["snapshot"] == snapshot.id and version.params["eval"]["counts"] == snapshot.counts
    assert evalset.level == "judged" and evalset.created_by == f"training:{snapshot.id}"
    assert all(1 in grades.values() for grades in evalset.qrels.values()) and any(0 in g.values() for g in evalset.qrels.values())
    assert evalset.query_keys and not evalset.query_keys & {r.query_id for r in snapshot.rows}
    gate = version.metrics["gate"]
    assert gate["baseline_name"] == "hybrid retrieval" and gate["ci_low"] <= gate["gain"] <= gate["ci_high"]
    assert report.promoted is False


def test_an_uploaded_evaluation_set_gates_and_its_questions_never_train(judged):
    settings, collection, data = judged
    chosen = sorted(data.queries)[:10]
    rows = [{"id": q, "user_input": data.queries[q], "reference_doc_ids": sorted(data.qrels[q])} for q in chosen]
    labelled = evalset_from_rows(rows)
    with session_scope(settings) as session:
        uploaded = add_evalset(session, collection, "curated", labelled.queries, labelled.qrels, labelled.level, "ml-team")
    with session_scope(settings) as session, pytest.raises(EvalSetError, match="already has an evaluation set named 'curated'"):
        add_evalset(session, collection, "curated", labelled.queries, labelled.qrels, labelled.level, "ml-team")
    # A set of retrieval labels only keeps the digest sets had before they could hold QA questions.
    assert uploaded.sha256 == hashlib.sha256(json.dumps({"level": "doc", "queries": labelled.queries, "qrels": labelled.qrels}, sort_keys=True).encode()).hexdigest()
    report = train_from_feedback(collection, SMOKE, settings)
    assert report.version.params["eval"]["evalset"] == uploaded.id
    assert report.version.params["eval"]["dropped"]["question_in_evaluation_set"] > 0
    with session_scope(settings) as session:
        trained_on = {r.query_id for r in load_snapshot(session, report.version.snapshot_id).rows}
    assert not trained_on & {query_key(data.queries[q]) for q in chosen}
    assert "evaluation set 'curated'" in report.version.metrics["gate"]["reason"]


def test_rows_with_reference_answers_and_unanswerable_rows_are_a_sets_qa_questions(judged):
    settings, collection, data = judged
    first, second, third = sorted(data.queries)[:3]
    rows = [
        {"id": first, "user_input": data.queries[first], "reference_doc_ids": sorted(data.qrels[first]), "reference": "The claim holds.", "shape": "yesno"},
        {"id": second, "user_input": data.queries[second], "reference_doc_ids": sorted(data.qrels[second])},  # retrieval only
        {"id": "none", "user_input": "Which telescope first imaged a black hole?", "answerable": False},
    ]
    labelled = evalset_from_rows(rows)
    assert sorted(labelled.queries) == sorted([first, second]) and [q.id for q in labelled.qa_rows] == [first, "none"]
    assert labelled.qa_rows[0].references == ["The claim holds."] and labelled.qa_rows[0].doc_ids == sorted(data.qrels[first])
    assert not labelled.qa_rows[1].answerable
    with session_scope(settings) as session:
        stored = add_evalset(session, collection, "answers", labelled.queries, labelled.qrels, labelled.level, "ml-team", labelled.qa_rows)
        again = get_evalset(session, stored.id)
        # A chunk-level set's QA question cites the documents its chunks belong to.
        chunk_id, doc_id = a_relevant_chunk(session, collection, data.qrels[third])
        by_chunk = evalset_from_rows([{"id": third, "user_input": data.queries[third], "reference_chunk_ids": [chunk_id], "reference": "Yes."}])
        chunked = add_evalset(session, collection, "answers by chunk", by_chunk.queries, by_chunk.qrels, by_chunk.level, "ml-team", by_chunk.qa_rows)
    assert [q.id for q in again.questions()] == [first, "none"]
    assert query_key("Which telescope first imaged a black hole?") in again.query_keys  # never trained on either
    assert chunked.questions()[0].doc_ids == [doc_id]
    with pytest.raises(EvalSetError, match="row 1: an unanswerable row names no reference"):
        evalset_from_rows([{"user_input": "q", "answerable": False, "reference": "an answer"}])
    with pytest.raises(EvalSetError, match="row 2: id 'a' repeats"):
        evalset_from_rows([{"id": "a", "user_input": "q", "answerable": False}, {"id": "a", "user_input": "r", "answerable": False}])
    with pytest.raises(EvalSetError, match="row 1: 'reference_doc_ids' must be a non-empty list of ids"):
        evalset_from_rows([{"user_input": "q", "reference_doc_ids": 5}])
    with pytest.raises(EvalSetError, match="row 1: 'reference_answers' must be a list of strings"):
        evalset_from_rows([{"user_input": "q", "reference_doc_ids": ["1"], "reference_answers": "one"}])


def a_relevant_chunk(session, collection: str, relevant: dict[str, int]) -> tuple[str, str]:
    """(chunk id, document id) of a chunk of one of the relevant documents."""
    from sqlalchemy import select

    from citeloop.db import Chunk, Document, get_collection

    row = get_collection(session, collection)
    found = select(Chunk.id, Document.doc_id).join(Document).where(Document.collection_id == row.id, Document.doc_id.in_(sorted(relevant)))
    return tuple(session.execute(found.order_by(Chunk.id)).first())


def test_evaluation_sets_name_only_what_the_collection_has(judged):
    settings, collection, _ = judged
    with pytest.raises(EvalSetError, match="reference_doc_ids"):
        evalset_from_rows([{"user_input": "a question"}])
    with pytest.raises(EvalSetError, match="mixes document and chunk"):
        evalset_from_rows([{"user_input": "q", "reference_doc_ids": ["1"]}, {"user_input": "r", "reference_chunk_ids": ["c"]}])
    with session_scope(settings) as session, pytest.raises(EvalSetError, match="unanswerable questions alone are not a set"):
        only = evalset_from_rows([{"user_input": "Which telescope first imaged a black hole?", "answerable": False}])
        add_evalset(session, collection, "refusals", only.queries, only.qrels, only.level, "ml-team", only.qa_rows)
    with session_scope(settings) as session, pytest.raises(EvalSetError, match="not in collection"):
        add_evalset(session, collection, "typo", {"1": "q"}, {"1": {"no-such-doc": 1}}, "doc", "ml-team")


def test_a_reranker_fine_tunes_from_a_warm_start_base(judged, tmp_path):
    """A trained cross-encoder (here the first test's candidate) as the base: training starts from its weights and
    head, not from the bare MiniLM."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from feedback.train_reranker import train_reranker
    from feedback.trainset import examples_from_rows

    settings, collection, _ = judged
    report = train_from_feedback(collection, SMOKE, settings)
    with session_scope(settings) as session:
        examples = examples_from_rows(load_snapshot(session, report.version.snapshot_id).rows)
    base = report.version.path / "cross-encoder"
    no_steps = replace(SMOKE, max_steps=1, learning_rate=1e-12, head_learning_rate=None)
    tuned = train_reranker(collection, examples, tmp_path / "tuned", no_steps, settings, base_model=base)
    pair = [("vitamin D and bone density", "Vitamin D deficiency lowers bone mineral density.")]
    start, after = CrossEncoder(str(base)).predict(pair), CrossEncoder(str(tuned.path / "cross-encoder")).predict(pair)
    assert abs(float(start[0]) - float(after[0])) < 1e-3  # a near-zero step kept the base's head and weights


def test_base_names_and_altered_bases_are_refused(judged):
    from feedback.bases import BaseRerankerError, base_dir, parse_sources, verified_base

    settings, _, _ = judged
    assert parse_sources("scifact+covidqa") == parse_sources("covidqa + scifact") == ("covidqa", "scifact")
    with pytest.raises(BaseRerankerError, match="unknown base data"):
        parse_sources("wikipedia")
    sources = ("covidqa",)
    isolated = settings.model_copy(update={"cache_dir": settings.data_dir / "cache"})
    assert verified_base(sources, isolated) is None  # not built: the first training builds it
    folder = base_dir(sources, isolated)
    (folder / "cross-encoder").mkdir(parents=True)
    (folder / "cross-encoder" / "model.safetensors").write_bytes(b"weights")
    (folder / "base.json").write_text('{"sha256": "0000"}')
    with pytest.raises(BaseRerankerError, match="altered"):
        verified_base(sources, isolated)


def test_feedback_preview_shows_what_the_next_run_would_train_on(judged):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    settings, collection, _ = judged
    env = dict(os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), CITELOOP_RERANK_MAX_TOKENS="64", CITELOOP_RERANK_TOP_N="10")
    shown = subprocess.run([sys.executable, "-m", "cli", "feedback", "preview", collection], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "events_relevant" in shown.stdout and "curator_negative" in shown.stdout and "enough to train" in shown.stdout
    missing = subprocess.run([sys.executable, "-m", "cli", "feedback", "preview", "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "error:" in missing.stderr and "nope" in missing.stderr


def test_training_rows_take_a_questions_heaviest_positives_with_its_judged_negatives_first(judged, tmp_path):
    from feedback.examples import Labelled, TrainingExample
    from feedback.train_reranker import build_training_rows
    from retrieval.ingest import index_text
    from retrieval.retriever import CollectionRetriever

    settings, collection, data = judged
    retriever = CollectionRetriever(collection, settings)
    query = data.queries[sorted(data.queries)[0]]
    hits = retriever.search(query, k=10, mode="hybrid")
    texts = {h.chunk_id: index_text(h.title, h.text) for h in hits}
    positives = (Labelled(hits[0].chunk_id, 0.3), Labelled(hits[1].chunk_id, 1.0), Labelled(hits[2].chunk_id, 1.0))
    example = TrainingExample("q1", query, positives, (Labelled(hits[3].chunk_id),), source="feedback")

    rows = build_training_rows([example], retriever, replace(SMOKE, max_positives_per_query=2), tmp_path / "miner")
    assert {r["positive"] for r in rows} == {texts[hits[1].chunk_id], texts[hits[2].chunk_id]}  # the vote is left out
    assert len(rows) == 2  # equal weights once the vote is left out: one row each, not repeated against it
    assert all(r["negative_1"] == texts[hits[3].chunk_id] for r in rows)
    everything = build_training_rows([example], retriever, replace(SMOKE, max_positives_per_query=None), tmp_path / "miner")
    assert {r["positive"] for r in everything} == {texts[h.chunk_id] for h in hits[:3]}
