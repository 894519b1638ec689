"""Stored evaluation runs (`citeloop eval qa`): their metrics for ML teams' dashboards and the promotion gates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Reader, ServicesDep, reach
from api.errors import ERRORS
from api.schemas import EvalRunDetailOut, EvalRunOut
from citeloop.db import session_scope
from citeloop.errors import NotFoundError
from citeloop.keys import ALL_COLLECTIONS
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
        run = get_run(session, run_id)
    if not caller.reaches(run.collection):
        raise NotFoundError(f"no evaluation run '{run_id}'")  # as if it did not exist: reach never leaks names
    return EvalRunDetailOut(**_fields(run), rows=run.rows)


def _fields(run: EvalRunInfo) -> dict:
    return {
        "id": run.id, "collection": run.collection, "questions": run.questions, "questions_sha256": run.questions_sha256,
        "models": run.models, "config": run.config, "metrics": run.metrics, "failures": run.failures,
        "created_by": run.created_by, "created_at": run.created_at.isoformat(),
    }
