"""Every `eval qa` run, kept: which questions (file and digest), which models, which settings, and its metrics and
rows; `compare_runs` sets two runs side by side. A reranker gate's rankings are kept the same way (`save_ranking_run`:
a row per query with its nDCG@10 and top 10), so its decisions are read, compared and reported like an answer gate's.

A comparison pairs the runs' rows by question id. Each metric that is the mean of a value per row (answer F1,
whether the answer contains the reference, each ragas metric, a ranking's nDCG@10) gets the mean per-question difference B - A with its
paired bootstrap 95% interval over the questions both runs scored; the others (citation precision, the decline and
refusal rates, latency percentiles, counts) get their difference alone. The questions whose answer F1 (a ranking's
nDCG@10) moved most are listed with both answers.

With CITELOOP_MLFLOW_URI set, each stored run is also logged to that MLflow tracking server or store (`track_run`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from citeloop.config import Settings
from citeloop.db import Collection, EvalRun, get_collection
from citeloop.errors import NotFoundError
from citeloop.registry import summary
from eval.qa import QuestionRow

# Row fields that are per-question values of a summary metric (the summary's name -> the row's field).
ROW_METRICS = {"answer_f1": "answer_f1", "answer_contains_reference": "contains_reference", "ndcg@10": "ndcg@10"}
# The per-question value a comparison lists the most-changed questions by: answer runs', else ranking runs'.
CHANGE_METRICS = ("answer_f1", "ndcg@10")
RANKING = "ranking"  # config["kind"] of a stored ranking (a reranker gate's evaluation)
CHANGED_QUESTIONS = 5


@dataclass(frozen=True)
class EvalRunInfo:
    id: str
    collection: str
    questions: str
    questions_sha256: str
    models: dict
    config: dict
    metrics: dict
    failures: dict  # ragas metric -> rows it failed on
    rows: list[dict]
    created_by: str
    created_at: datetime


def questions_sha256(rows: list[QuestionRow]) -> str:
    """Digest of what was asked and what counts as right: two runs with the same one answered the same set."""
    payload = [[r.id, r.question, r.references, r.doc_ids, r.reference_contexts, r.shape] + ([r.filters] if r.filters else []) for r in rows]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_run(session: Session, collection: str, questions: str, rows: list[QuestionRow], report: dict, config: dict, created_by: str) -> EvalRunInfo:
    return _save(
        session, collection, questions, questions_sha256(rows), report.get("models") or {}, config, report["metrics"],
        report.get("failures") or {}, report["rows"], created_by,
    )


def rankings_sha256(queries: dict[str, str], qrels: dict[str, dict[str, int]], level: str) -> str:
    """Digest of the queries ranked and their judgements: two rankings with the same one were scored alike."""
    payload = [level] + [[q, queries[q], sorted(qrels.get(q, {}).items())] for q in sorted(queries)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def save_ranking_run(
    session: Session, collection: str, questions: str, queries: dict[str, str], qrels: dict[str, dict[str, int]], level: str,
    scores: dict, models: dict, config: dict, created_by: str,
) -> EvalRunInfo:
    """One stage's scores of labelled queries (`eval.retrieval.evaluate_collection` with `per_query`) as a stored
    run: its mean metrics, and a row per query with its nDCG@10, the ids judged relevant and its top 10 as ranked."""
    per_query, ranked = scores["per_query"], scores.get("ranked", {})
    rows = [
        {
            "id": q, "question": queries[q], "ndcg@10": per_query[q],  # unrounded: `eval compare` redoes the gate's interval
            "relevant": sorted(i for i, grade in qrels.get(q, {}).items() if grade > 0), "ranked": ranked.get(q, []),
        }
        for q in sorted(per_query)
    ]
    metrics = summary(scores)
    judged = {q: queries[q] for q in per_query}
    return _save(session, collection, questions, rankings_sha256(judged, qrels, level), models, config | {"kind": RANKING, "level": level}, metrics, {}, rows, created_by)


def _save(session: Session, collection: str, questions: str, digest: str, models: dict, config: dict, metrics: dict, failures: dict, rows: list[dict], created_by: str) -> EvalRunInfo:
    record = EvalRun(
        id=f"run-{uuid.uuid4().hex[:12]}", collection_id=get_collection(session, collection).id, questions=questions,
        questions_sha256=digest, models=models, config=config, metrics=metrics, failures=failures, rows=rows, created_by=created_by,
    )
    session.add(record)
    session.flush()
    return _info(record, collection)


log = logging.getLogger(__name__)


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys ("by_shape.factoid.answer_f1")."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        out |= _flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return out


def _mlflow_key(name: str) -> str:
    """MLflow keys take letters, digits and `_-. /` only: "ndcg@10" becomes "ndcg_10"."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store go beside it (MLflow's default is the working directory); a tracking server
    chooses its own (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts" / experiment.replace("/", "-")).as_uri()


def track_run(run: EvalRunInfo, settings: Settings) -> str | None:
    """Log a stored run to MLflow (CITELOOP_MLFLOW_URI; None when unset): experiment `citeloop/<collection>`, run
    name the citeloop run id; parameters from its settings and models, every numeric metric (retrieval stages and
    shapes by dotted names, failures per metric as `failures.<metric>`), tags naming the questions and who ran it,
    and the per-question rows as the artifact `rows.json`. Returns the MLflow run id. A tracking server that fails
    is logged and the evaluation goes on: the run is already in citeloop's own history."""
    if not settings.mlflow_uri:
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow reports usage to its authors unless told not to
    # A server that is down is a warning within ~30 s, not after MLflow's default of 7 retries of 120 s each.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag
    except ImportError:
        log.warning("CITELOOP_MLFLOW_URI is set but MLflow is not installed (pip install 'citeloop[mlflow]'): run %s not logged", run.id)
        return None
    tracked = None
    try:
        client = MlflowClient(tracking_uri=settings.mlflow_uri)
        name = f"citeloop/{run.collection}"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name, _artifact_location(settings.mlflow_uri, name))
        tags = {"citeloop.run_id": run.id, "citeloop.questions": run.questions, "citeloop.questions_sha256": run.questions_sha256, "citeloop.created_by": run.created_by}
        tracked = client.create_run(experiment_id, run_name=run.id, tags=tags).info.run_id
        now = int(time.time() * 1000)
        numbers = _flat(run.metrics) | _flat(run.failures, "failures.")
        metrics = [
            Metric(_mlflow_key(k), float(v), now, 0) for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        params = [Param(_mlflow_key(k), str(v)[:6000]) for k, v in (_flat(run.config) | _flat(run.models, "models.")).items()]
        client.log_batch(tracked, metrics=metrics, params=params, tags=[RunTag("mlflow.note.content", f"citeloop eval run {run.id} of {run.questions}")])
        client.log_dict(tracked, run.rows, "rows.json")
        client.set_terminated(tracked)
        return tracked
    except Exception as exc:  # noqa: BLE001 (any tracking failure: the run is kept in citeloop's history anyway)
        log.warning("eval run %s was not logged to MLflow at %s: %s", run.id, settings.mlflow_uri, exc)
        if tracked is not None:  # created, then a write failed: not left RUNNING
            try:
                client.set_terminated(tracked, "FAILED")
            except Exception:  # noqa: BLE001 (the server that failed the write may fail this too)
                pass
        return None


def unsaved_run(collection: str, questions: str, rows: list[QuestionRow], report: dict, config: dict) -> EvalRunInfo:
    """A run as it would be stored, for a report when the history could not take it."""
    return EvalRunInfo(
        "unsaved", collection, questions, questions_sha256(rows), report.get("models") or {}, config, report["metrics"],
        report.get("failures") or {}, report["rows"], "cli", datetime.now(timezone.utc),
    )


def _info(record: EvalRun, collection: str, with_rows: bool = True) -> EvalRunInfo:
    return EvalRunInfo(
        record.id, collection, record.questions, record.questions_sha256, record.models, record.config, record.metrics,
        record.failures, record.rows if with_rows else [], record.created_by, record.created_at,
    )


def _with_collection_names():
    return select(EvalRun, Collection.name).join(Collection, Collection.id == EvalRun.collection_id)


def list_runs(session: Session, collections: set[str] | None = None, limit: int = 50) -> list[EvalRunInfo]:
    """The newest runs first, without their rows; `collections`: only runs on these."""
    from sqlalchemy.orm import defer

    query = _with_collection_names().options(defer(EvalRun.rows)).order_by(EvalRun.created_at.desc()).limit(limit)
    if collections is not None:
        query = query.where(Collection.name.in_(collections))
    return [_info(record, name, with_rows=False) for record, name in session.execute(query)]


def get_run(session: Session, run_id: str) -> EvalRunInfo:
    found = session.execute(_with_collection_names().where(EvalRun.id == run_id)).first()
    if found is None:
        raise NotFoundError(f"no evaluation run '{run_id}'")
    return _info(*found)


def _row_value(row: dict, field: str) -> float | None:
    value = row.get(field)
    return None if row.get("error") or value is None else float(value)


def _given(row: dict) -> str:
    return row["answer"] if "answer" in row else " ".join(row.get("ranked", []))


def compare_runs(a: EvalRunInfo, b: EvalRunInfo) -> dict:
    """B against A, per metric and per question (see the module's docstring)."""
    from citeloop.registry import paired_bootstrap

    rows_a, rows_b = ({r["id"]: r for r in run.rows} for run in (a, b))
    shared = sorted(set(rows_a) & set(rows_b))
    metrics = {}
    for name in sorted(set(a.metrics) & set(b.metrics)):
        va, vb = a.metrics[name], b.metrics[name]
        if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)) or isinstance(va, bool):
            continue
        entry = {"a": va, "b": vb, "difference": round(vb - va, 4)}
        field = ROW_METRICS.get(name, name if name in a.failures and name in b.failures else None)  # ragas' are per row
        per_a = {q: _row_value(rows_a[q], field) for q in shared} if field else {}
        per_b = {q: _row_value(rows_b[q], field) for q in shared} if field else {}
        paired = [q for q in per_a if per_a[q] is not None and per_b[q] is not None]
        if paired:
            mean, low, high = paired_bootstrap({q: per_b[q] for q in paired}, {q: per_a[q] for q in paired})
            entry |= {"paired_questions": len(paired), "mean_paired_difference": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}
        metrics[name] = entry
    by = next((m for m in CHANGE_METRICS if any(m in row for row in (*a.rows, *b.rows))), CHANGE_METRICS[0])
    moved = sorted(
        (q for q in shared if _row_value(rows_a[q], by) is not None and _row_value(rows_b[q], by) is not None),
        key=lambda q: -abs(rows_b[q][by] - rows_a[q][by]),
    )
    return {
        "a": {"id": a.id, "models": a.models, "questions_sha256": a.questions_sha256, "judge": a.config.get("judge_model")},
        "b": {"id": b.id, "models": b.models, "questions_sha256": b.questions_sha256, "judge": b.config.get("judge_model")},
        "same_questions": a.questions_sha256 == b.questions_sha256,
        # Judged metrics of two runs compare only when one judge scored both.
        "same_judge": a.config.get("judge_model") == b.config.get("judge_model"),
        "shared_questions": len(shared),
        "metrics": metrics,
        "changed_by": by,
        "changed_most": [
            {
                "id": q, "question": rows_a[q]["question"], by: {"a": rows_a[q][by], "b": rows_b[q][by]},
                # What each run gave the question: its answer, or its top 10 as ranked.
                "answer": {"a": _given(rows_a[q]), "b": _given(rows_b[q])},
            }
            for q in moved[:CHANGED_QUESTIONS]
            if rows_a[q][by] != rows_b[q][by]
        ],
    }
