"""The history of `eval qa` runs: stored with their questions' digest, models and settings, listed newest first,
compared with paired bootstrap intervals over shared questions, and read over real HTTP within a key's reach."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from citeloop.db import session_scope
from citeloop.errors import NotFoundError
from eval.qa import QuestionRow
from eval.runs import compare_runs, get_run, list_runs, questions_sha256, save_run
from retrieval.ingest import get_or_create_collection

QUESTIONS = [QuestionRow(str(i), f"What does release {i} read?", [f"Release {i} reads TOML."], [f"d{i}"]) for i in range(12)]


def report(f1s: list[float], rouge: list[float | None], generator: str, precision: float) -> dict:
    rows = [
        {"id": q.id, "question": q.question, "answer": f"answer {f1}", "answer_f1": f1, "contains_reference": f1 > 0.5, "latency_ms": 100.0,
         "abstained": False, "error": None, "rouge_score": r}
        for q, f1, r in zip(QUESTIONS, f1s, rouge)
    ]
    return {
        "metrics": {"n": len(rows), "answer_f1": sum(f1s) / len(f1s), "citation_precision": precision, "rouge_score": 0.5, "latency_p50_ms": 100.0},
        "models": {"generator": generator}, "rows": rows, "failures": {"rouge_score": 1},
    }


@pytest.fixture
def runs(settings):
    with session_scope(settings) as session:
        for name in ("docs", "other"):
            get_or_create_collection(session, name)
    base = report([0.2] * 12, [0.4] * 11 + [None], "base", 0.6)
    better = report([0.6] * 11 + [0.1], [0.5] * 12, "candidate", 0.7)
    with session_scope(settings) as session:
        a = save_run(session, "docs", "q.jsonl", QUESTIONS, base, {"limit": None}, "cli")
        b = save_run(session, "docs", "q.jsonl", QUESTIONS, better, {"limit": None}, "cli")
        c = save_run(session, "other", "o.jsonl", QUESTIONS[:3], report([0.1] * 3, [0.1] * 3, "base", 0.1), {}, "cli")
    return settings, a, b, c


def test_runs_are_kept_listed_newest_first_and_found_by_id(runs):
    settings, a, b, c = runs
    with session_scope(settings) as session:
        assert [r.id for r in list_runs(session)] == [c.id, b.id, a.id]
        assert [r.id for r in list_runs(session, {"docs"})] == [b.id, a.id] and list_runs(session)[0].rows == []  # summaries
        stored = get_run(session, a.id)
        with pytest.raises(NotFoundError, match="no evaluation run 'run-nope'"):
            get_run(session, "run-nope")
    assert stored.questions_sha256 == questions_sha256(QUESTIONS) != c.questions_sha256
    assert stored.models == {"generator": "base"} and stored.failures == {"rouge_score": 1} and len(stored.rows) == 12


def test_a_comparison_pairs_questions_and_bounds_the_difference(runs):
    settings, a, b, c = runs
    with session_scope(settings) as session:
        comparison = compare_runs(get_run(session, a.id), get_run(session, b.id))
        unrelated = compare_runs(get_run(session, a.id), get_run(session, c.id))
    f1 = comparison["metrics"]["answer_f1"]
    assert comparison["same_questions"] and comparison["shared_questions"] == 12 and f1["paired_questions"] == 12
    assert f1["mean_paired_difference"] == pytest.approx((11 * 0.4 - 0.1) / 12, abs=1e-4) and 0 < f1["ci95"][0] < f1["ci95"][1]
    rouge = comparison["metrics"]["rouge_score"]
    assert rouge["paired_questions"] == 11  # the row run A failed on is not paired
    precision = comparison["metrics"]["citation_precision"]
    assert precision["difference"] == pytest.approx(0.1) and "ci95" not in precision  # no value per question
    assert [q["id"] for q in comparison["changed_most"]][:1] == ["0"] and comparison["changed_most"][0]["answer_f1"] == {"a": 0.2, "b": 0.6}
    assert not unrelated["same_questions"] and unrelated["shared_questions"] == 3


@pytest.mark.slow
def test_runs_are_read_over_http_within_a_keys_reach(runs):
    from citeloop.keys import create_key
    from tests.test_api_in_process import served

    settings, a, b, c = runs
    admin = create_key("admin", "admin", ["*"], settings)
    reader = create_key("other-reader", "reader", ["other"], settings)
    with served(settings) as (base, _app, _loop):
        as_admin = {"Authorization": f"Bearer {admin}"}
        as_reader = {"Authorization": f"Bearer {reader}"}
        everything = httpx.get(f"{base}/v1/evals", headers=as_admin).json()
        assert [r["id"] for r in everything] == [c.id, b.id, a.id] and "rows" not in everything[0]
        assert [r["id"] for r in httpx.get(f"{base}/v1/evals", headers=as_reader).json()] == [c.id]
        detail = httpx.get(f"{base}/v1/evals/{a.id}", headers=as_admin).json()
        assert len(detail["rows"]) == 12 and detail["metrics"]["citation_precision"] == 0.6 and detail["failures"] == {"rouge_score": 1}
        hidden = httpx.get(f"{base}/v1/evals/{a.id}", headers=as_reader)
        assert hidden.status_code == 404 and f"no evaluation run '{a.id}'" in hidden.text
        assert httpx.get(f"{base}/v1/evals", params={"collection": "docs"}, headers=as_reader).status_code == 404
        assert httpx.get(f"{base}/v1/evals").status_code == 401


def test_a_stored_run_is_logged_to_mlflow_when_a_tracking_uri_is_set(runs, tmp_path, caplog, monkeypatch):
    from mlflow import MlflowClient

    from eval.runs import track_run

    settings, a, _, _ = runs
    with session_scope(settings) as session:
        run = get_run(session, a.id)
    assert track_run(run, settings) is None  # off by default
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    monkeypatch.chdir(tmp_path / "tracking")
    staged = run.metrics | {"retrieval_stages": {"hybrid": {"ndcg@10": 0.7}}}
    tracked = track_run(replace(run, metrics=staged, config={"settings": {"generator": "base"}}), settings.model_copy(update={"mlflow_uri": uri}))
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(tracked)
    assert client.get_experiment(logged.info.experiment_id).name == "citeloop/docs" and logged.info.run_name == a.id
    assert logged.data.metrics["answer_f1"] == pytest.approx(0.2) and logged.data.metrics["failures.rouge_score"] == 1
    assert logged.data.metrics["retrieval_stages.hybrid.ndcg_10"] == 0.7  # "@" is not a character MLflow keys take
    assert logged.data.params == {"settings.generator": "base", "models.generator": "base"}
    assert logged.data.tags["citeloop.questions_sha256"] == run.questions_sha256 and logged.info.status == "FINISHED"
    rows = client.download_artifacts(tracked, "rows.json", str(tmp_path))
    assert [r["id"] for r in json.loads(Path(rows).read_text())] == [q.id for q in QUESTIONS]
    assert sorted(p.name for p in (tmp_path / "tracking").iterdir()) == ["mlflow-artifacts", "mlflow.db"]  # beside the store
    # A tracking URI MLflow cannot use is a warning: the run stays in citeloop's history.
    with caplog.at_level("WARNING", logger="eval.runs"):
        assert track_run(run, settings.model_copy(update={"mlflow_uri": "unknown-scheme://tracking"})) is None
    assert f"eval run {a.id} was not logged to MLflow" in caplog.text
