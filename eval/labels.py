"""Curators' labels of a stored run's answers: 0 or 1 for one question's answer under one metric the run scored per
question (`faithfulness` 1: the answer is supported by its contexts). The latest label of a (run, question, metric)
stands. `eval calibrate` and `GET /v1/evals/{id}/calibration` correct the judge's mean by them (eval/calibration.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from citeloop.db import EvalLabel
from eval.runs import EvalRunInfo


class LabelError(ValueError):
    """Labels that do not fit their run: an unknown question, a metric it did not score per question, not 0/1."""


def add_labels(session: Session, run: EvalRunInfo, labels: dict[str, dict[str, int]], created_by: str) -> dict[str, int]:
    """Store `labels` (metric -> {question id: 0|1}) of `run`'s answers, replacing earlier labels of the same
    question and metric; all or none (a LabelError names the first that does not fit). Returns the run's
    labelled questions per metric."""
    scored = set(run.failures)  # the metrics the run has a value per row for (ragas' and the judge's)
    questions = {str(row["id"]) for row in run.rows}
    for metric, by_id in labels.items():
        if metric not in scored:
            raise LabelError(f"run {run.id} did not score '{metric}' per question (it has: {', '.join(sorted(scored)) or 'none'})")
        for question, label in by_id.items():
            if question not in questions:
                raise LabelError(f"run {run.id} has no question '{question}'")
            if type(label) is not int or label not in (0, 1):
                raise LabelError(f"the label of '{question}' under '{metric}' must be 0 or 1, not {label!r}")
    try:
        _write(session, run.id, labels, created_by)
    except IntegrityError:  # another curator inserted one of these labels meanwhile: theirs is now updated
        _write(session, run.id, labels, created_by)
    return {metric: len(by_id) for metric, by_id in run_labels(session, run.id).items()}


def _write(session: Session, run_id: str, labels: dict[str, dict[str, int]], created_by: str) -> None:
    with session.begin_nested():
        stored = {(r.row_id, r.metric): r for r in session.scalars(select(EvalLabel).where(EvalLabel.run_id == run_id))}
        for metric, by_id in labels.items():
            for question, label in by_id.items():
                record = stored.get((question, metric))
                if record is None:
                    session.add(EvalLabel(run_id=run_id, row_id=question, metric=metric, label=label, created_by=created_by))
                else:
                    record.label, record.created_by = label, created_by


def run_labels(session: Session, run_id: str) -> dict[str, dict[str, int]]:
    """The labels stored for a run: metric -> {question id: 0|1}."""
    labels: dict[str, dict[str, int]] = {}
    for record in session.scalars(select(EvalLabel).where(EvalLabel.run_id == run_id).order_by(EvalLabel.id)):
        labels.setdefault(record.metric, {})[record.row_id] = record.label
    return labels
