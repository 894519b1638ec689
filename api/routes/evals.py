"""Stored evaluation runs (`citeloop eval qa`, the promotion gates' runs): their metrics for ML teams' dashboards,
and curators' labels of their answers, which calibrate a judge's scores."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Curator, Reader, ServicesDep, reach
from api.errors import ERRORS
from api.schemas import EvalCalibrationOut, EvalLabelsOut, EvalLabelsRequest, EvalRunDetailOut, EvalRunOut
from citeloop.db import session_scope
from citeloop.errors import NotFoundError
from citeloop.keys import ALL_COLLECTIONS, Principal
from eval.labels import add_labels, run_labels
from eval.runs import EvalRunInfo, get_run, list_runs

router = APIRouter(tags=["evaluations"])


@router.get("/v1/evals", response_model=list[EvalRunOut], responses=ERRORS)
def get_evals(
    caller: Reader, services: ServicesDep, collection: Annotated[str | None, Query()] = None, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[EvalRunOut]:
    """The newest runs first, on the collections the key reaches (or on `collection`)."""
    if collection is not None:
        reach(caller, collection)
    scope = {collection} if collection else None if ALL_COLLECTIONS in caller.collections else set(caller.collections)
    with session_scope(services.settings) as session:
        return [EvalRunOut(**_fields(run)) for run in list_runs(session, scope, limit)]


@router.get("/v1/evals/{run_id}", response_model=EvalRunDetailOut, responses=ERRORS)
def get_eval(run_id: str, caller: Reader, services: ServicesDep) -> EvalRunDetailOut:
    with session_scope(services.settings) as session:
        run = _reached_run(session, run_id, caller)
    return EvalRunDetailOut(**_fields(run), rows=run.rows)


@router.post("/v1/evals/{run_id}/labels", response_model=EvalLabelsOut, responses=ERRORS)
def post_eval_labels(run_id: str, body: EvalLabelsRequest, caller: Curator, services: ServicesDep) -> EvalLabelsOut:
    """Curators' 0/1 labels of the run's answers under metrics it scored per question; a later label of the same
    question and metric replaces the earlier one. All are stored, or none (400 naming what does not fit)."""
    with session_scope(services.settings) as session:
        labelled = add_labels(session, _reached_run(session, run_id, caller), body.by_metric(), caller.name)
    return EvalLabelsOut(run_id=run_id, labelled=labelled)


@router.get("/v1/evals/{run_id}/calibration", response_model=EvalCalibrationOut, responses=ERRORS)
def get_eval_calibration(run_id: str, caller: Reader, services: ServicesDep) -> EvalCalibrationOut:
    """The run's labelled metrics calibrated by its stored labels (none stored: an empty result)."""
    from eval.calibration import calibrate_run

    with session_scope(services.settings) as session:
        run = _reached_run(session, run_id, caller)
        labels = run_labels(session, run_id)
    return EvalCalibrationOut(
        run_id=run_id, labelled={m: len(by_id) for m, by_id in labels.items()}, calibrated=calibrate_run(run.rows, set(run.failures), labels)
    )


def _reached_run(session, run_id: str, caller: Principal) -> EvalRunInfo:
    run = get_run(session, run_id)
    if not caller.reaches(run.collection):
        raise NotFoundError(f"no evaluation run '{run_id}'")  # as if it did not exist: reach never leaks names
    return run


def _fields(run: EvalRunInfo) -> dict:
    return {
        "id": run.id, "collection": run.collection, "questions": run.questions, "questions_sha256": run.questions_sha256,
        "models": run.models, "config": run.config, "metrics": run.metrics, "failures": run.failures,
        "created_by": run.created_by, "created_at": run.created_at.isoformat(),
    }
