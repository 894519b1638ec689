"""ragas' judge-free metrics on `eval qa` rows: the library's own metrics on hand-made rows (values, rows a metric
does not apply to, failures counted and never averaged as zero), reference contexts found in a real collection, and
`eval qa --ragas` end to end with the small real generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest

from eval.qa import QuestionRow, ScoredRow
from eval.ragas_suite import add_ragas_metrics, non_llm_metrics, with_reference_contexts
from tests.conftest import REPO

PASSAGE = "Release 3 of the parser reads configuration files written in TOML."


def scored(answer, references=(), contexts=(), context_ids=(), reference_contexts=(), gold=(), error=None) -> dict:
    return asdict(ScoredRow(
        id=answer, question="What does release 3 read?", answerable=bool(references), answer=answer, abstained=False,
        abstain_reason=None, draft=answer, citations=[], context_doc_ids=list(context_ids), reference_doc_ids=list(gold),
        answer_f1=None, contains_reference=None, latency_ms=1.0, first_token_ms=None, error=error,
        references=list(references), reference_contexts=list(reference_contexts), retrieved_contexts=list(contexts),
    ))


def report_of(*rows) -> dict:
    return {"metrics": {"n": len(rows)}, "by_shape": {}, "rows": list(rows)}


def test_judge_free_metrics_score_rows_and_skip_those_they_do_not_apply_to():
    exact = scored("It reads TOML files [1].", ["It reads TOML files."], [PASSAGE, "Release 4 reads YAML."], ["d3", "d4"], [PASSAGE], ["d3", "d9"])
    unanswerable = scored("I don't know.", contexts=["Release 4 reads YAML."], context_ids=["d4"])
    failed = scored("", ["It reads TOML files."], gold=["d3"], error="generation took longer than 120 s")
    report = add_ragas_metrics(report_of(exact, unanswerable, failed))
    names = {m.name for m in non_llm_metrics()}
    assert names == {
        "non_llm_context_recall", "non_llm_context_precision_with_reference", "id_based_context_recall", "id_based_context_precision",
        "rouge_score", "non_llm_string_similarity", "exact_match", "string_present",
    }
    first = report["rows"][0]
    assert first["exact_match"] == 1.0 and first["string_present"] == 1.0 and first["rouge_score"] == 1.0  # markers stripped
    assert first["id_based_context_recall"] == 0.5 and first["id_based_context_precision"] == 0.5  # d3 of d3, d9; d3 of d3, d4
    assert first["non_llm_context_recall"] == 1.0 and first["non_llm_context_precision_with_reference"] == pytest.approx(1.0)
    # Without a reference answer, reference contexts or gold ids nothing applies to the unanswerable row; nothing
    # applies to a failed generation either.
    assert all(report["rows"][i][name] is None for i in (1, 2) for name in names)
    assert report["not_applicable"] == {name: 2 for name in names} and report["failures"] == {name: 0 for name in names}
    assert report["metrics"]["exact_match"] == 1.0 and report["metrics"]["n"] == 3


def test_a_metric_that_fails_is_counted_and_left_out_of_its_mean():
    ExactMatch = next(type(m) for m in non_llm_metrics() if m.name == "exact_match")

    class Flaky(ExactMatch):  # ragas' own metric, failing the ways a judged metric does: raising, or NaN
        async def _single_turn_ascore(self, sample, callbacks):
            if "raise" in sample.response:
                raise ValueError("unparseable judge output")
            return float("nan") if "nan" in sample.response else await super()._single_turn_ascore(sample, callbacks)

    rows = [scored(text, [text]) for text in ("right", "raise", "nan")]
    report = add_ragas_metrics(report_of(*rows), [Flaky(name="flaky_exact_match")])
    assert [r["flaky_exact_match"] for r in report["rows"]] == [1.0, None, None]
    assert report["failures"] == {"flaky_exact_match": 2} and report["metrics"]["flaky_exact_match"] == 1.0
    assert report["failure_examples"]["flaky_exact_match"] == "ValueError: unparseable judge output"
    assert add_ragas_metrics(report_of(scored("raise", ["x"])), [Flaky(name="flaky_exact_match")])["metrics"]["flaky_exact_match"] is None


@pytest.fixture
def releases(sqlite_settings):
    from retrieval.ingest import ingest
    from retrieval.readers import SourceDocument

    documents = [
        SourceDocument(f"release-{i}", f"release-{i}.txt", f"Release {i}", f"Release {i} of the parser reads configuration files written in {fmt}.", {"release": i})
        for i, fmt in enumerate(["TOML", "YAML", "JSON"])
    ]
    ingest(documents, "releases", sqlite_settings)
    return sqlite_settings


def test_reference_contexts_are_the_reference_documents_chunks_that_hold_the_answer(releases):
    rows = [
        QuestionRow("a", "What does release 1 read?", ["configuration files written in YAML"], ["release-1"]),
        QuestionRow("b", "What does release 2 read?", ["XML files"], ["release-2"]),  # in no chunk of its document
        QuestionRow("c", "What does release 0 read?", ["TOML"], ["release-0"], reference_contexts=["given"]),
        QuestionRow("d", "What does release 9 read?"),
    ]
    found = with_reference_contexts(rows, "releases", releases)
    assert found[0].reference_contexts == ["Release 1 of the parser reads configuration files written in YAML."]
    assert found[1].reference_contexts == [] and found[2].reference_contexts == ["given"] and found[3] == rows[3]


def test_reading_reference_contexts_names_the_line(tmp_path):
    from eval.qa import QuestionsFormatError, load_questions

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"user_input": "Q?", "reference": "A", "reference_contexts": ["P"]}) + "\n" + json.dumps({"user_input": "Q?", "reference_contexts": "P"}) + "\n")
    with pytest.raises(QuestionsFormatError, match=r"q.jsonl:2: 'reference_contexts' must be a list of strings"):
        load_questions(path)
    assert load_questions(path, limit=1)[0].reference_contexts == ["P"]
    path.write_text(json.dumps({"user_input": "Q?", "filters": {"product": "kettle", "lang": ["en", "de"]}}) + "\n" + json.dumps({"user_input": "Q?", "filters": {"product": {"x": 1}}}) + "\n")
    with pytest.raises(QuestionsFormatError, match=r"q.jsonl:2: 'filters' must map metadata keys to a value or a list of values"):
        load_questions(path)
    assert load_questions(path, limit=1)[0].filters == {"product": "kettle", "lang": ["en", "de"]}


@pytest.mark.slow
def test_eval_qa_with_ragas_writes_each_metric_its_failures_and_per_row_values(releases, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in [
        {"id": "1", "user_input": "Which format does release 1 read?", "reference": "YAML", "reference_doc_ids": ["release-1"]},
        {"id": "2", "user_input": "Which format does release 7 read?"},
        # scoped to another release's documents: its answer and its stage rankings come from those alone
        {"id": "3", "user_input": "Which format does release 1 read?", "reference": "YAML", "reference_doc_ids": ["release-1"], "filters": {"release": [0, 2]}},
    ]) + "\n")
    out = tmp_path / "report.json"
    env = dict(os.environ, CITELOOP_DATA_DIR=str(releases.data_dir), CITELOOP_GENERATOR="smollm2-135m", CITELOOP_MAX_NEW_TOKENS="24")

    def eval_qa(*options):
        return subprocess.run(
            [sys.executable, "-m", "cli", "eval", "qa", str(questions), "--collection", "releases", *options],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )

    no_reranker = eval_qa("--stages", "hybrid,rerank", "--json", str(out))
    assert no_reranker.returncode == 1 and "needs a reranker" in no_reranker.stderr and not out.exists()  # before answering
    done = eval_qa("--ragas", "--stages", "bm25,dense,hybrid", "--json", str(out), "--report", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plotly" in (tmp_path / "report.html").read_text()
    report = json.loads(out.read_text())
    names = {m.name for m in non_llm_metrics()}
    assert names <= set(report["metrics"]) and set(report["failures"]) == names and "ragas failures" in done.stdout
    first, second, scoped = report["rows"]
    assert set(scoped["context_doc_ids"]) <= {"release-0", "release-2"} and scoped["id_based_context_recall"] == 0.0
    assert first["reference_contexts"] == ["Release 1 of the parser reads configuration files written in YAML."]
    assert first["id_based_context_recall"] == 1.0  # the gold document is retrieved among 3
    assert all(first[name] is not None for name in names) and all(second[name] is None for name in names)
    # The run is kept, with its metrics and the model that answered.
    from citeloop.db import session_scope
    from eval.runs import get_run

    with session_scope(releases) as session:
        run = get_run(session, report["run_id"])
    assert run.collection == "releases" and run.metrics == report["metrics"] and run.models["generator"].startswith("smollm2-135m@")
    assert run.config["ragas"] is True and run.config["settings"]["generator"] == "smollm2-135m" and len(run.rows) == 3
    stages = run.metrics["retrieval_stages"]
    assert list(stages) == ["bm25", "dense", "hybrid"] and stages["hybrid"]["queries"] == 2  # the questions with a reference document
    assert stages["dense"]["recall@100"] == 0.5  # the scoped question's reference document is outside its filter


def test_questions_are_read_from_saved_datasets_and_parquet(tmp_path):
    from datasets import Dataset, DatasetDict

    from eval.qa import QuestionsFormatError, load_questions

    rows = [
        {"id": "a", "user_input": "What does release 1 read?", "reference": "YAML", "reference_contexts": ["Release 1 reads YAML."], "filters": {"release": 1}},
        {"id": "b", "user_input": "Who won in 1966?", "reference": None, "reference_contexts": [], "filters": {"lang": "en"}},
    ]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "q.parquet"))
    DatasetDict({"dev": Dataset.from_list(rows[:1]), "test": Dataset.from_list(rows[1:])}).save_to_disk(str(tmp_path / "saved"))
    from_parquet = load_questions(tmp_path / "q.parquet")
    assert [(q.id, q.references, q.reference_contexts, q.filters) for q in from_parquet] == [
        ("a", ["YAML"], ["Release 1 reads YAML."], {"release": 1}),  # the columnar file's other filter key, unset here, is dropped
        ("b", [], [], {"lang": "en"}),
    ]
    assert [q.id for q in load_questions(tmp_path / "saved", split="test")] == ["b"]
    with pytest.raises(QuestionsFormatError, match="a dataset with splits dev, test: choose one with --split"):
        load_questions(tmp_path / "saved")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuestionsFormatError, match="empty: not a Hugging Face dataset saved with save_to_disk"):
        load_questions(tmp_path / "empty")
