"""Ask and search (reader keys). Every answer and search is stored with what was shown, so feedback can refer to it.

Answers queue for the one generator (`Services.generation_queue`, first come first served). The queue is
held with `async with` around the whole answer, streamed or not, so every exit releases it: a finished
answer, an error, or a client that hangs up while it waits or while the answer is generated.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.deps import Reader, ServicesDep, reach
from api.errors import ERRORS, domain_error_response
from api.schemas import AskRequest, AskResponse, ErrorResponse, SearchRequest, SearchResponse
from api.services import Services
from citeloop.db import session_scope
from citeloop.keys import Principal
from feedback.store import save_answer, save_search
from generation.engines import GenerationError
from generation.pipeline import Answer, AnswerPipeline, ContextsEvent, DoneEvent, TokenEvent, context_dict

router = APIRouter(tags=["answers"])
ASK_RESPONSES = ERRORS | {503: {"model": ErrorResponse}, 504: {"model": ErrorResponse}, 200: {"content": {"text/event-stream": {}}}}


@router.post("/v1/ask", response_model=AskResponse, responses=ASK_RESPONSES)
async def ask(body: AskRequest, caller: Reader, services: ServicesDep) -> Response:
    reach(caller, body.collection)
    pipeline = await run_in_threadpool(services.pipeline, body.collection)
    pipeline.check_question(body.question)
    if body.stream:
        return AnswerEventStream(_answer_events(services, pipeline, body, caller), headers={"Cache-Control": "no-cache"})
    async with services.generation_queue:
        events = pipeline.stream(body.question, body.top_k, filters=body.filters)
        try:
            event = await run_in_threadpool(next, events)
            while not isinstance(event, DoneEvent):
                event = await run_in_threadpool(next, events)
        finally:
            events.close()
    await run_in_threadpool(_store_answer, services, event.answer, caller)
    return JSONResponse(_answer_json(event.answer))


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
def search(body: SearchRequest, caller: Reader, services: ServicesDep) -> SearchResponse:
    reach(caller, body.collection)
    found = services.search(body.collection).search(body.query, k=body.k, filters=body.filters)
    hits = found.hits[: body.k]
    with session_scope(services.settings) as session:
        record = save_search(session, body.collection, body.query, hits, {"reranker": found.reranker}, caller.name)
    return SearchResponse(search_id=record.id, results=[context_dict(h) for h in hits], reranker=found.reranker)


class AnswerEventStream(StreamingResponse):
    """Server-sent events whose status is decided by the first event: the headers go out with it, so a
    question refused before generation starts (an empty collection, one deleted meanwhile) still answers
    with its 4xx. Starlette cancels the stream when the client disconnects, also while it waits in the
    queue for that first event; the events are closed on every exit."""

    media_type = "text/event-stream"

    async def stream_response(self, send) -> None:
        chunks = aiter(self.body_iterator)
        try:
            try:
                first = await anext(chunks)
            except Exception as exc:
                refusal = domain_error_response(exc)
                if refusal is None:
                    raise
                await send({"type": "http.response.start", "status": refusal.status_code, "headers": refusal.raw_headers})
                await send({"type": "http.response.body", "body": refusal.body})
                return
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": first.encode(), "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await chunks.aclose()


async def _answer_events(services: Services, pipeline: AnswerPipeline, body: AskRequest, caller: Principal) -> AsyncIterator[str]:
    """The answer's events as SSE text, generated while this ask holds the generation queue."""
    async with services.generation_queue:
        events: Iterator = pipeline.stream(body.question, body.top_k, filters=body.filters)
        try:
            event = await run_in_threadpool(next, events)
            while True:
                if isinstance(event, ContextsEvent):
                    yield _sse("contexts", [context_dict(c) for c in event.contexts])
                elif isinstance(event, TokenEvent):
                    yield _sse("token", {"text": event.text})
                elif isinstance(event, DoneEvent):
                    await run_in_threadpool(_store_answer, services, event.answer, caller)
                    data = _answer_json(event.answer)
                    yield _sse("citations", {"answer_id": data["answer_id"], "citations": data["citations"]})
                    yield _sse("done", data)
                    return
                event = await run_in_threadpool(next, events)
        except GenerationError as exc:
            yield _sse("error", {"error": {"code": "generation_failed", "message": str(exc)}})
        finally:
            events.close()


def _store_answer(services: Services, answer: Answer, caller: Principal) -> None:
    with session_scope(services.settings) as session:
        save_answer(session, answer, caller.name)
    metrics.observe_answer(answer)


def _answer_json(answer: Answer) -> dict:
    data = answer.to_dict()
    keep = AskResponse.model_fields.keys()
    return {k: v for k, v in data.items() if k in keep}


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
