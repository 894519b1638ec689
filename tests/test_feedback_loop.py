"""The replay harness end to end on a tiny SciFact directory: a real `citeloop serve` and `citeloop worker`, a
simulated curator over HTTP, a training job from its feedback, the test split scored before and after. Smoke-sized
training (the gains are measured in bench/README.md)."""

from __future__ import annotations

import pytest

from eval.beir import load_split
from eval.feedback_loop import run_feedback_loop
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.examples import is_holdout

pytestmark = pytest.mark.slow
SMOKE = RerankerTrainingArgs(epochs=1, max_steps=2, batch_size=4, hard_negatives=2, random_negatives=1, max_tokens=64)


def test_the_harness_trains_from_simulated_feedback_and_scores_before_and_after(tiny_beir, tmp_path, monkeypatch):
    monkeypatch.setenv("CITELOOP_TRAINING_MIN_QUERIES", "5")  # a tiny data set (the server and worker inherit it)
    report = run_feedback_loop(tiny_beir, "test", "test", noise=0.2, curve=[30], k=5, data_dir=tmp_path / "loop", args=SMOKE, progress=lambda m: None)
    queries = load_split(tiny_beir, "test").qrels
    held_out = {q for q in queries if is_holdout(q, 0.2)}
    assert report["test_queries"] == len(held_out) and report["train_queries"] == len(queries) - len(held_out)
    assert report["feedback_events"] == report["curator"]["judgements"] == 5 * report["train_queries"]
    assert 0 < report["curator"]["flipped"] < report["feedback_events"]
    assert set(report["before"]) == {"bm25", "dense", "hybrid"} and set(report["after"]) == {"hybrid", "rerank"}
    assert report["before"]["hybrid"] == report["after"]["hybrid"]  # the same queries, the same first stage
    assert [p["queries"] for p in report["curve"]] == [30, report["train_queries"]]
    assert report["curve"][0]["feedback_events"] == 150 and report["train_seconds"] > 0
    assert report["job"]["promoted"] == report["job"]["gate"]["passed"]
