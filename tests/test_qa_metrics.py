"""QA metrics on hand-made rows: SQuAD F1, and how citations, contexts and abstentions are counted."""

import json

import pytest

from eval.qa import QuestionsFormatError, ScoredRow, load_questions, summarize, token_f1


def row(answerable=True, abstained=False, cited=(), contexts=(), gold=("d1",), f1=0.5, contains=False, latency=100.0):
    return ScoredRow(
        id="q", question="?", answerable=answerable, answer="a", abstained=abstained, abstain_reason=None, draft="a",
        citations=[{"doc_id": d, "supported": s} for d, s in cited], context_doc_ids=list(contexts),
        reference_doc_ids=list(gold) if answerable else [], answer_f1=f1 if answerable else None,
        contains_reference=contains if answerable else None, latency_ms=latency, first_token_ms=latency / 2,
    )


def test_token_f1_is_squads():
    assert token_f1("The cat sat.", "a cat sat") == 1.0
    assert token_f1("cat", "cat sat") == pytest.approx(2 / 3, abs=1e-4)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "cat") == 0.0


def test_summary_counts_supported_citations_gold_contexts_and_refusals():
    metrics = summarize(
        [
            row(cited=[("d1", True), ("d2", True), ("d1", False)], contexts=["d2", "d1"], f1=1.0, contains=True),
            row(cited=[("d9", True)], contexts=["d9"], f1=0.0),
            row(abstained=True, contexts=["d1"], f1=0.0),
            row(answerable=False, abstained=True),
            row(answerable=False, abstained=False),
        ]
    )
    assert metrics["n"] == 5 and metrics["answerable"] == 3 and metrics["unanswerable"] == 2
    assert metrics["citation_precision"] == pytest.approx(1 / 3, abs=1e-4)  # supported citations: d1 (gold), d2, d9
    assert metrics["citation_recall"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["context_recall_at_k"] == pytest.approx(2 / 3, abs=1e-4)
    assert metrics["decline_rate_answerable"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["refusal_rate_unanswerable"] == 0.5
    assert metrics["answer_contains_reference"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["unsupported_citation_rate"] == pytest.approx(1 / 4, abs=1e-4)


def test_question_files_are_checked_line_by_line(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"id": 7, "user_input": "Why?", "reference_answers": ["Because."], "reference_doc_ids": [3]}) + "\n\n")
    (loaded,) = load_questions(good)
    assert (loaded.id, loaded.references, loaded.doc_ids, loaded.answerable) == ("7", ["Because."], ["3"], True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "question": "no user_input"}) + "\n")
    with pytest.raises(QuestionsFormatError, match=r"bad.jsonl:1: .*user_input"):
        load_questions(bad)
    with pytest.raises(QuestionsFormatError, match="no such file"):
        load_questions(tmp_path / "missing.jsonl")


def test_split_and_shape_select_and_group_rows(tmp_path):
    from eval.qa import evaluate_qa

    questions = tmp_path / "suite.jsonl"
    rows = [
        {"id": "f1", "user_input": "Which?", "reference": "x", "shape": "factoid", "split": "dev"},
        {"id": "f2", "user_input": "Which one?", "reference": "y", "shape": "factoid", "split": "heldout"},
        {"id": "p1", "user_input": "How do I?", "reference": "1. a 2. b", "shape": "procedural", "split": "heldout"},
        {"id": "u1", "user_input": "Where?", "shape": "unanswerable", "split": "heldout"},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout = load_questions(questions, split="heldout")
    assert [r.id for r in heldout] == ["f2", "p1", "u1"] and [r.shape for r in heldout] == ["factoid", "procedural", "unanswerable"]
    assert [r.id for r in load_questions(questions, limit=1, offset=1, split="heldout")] == ["p1"]
    with pytest.raises(QuestionsFormatError, match="no questions in split 'test'"):
        load_questions(questions, split="test")

    class Refusal:  # the shape of an Answer that declined, without contexts
        answer, abstained, abstain_reason, draft, extractive, citations, contexts = "I don't know.", True, "model_declined", "", False, [], []
        timings_ms, models = {"total": 5.0}, {"generator": "g@1"}

    report = evaluate_qa(heldout, lambda _question, filters: Refusal())
    assert set(report["by_shape"]) == {"factoid", "procedural", "unanswerable"}
    assert report["by_shape"]["factoid"]["decline_rate_answerable"] == 1.0
    assert report["by_shape"]["unanswerable"]["refusal_rate_unanswerable"] == 1.0
    assert report["by_shape"]["unanswerable"]["decline_rate_answerable"] is None
    assert report["metrics"]["answerable"] == 2 and report["metrics"]["unanswerable"] == 1
    assert report["models"] == {"generator": "g@1"}
