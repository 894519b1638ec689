"""Evaluation sets of a collection (curator keys): labelled queries its models are gated on and never trained on."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Curator, Reader, ServicesDep, reach
from api.errors import ERRORS, ApiError
from api.schemas import EvalSetCreate, EvalSetInfoOut
from citeloop.db import session_scope
from feedback.evalsets import EvalSetInfo, LabelledRows, add_evalset, evalset_from_rows, list_evalsets

router = APIRouter(tags=["evaluation sets"])


@router.post("/v1/collections/{collection}/evalsets", response_model=EvalSetInfoOut, status_code=201, responses=ERRORS)
def create_evalset(collection: str, body: EvalSetCreate, caller: Curator, services: ServicesDep) -> EvalSetInfoOut:
    reach(caller, collection)
    if (body.rows is None) == (body.queries is None and body.qrels is None):
        raise ApiError(400, "invalid_request", "give either rows, or queries and qrels")
    if body.rows is not None:
        rows = evalset_from_rows([r.model_dump(exclude_none=True) for r in body.rows], "row")
    else:
        if body.queries is None or body.qrels is None:
            raise ApiError(400, "invalid_request", "queries and qrels go together")
        rows = LabelledRows(body.queries, body.qrels, body.level, [])
    with session_scope(services.settings) as session:
        return _out(add_evalset(session, collection, body.name, rows.queries, rows.qrels, rows.level, caller.name, rows.qa_rows))


@router.get("/v1/collections/{collection}/evalsets", response_model=list[EvalSetInfoOut], responses=ERRORS)
def get_evalsets(collection: str, caller: Reader, services: ServicesDep) -> list[EvalSetInfoOut]:
    reach(caller, collection)
    with session_scope(services.settings) as session:
        return [_out(s) for s in list_evalsets(session, collection)]


def _out(s: EvalSetInfo) -> EvalSetInfoOut:
    return EvalSetInfoOut(
        id=s.id, collection=s.collection, name=s.name, level=s.level, queries=len(s.queries), qa_questions=len(s.qa_rows),
        unanswerable=sum(not r["references"] for r in s.qa_rows), sha256=s.sha256, created_by=s.created_by,
        created_at=s.created_at.isoformat(),
    )
