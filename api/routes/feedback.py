"""Feedback on stored answers and searches: votes (reader keys), citation flags, relevance judgements and
corrections (curator keys), and the curators' review queue. Each event is acknowledged only after its
transaction commits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api import metrics
from api.deps import Curator, Reader, ServicesDep, reach
from api.errors import ERRORS, ApiError
from api.schemas import CorrectionRequest, EventAck, FlagRequest, JudgementRequest, ReviewItem, VoteRequest
from api.services import Services
from citeloop.db import session_scope
from citeloop.keys import Principal
from feedback.jobs import maybe_trigger
from feedback.store import record_event, review_queue

router = APIRouter(tags=["feedback"])
CREATED = {"response_model": EventAck, "status_code": 201, "responses": ERRORS}


@router.post("/v1/answers/{answer_id}/feedback", **CREATED)
def vote(answer_id: str, body: VoteRequest, caller: Reader, services: ServicesDep) -> EventAck:
    kind = "thumbs_up" if body.rating == "up" else "thumbs_down"
    return _event(services, caller, kind, answer_id=answer_id, reason=body.comment)


@router.post("/v1/answers/{answer_id}/citations/{n}/flag", **CREATED)
def flag_citation(answer_id: str, n: int, body: FlagRequest, caller: Curator, services: ServicesDep) -> EventAck:
    return _event(services, caller, "citation_flag", answer_id=answer_id, citation_n=n, reason=body.reason)


@router.post("/v1/judgements", **CREATED)
def judge(body: JudgementRequest, caller: Curator, services: ServicesDep) -> EventAck:
    if (body.answer_id is None) == (body.search_id is None):
        raise ApiError(400, "invalid_request", "give exactly one of answer_id or search_id")
    kind = "relevant" if body.relevant else "not_relevant"
    return _event(services, caller, kind, answer_id=body.answer_id, search_id=body.search_id, chunk_id=body.chunk_id)


@router.post("/v1/answers/{answer_id}/correction", **CREATED)
def correct(answer_id: str, body: CorrectionRequest, caller: Curator, services: ServicesDep) -> EventAck:
    return _event(services, caller, "correction", answer_id=answer_id, correction=body.answer)


@router.get("/v1/review-queue", response_model=list[ReviewItem], responses=ERRORS)
def queue(
    collection: Annotated[str, Query(min_length=1)],
    caller: Curator,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ReviewItem]:
    reach(caller, collection)
    with session_scope(services.settings) as session:
        return [ReviewItem(**item) for item in review_queue(session, collection, limit)]


def _event(services: Services, caller: Principal, kind: str, **fields) -> EventAck:
    with session_scope(services.settings) as session:
        event = record_event(session, kind, caller, **fields)
    metrics.FEEDBACK.labels(kind).inc()
    maybe_trigger(event.collection, services.settings)  # queues a training job past CITELOOP_TRAINING_AUTO_EVENTS
    return EventAck(event_id=event.id, kind=event.kind, created_at=event.created_at.isoformat())
