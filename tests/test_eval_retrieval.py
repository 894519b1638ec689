"""`citeloop eval retrieval` on a small BEIR directory built from real SciFact claims."""

import json
import shutil

import pytest

from eval.beir import BeirFormatError, load_split
from eval.retrieval import ensure_eval_collection, evaluate_retrieval, score_runs


def test_metrics_json_shape_and_quality(tiny_beir, sqlite_settings):
    metrics = evaluate_retrieval(tiny_beir, "test", ["bm25", "dense", "hybrid"], sqlite_settings)
    assert list(metrics) == ["bm25", "dense", "hybrid"]
    for stage in metrics.values():
        assert set(stage) == {"ndcg@10", "recall@100", "mrr@10", "queries"}
        assert stage["queries"] == 40
    # 40 claims over ~200 abstracts: every stage must find most cited abstracts.
    assert metrics["bm25"]["ndcg@10"] > 0.5
    assert metrics["dense"]["ndcg@10"] > 0.5
    assert metrics["hybrid"]["recall@100"] > 0.9
    # The corpus collection is cached by content hash: a second run re-uses it.
    again = evaluate_retrieval(tiny_beir, "test", ["bm25"], sqlite_settings)
    assert again["bm25"] == metrics["bm25"]
    json.dumps(metrics)


def test_the_same_corpus_in_another_folder_is_the_same_collection(tiny_beir, sqlite_settings, tmp_path):
    other = tmp_path / "other-queries"
    shutil.copytree(tiny_beir, other)
    (other / "qrels" / "test.tsv").write_text("\n".join((tiny_beir / "qrels" / "test.tsv").read_text().splitlines()[:6]) + "\n")
    assert ensure_eval_collection(other, sqlite_settings) == ensure_eval_collection(tiny_beir, sqlite_settings)
    assert evaluate_retrieval(other, "test", ["bm25"], sqlite_settings)["bm25"]["queries"] < 40


def test_score_runs_against_hand_computed_values():
    qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
    runs = {"s": {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {}}}
    scores = score_runs(qrels, runs)["s"]
    assert scores["mrr@10"] == pytest.approx(0.25)  # q1: 1/2, q2: nothing found
    assert scores["recall@100"] == pytest.approx(0.5)


def test_bad_beir_directories_are_named(tmp_path):
    with pytest.raises(BeirFormatError, match="corpus.jsonl"):
        load_split(tmp_path, "test")
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(BeirFormatError, match="qrels"):
        load_split(tmp_path, "test")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    with pytest.raises(BeirFormatError, match="test.tsv:2"):
        load_split(tmp_path, "test")


def test_judged_not_relevant_chunks_count_as_not_relevant():
    qrels = {"q": {"a": 1, "b": 0}}
    assert score_runs(qrels, {"s": {"q": {"a": 2.0, "b": 1.0}}})["s"]["ndcg@10"] == pytest.approx(1.0)
    assert score_runs(qrels, {"s": {"q": {"b": 2.0, "a": 1.0}}})["s"]["ndcg@10"] == pytest.approx(1 / 1.5849625, rel=1e-4)
