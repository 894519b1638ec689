"""The generator gate's rules on `eval qa` results, the questions it is gated on (from held-out preference pairs),
the replay harness's simulated user and curator, and job options per kind: pure functions, checked on hand-made
results."""

from __future__ import annotations

from pathlib import Path

import pytest

from citeloop.config import Settings
from eval.answer_feedback_loop import correction_text, gold_source, liked, split_questions
from eval.qa import QuestionRow
from feedback.examples import is_holdout, query_key
from feedback.generator_loop import gate_questions, qa_gate_decision
from feedback.jobs import JobError, check_options
from feedback.trainset import PairRow
from generation.prompt import PROMPT_FORMAT, REFUSAL


def result(f1: list[float], declined: list[bool], refused_unanswerable: list[bool]) -> dict:
    """An evaluate_qa result: answerable rows with their F1 and declines, then unanswerable rows."""
    rows = [{"id": f"a{i}", "answerable": True, "answer_f1": v} for i, v in enumerate(f1)]
    rows += [{"id": f"u{i}", "answerable": False, "answer_f1": None} for i in range(len(refused_unanswerable))]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    metrics = {
        "answer_f1": mean(f1), "decline_rate_answerable": mean(declined), "refusal_rate_unanswerable": mean(refused_unanswerable),
        "answerable": len(f1), "unanswerable": len(refused_unanswerable),
    }
    return {"metrics": metrics, "rows": rows}


SETTINGS = Settings(data_dir=Path("/nonexistent"))
BASE_F1 = [0.2, 0.3, 0.1, 0.4, 0.25, 0.3, 0.2, 0.35, 0.15, 0.3]


def test_a_consistently_better_generator_passes():
    base = result(BASE_F1, [False] * 10, [True, False])
    better = result([v + 0.2 for v in BASE_F1], [False] * 10, [True, False])
    decision = qa_gate_decision(better, base, "the base generator", SETTINGS)
    assert decision.passed and decision.gain == pytest.approx(0.2) and decision.ci_low > 0, decision.reason


def test_a_lucky_gain_on_one_question_does_not_pass():
    base = result(BASE_F1, [False] * 10, [])
    lucky = result([BASE_F1[0] + 0.9, *BASE_F1[1:]], [False] * 10, [])
    decision = qa_gate_decision(lucky, base, "the base generator", SETTINGS)
    assert not decision.passed and "lower bound" in decision.reason


def test_more_declines_or_fewer_refusals_fail_whatever_the_f1():
    base = result(BASE_F1, [False] * 10, [True, True])
    declining = result([v + 0.2 for v in BASE_F1], [True] + [False] * 9, [True, True])  # +0.10 > 0.05
    assert "decline rate on answerable questions rose by 0.1000" in qa_gate_decision(declining, base, "b", SETTINGS).reason
    answering = result([v + 0.2 for v in BASE_F1], [False] * 10, [True, False])
    decision = qa_gate_decision(answering, base, "b", SETTINGS)
    assert not decision.passed and "refusal of unanswerable questions fell" in decision.reason


def test_a_candidate_whose_ragas_answer_metric_falls_is_refused_whatever_the_f1():
    base = result(BASE_F1, [False] * 10, [])
    better = result([v + 0.2 for v in BASE_F1], [False] * 10, [])
    for i, (ours, theirs) in enumerate(zip(better["rows"], base["rows"])):
        ours["rouge_score"], theirs["rouge_score"] = 0.2 + 0.01 * i, 0.5 + 0.01 * i
        ours["non_llm_string_similarity"] = theirs["non_llm_string_similarity"] = 0.4
    decision = qa_gate_decision(better, base, "b", SETTINGS)
    assert not decision.passed and "ragas rouge_score fell by 0.3000" in decision.reason
    for ours, theirs in zip(better["rows"], base["rows"]):
        ours["rouge_score"] = theirs["rouge_score"]
    assert qa_gate_decision(better, base, "b", SETTINGS).passed


def pair(query_id: str, chosen: str, answer_id: str) -> PairRow:
    return PairRow(query_id, f"question {query_id}", (("user", "q"),), PROMPT_FORMAT, chosen, "wrong [1].", "correction", 1.0, answer_id, ("e",))


def test_gate_questions_take_references_and_gold_documents_from_the_chosen_answers():
    pairs = [
        pair("q1", "Release 3 reads TOML files [2].", "a1"),
        pair("q2", REFUSAL, "a2"),
        pair("q3", REFUSAL, "a3"),
        pair("q3", "It reads YAML [1].", "a4"),  # answered by one pair: answerable
    ]
    contexts = {"a1": ["d1", "d2"], "a2": ["d5"], "a3": ["d6"], "a4": ["d7", "d8"]}
    rows = {r.id: r for r in gate_questions(pairs, contexts)}
    assert rows["q1"].references == ["Release 3 reads TOML files."] and rows["q1"].doc_ids == ["d2"]
    assert not rows["q2"].answerable and rows["q2"].doc_ids == []
    assert rows["q3"].answerable and rows["q3"].doc_ids == ["d7"]


def test_the_simulated_user_likes_matching_answers_that_cite_a_gold_document():
    row = QuestionRow("1", "What does release 3 read?", ["Release 3 reads TOML files."], ["d3"])
    answer = {"abstained": False, "answer": "Release 3 reads TOML files [1].", "citations": [{"doc_id": "d3"}]}
    assert liked(row, answer)
    assert not liked(row, answer | {"citations": [{"doc_id": "d9"}]})  # right words, wrong source
    assert not liked(row, answer | {"answer": "It reads YAML [1]."})
    assert not liked(row, answer | {"abstained": True})
    shown = [{"doc_id": "d9", "text": "Release 3 reads TOML files."}, {"doc_id": "d3", "text": "Release 3 notes."}, {"doc_id": "d3", "text": "It reads TOML files."}]
    assert gold_source(row, shown) == 3  # the gold document's source holding most of the reference
    assert gold_source(row, shown[:1]) is None
    assert correction_text(row, shown) == "Release 3 reads TOML files. [3]"  # a full answer: written as it is
    assert correction_text(row, shown[:1]) is None
    # A span of a source sentence (extractive QA references): the curator writes the sentence it comes from.
    span = QuestionRow("3", "What does release 4 read?", ["TOML files"], ["d4"])
    source = [{"doc_id": "d4", "text": "Release 4 came out in May. Since then, release 4 reads TOML files only. It is fast."}]
    assert correction_text(span, source) == "Since then, release 4 reads TOML files only. [1]"
    year = QuestionRow("4", "When?", ["2"], ["d4"])  # a number is no span of a longer one
    assert correction_text(year, [{"doc_id": "d4", "text": "It came out in 2020. It is fast."}]) == "2 [1]"
    unanswerable = QuestionRow("2", "What does release 99 read?")
    assert liked(unanswerable, {"abstained": True, "answer": REFUSAL, "citations": []})


def test_the_harness_never_tests_on_a_question_it_asked(tmp_path):
    lines = [f'{{"id": "{i}", "user_input": "question number {i}?", "reference": "r"}}' for i in range(40)]
    dev, test = tmp_path / "dev.jsonl", tmp_path / "test.jsonl"
    dev.write_text("\n".join(lines) + "\n")
    asked, tested = split_questions(dev, dev, None, 0.2)  # one file: a held-out slice is the test set
    assert asked and tested and not {r.question for r in asked} & {r.question for r in tested}
    # The job's gate holds out its own slice of the asked questions' pairs: some must be left for it.
    assert any(is_holdout(query_key(r.question), 0.2) for r in asked)
    test.write_text("\n".join(lines[:5] + ['{"id": "new", "user_input": "a question never asked?", "reference": "r"}']) + "\n")
    asked, tested = split_questions(dev, test, None, 0.2)
    assert len(asked) == 40 and [r.id for r in tested] == ["new"]
    with pytest.raises(ValueError, match="both need some"):
        split_questions(dev, dev, None, 0.0001)


def test_the_harness_replays_on_a_copy_of_a_collection_and_never_touches_the_collection(tmp_path, monkeypatch):
    from citeloop.catalog import list_collections
    from citeloop.errors import UnknownCollectionError
    from eval.answer_feedback_loop import copy_collection
    from eval.feedback_loop import harness_settings, service_environment
    from retrieval.ingest import ingest
    from retrieval.readers import SourceDocument
    from retrieval.retriever import CollectionRetriever

    service = Settings(data_dir=tmp_path / "service")
    documents = [
        SourceDocument("guide/install.md", "docs/guide/install.md", "Installing", "Run the installer, then restart the shell.", {"team": "platform"}),
        SourceDocument("guide/upgrade.md", "docs/guide/upgrade.md", "Upgrading", "Stop the service before you upgrade it.", {}),
    ]
    ingest(documents, "handbook", service)
    # Whatever database, queue and tracking server the environment names, the harness and its server and worker
    # keep to the harness's own data directory.
    monkeypatch.setenv("CITELOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    monkeypatch.setenv("CITELOOP_QUEUE_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CITELOOP_MLFLOW_URI", "http://127.0.0.1:5000")
    harness = harness_settings(tmp_path / "harness")
    assert harness.sqlalchemy_url.endswith("harness/citeloop.db") and harness.queue_url is None and harness.mlflow_uri is None
    environment = service_environment(harness)
    assert environment["CITELOOP_DATA_DIR"] == str(harness.data_dir)
    assert environment["CITELOOP_DATABASE_URL"] == environment["CITELOOP_QUEUE_URL"] == environment["CITELOOP_MLFLOW_URI"] == ""
    copy_collection("handbook", service, harness)
    [copied] = [c for c in list_collections(harness) if c.name == "handbook"]
    [original] = [c for c in list_collections(service) if c.name == "handbook"]
    assert (copied.documents, copied.chunks) == (original.documents, original.chunks) == (2, 2)
    hits = CollectionRetriever("handbook", harness).search("how do I upgrade", k=1, filters={"team": "platform"})
    assert [h.doc_id for h in hits] == ["guide/install.md"]  # metadata came along: the filter still selects
    with pytest.raises(ValueError, match="is the service's"):
        copy_collection("handbook", service, service)
    on_another_database = service.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'service-db-elsewhere.db'}"})
    with pytest.raises(ValueError, match="is the service's"):  # its indexes, queue and models are in that folder
        copy_collection("handbook", on_another_database, harness_settings(tmp_path / "service"))
    with pytest.raises(UnknownCollectionError):
        copy_collection("no-such-collection", service, harness_settings(tmp_path / "other"))


def test_job_options_are_checked_per_kind():
    assert check_options("generator", {"bf16": True, "max_steps": 3}) == {"bf16": True, "max_steps": 3}
    with pytest.raises(JobError, match="'max_steps' must be a int"):
        check_options("generator", {"max_steps": True})  # a bool is an int to Python, not to a trainer
    with pytest.raises(JobError, match="a generator job may set"):
        check_options("generator", {"hard_negatives": 2})
    with pytest.raises(JobError, match="a reranker job may set"):
        check_options("reranker", {"beta": 0.2})
    assert check_options("generator", {"bf16": None}) == {"bf16": None}  # None: the host decides
    with pytest.raises(JobError, match="'bf16' must be a bool or null"):
        check_options("generator", {"bf16": "yes"})
    assert check_options("reward", {"epochs": 2, "learning_rate": 1e-4}) == {"epochs": 2, "learning_rate": 1e-4}
    with pytest.raises(JobError, match="a reward job may set"):
        check_options("reward", {"lora_rank": 4})
