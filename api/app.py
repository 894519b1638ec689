"""The citeloop HTTP API: ask, search, feedback capture, keys and roles, collections, export, observability.

Every route but the probes needs `Authorization: Bearer <key>`. A key reaches only its collections: anything
in another collection answers 404, exactly like something that does not exist. Feedback is acknowledged
only after its transaction commits.
"""

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import citeloop
from api import metrics
from api.schemas import (
    AskRequest,
    AskResponse,
    CollectionCreate,
    CollectionInfo,
    CorrectionRequest,
    DeleteResult,
    DocumentsIn,
    ErasureResult,
    ErrorResponse,
    EventAck,
    FlagRequest,
    Health,
    IngestResult,
    JudgementRequest,
    Ready,
    ReviewItem,
    SearchRequest,
    SearchResponse,
    VoteRequest,
)
from citeloop.config import Settings, get_settings
from citeloop.db import session_scope
from citeloop.keys import Principal, Role, authenticate


class ApiError(Exception):
    """An error the client caused or must know about; rendered as {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


ERRORS = {
    400: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
}


class RateLimiter:
    """Token bucket per key: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1, now)
            return 0.0


class Services:
    """What the routes share: settings, loaded pipelines, the fair generation queue, the rate limiter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        # asyncio.Lock wakes waiters in arrival order: concurrent asks queue fairly for the one generator.
        self.generation_queue = asyncio.Lock()
        self.ingest_lock = threading.Lock()
        self._pipelines: dict[str, object] = {}
        self._searches: dict[str, object] = {}
        self._lock = threading.Lock()
        self.models_ready = threading.Event()
        self.load_error: str | None = None

    def warm_up(self) -> None:
        """Load the embedder and generator before the first question (they take seconds)."""
        try:
            from generation.engines import load_generator
            from retrieval.embedder import load_embedder

            load_embedder(self.settings)
            load_generator(self.settings)
            self.models_ready.set()
        except Exception as exc:  # reported by /readyz; asks will raise the same error with its message
            self.load_error = str(exc)

    def pipeline(self, collection: str):
        from generation.pipeline import AnswerPipeline

        with self._lock:
            if collection not in self._pipelines:
                self._pipelines[collection] = AnswerPipeline(collection, self.settings)
            return self._pipelines[collection]

    def search(self, collection: str):
        from retrieval.rerank import RankedSearch

        with self._lock:
            if collection not in self._searches:
                self._searches[collection] = RankedSearch(collection, self.settings)
            return self._searches[collection]


def create_app(settings: Settings | None = None, warm_up: bool = True) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="citeloop",
        version=citeloop.__version__,
        description="Grounded question answering with verified citations, and the feedback that improves it.",
    )
    def openapi() -> dict:
        """The generated schema, plus the document models the ingestion route reads from a raw body."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body = DocumentsIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["DocumentsIn"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    services = Services(settings)
    app.state.services = services
    if warm_up:
        threading.Thread(target=services.warm_up, name="citeloop-warm-up", daemon=True).start()
    bearer = HTTPBearer(auto_error=False, description="An API key from `citeloop keys create`.")

    # ---- errors: always {"error": {"code", "message"}} -------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        return JSONResponse({"error": {"code": "invalid_request", "message": problems}}, 422)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}, 500)

    app.add_middleware(metrics.RequestTimer)

    # ---- auth -----------------------------------------------------------------------------------------
    def principal(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
        if credentials is None:
            raise ApiError(401, "unauthorized", "send an API key: Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"})
        caller = authenticate(credentials.credentials, settings)
        if caller is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
        wait = services.limiter.retry_after(caller.name)
        if wait:
            raise ApiError(429, "rate_limited", f"more than {settings.rate_limit_per_minute} requests a minute; retry in {wait:.1f} s", {"Retry-After": str(int(wait) + 1)})
        return caller

    def role(required: Role):
        def check(caller: Annotated[Principal, Depends(principal)]) -> Principal:
            if not caller.can(required):
                raise ApiError(403, "forbidden", f"this needs a {required} key; '{caller.name}' is a {caller.role} key")
            return caller

        return check

    Reader = Annotated[Principal, Depends(role("reader"))]
    Curator = Annotated[Principal, Depends(role("curator"))]
    Admin = Annotated[Principal, Depends(role("admin"))]

    def reach(caller: Principal, collection: str) -> None:
        if not caller.reaches(collection):
            raise not_found(f"no collection named '{collection}'")

    # ---- probes and metrics ---------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        return Health(status="ok", version=citeloop.__version__)

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["ops"])
    def readyz() -> Response:
        from generation.engines import load_generator

        ready = services.models_ready.is_set()
        models = {"generator": load_generator(settings).model_id if ready else None, "error": services.load_error}
        body = Ready(ready=ready, models=models)
        return JSONResponse(body.model_dump(), 200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        body, content_type = metrics.render(settings)
        return Response(body, media_type=content_type)

    # ---- collections and documents --------------------------------------------------------------------
    @app.post("/v1/collections", response_model=CollectionInfo, status_code=201, responses=ERRORS | {409: {"model": ErrorResponse}}, tags=["collections"])
    def create_collection(body: CollectionCreate, caller: Admin) -> CollectionInfo:
        from sqlalchemy import select

        from citeloop.db import Collection
        from retrieval.ingest import get_or_create_collection

        reach(caller, body.name)
        with session_scope(settings) as session:
            if session.scalar(select(Collection.id).where(Collection.name == body.name)) is not None:
                raise ApiError(409, "conflict", f"collection '{body.name}' exists")
            get_or_create_collection(session, body.name)
        return CollectionInfo(name=body.name, documents=0, chunks=0)

    @app.get("/v1/collections", response_model=list[CollectionInfo], responses=ERRORS, tags=["collections"])
    def get_collections(caller: Reader) -> list[CollectionInfo]:
        from citeloop.catalog import list_collections

        return [
            CollectionInfo(name=c.name, documents=c.documents, chunks=c.chunks) for c in list_collections(settings) if caller.reaches(c.name)
        ]

    @app.post(
        "/v1/collections/{collection}/documents",
        response_model=IngestResult,
        responses=ERRORS | {413: {"model": ErrorResponse}},
        tags=["collections"],
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DocumentsIn"}},
                    "multipart/form-data": {
                        "schema": {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
                    },
                }
            }
        },
    )
    async def add_documents(collection: str, request: Request, caller: Admin) -> IngestResult:
        from pydantic import ValidationError

        from retrieval.readers import SourceDocument, read_paths

        reach(caller, collection)
        await _known_collection(collection)
        limit = int(settings.max_upload_mb * 1024 * 1024)
        content_type = request.headers.get("content-type", "")
        with tempfile.TemporaryDirectory(prefix="citeloop-upload-") as tmp:
            if content_type.startswith("multipart/form-data"):
                form = await request.form(max_files=1000)
                uploads = [f for f in form.getlist("files") if hasattr(f, "filename")]
                if not uploads:
                    raise ApiError(400, "invalid_request", "multipart body has no 'files' parts")
                paths = []
                for upload in uploads:
                    name = Path(upload.filename or "upload").name or "upload"
                    data = await upload.read()
                    if len(data) > limit:
                        raise ApiError(413, "too_large", f"{name}: {len(data)} bytes; the limit is {limit} (CITELOOP_MAX_UPLOAD_MB)")
                    path = Path(tmp) / name
                    path.write_bytes(data)
                    paths.append(path)
                items = list(read_paths(paths))
            elif content_type.startswith("application/json"):
                raw = await request.body()
                if len(raw) > limit:
                    raise ApiError(413, "too_large", f"the body has {len(raw)} bytes; the limit is {limit} (CITELOOP_MAX_UPLOAD_MB)")
                try:
                    body = DocumentsIn.model_validate_json(raw)
                except ValidationError as exc:
                    raise RequestValidationError(exc.errors()) from None
                items = [SourceDocument(d.id, "api", d.title, d.text, d.metadata) for d in body.documents]
            else:
                raise ApiError(415, "unsupported_media_type", "send multipart/form-data files or a JSON {documents: [...]} body")
            report = await run_in_threadpool(_ingest, items, collection)
        return IngestResult(
            ingested=len(report.ingested),
            unchanged=report.unchanged,
            skipped=[{"name": s.name, "reason": s.reason} for s in report.skipped],
            chunks=report.total_chunks,
        )

    def _ingest(items, collection):
        from retrieval.ingest import ingest

        with services.ingest_lock:
            return ingest(items, collection, settings)

    async def _known_collection(collection: str) -> None:
        from feedback.store import NotFound, collection_id

        def check() -> None:
            with session_scope(settings) as session:
                collection_id(session, collection)

        try:
            await run_in_threadpool(check)
        except NotFound as exc:
            raise not_found(str(exc)) from None

    @app.delete("/v1/collections/{collection}/documents/{doc_id:path}", response_model=DeleteResult, responses=ERRORS, tags=["collections"])
    def delete_document(collection: str, doc_id: str, caller: Admin) -> DeleteResult:
        from retrieval.ingest import IngestError, delete_documents

        reach(caller, collection)
        try:
            with services.ingest_lock:
                report = delete_documents(collection, [doc_id], settings)
        except IngestError as exc:
            raise not_found(str(exc)) from None
        if not report.deleted:
            raise not_found(f"no document '{doc_id}' in '{collection}'")
        return DeleteResult(deleted=len(report.deleted), chunks=report.total_chunks)

    # ---- ask and search -------------------------------------------------------------------------------
    def _pipeline_for(collection: str):
        from citeloop.errors import UnknownCollectionError

        try:
            return services.pipeline(collection)
        except UnknownCollectionError as exc:
            raise not_found(str(exc)) from None

    def _store_answer(answer, caller: Principal) -> None:
        from feedback.store import save_answer

        with session_scope(settings) as session:
            save_answer(session, answer, caller.name)
        metrics.observe_answer(answer)

    @app.post(
        "/v1/ask",
        response_model=AskResponse,
        responses=ERRORS | {503: {"model": ErrorResponse}, 504: {"model": ErrorResponse}, 200: {"content": {"text/event-stream": {}}}},
        tags=["answers"],
    )
    async def ask(body: AskRequest, caller: Reader) -> Response:
        from generation.engines import GenerationError
        from generation.pipeline import ContextsEvent, DoneEvent, QuestionError, TokenEvent, context_dict

        reach(caller, body.collection)
        pipeline = await run_in_threadpool(_pipeline_for, body.collection)
        try:
            pipeline.check_question(body.question)
        except QuestionError as exc:
            raise ApiError(400, "invalid_question", str(exc)) from None
        await services.generation_queue.acquire()
        events = pipeline.stream(body.question, body.top_k)
        try:
            first = await run_in_threadpool(next, events)
        except QuestionError as exc:
            services.generation_queue.release()
            raise ApiError(400, "invalid_question", str(exc)) from None
        except BaseException:
            services.generation_queue.release()
            raise

        if not body.stream:
            try:
                done = first
                while not isinstance(done, DoneEvent):
                    done = await run_in_threadpool(next, events)
            except GenerationError as exc:
                raise ApiError(504 if "longer than" in str(exc) else 503, "generation_failed", str(exc)) from None
            finally:
                services.generation_queue.release()
            await run_in_threadpool(_store_answer, done.answer, caller)
            return JSONResponse(_answer_json(done.answer))

        async def sse() -> AsyncIterator[str]:
            try:
                event = first
                while True:
                    if isinstance(event, ContextsEvent):
                        yield _sse("contexts", [context_dict(c) for c in event.contexts])
                    elif isinstance(event, TokenEvent):
                        yield _sse("token", {"text": event.text})
                    elif isinstance(event, DoneEvent):
                        await run_in_threadpool(_store_answer, event.answer, caller)
                        data = _answer_json(event.answer)
                        yield _sse("citations", {"answer_id": data["answer_id"], "citations": data["citations"]})
                        yield _sse("done", data)
                        return
                    event = await run_in_threadpool(next, events)
            except GenerationError as exc:
                yield _sse("error", {"error": {"code": "generation_failed", "message": str(exc)}})
            finally:
                try:
                    events.close()
                except ValueError:  # the client left while a worker thread was inside the generator; it ends there
                    pass
                services.generation_queue.release()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["answers"])
    def search(body: SearchRequest, caller: Reader) -> SearchResponse:
        from feedback.store import save_search
        from generation.pipeline import context_dict
        from citeloop.errors import UnknownCollectionError

        reach(caller, body.collection)
        try:
            ranked = services.search(body.collection)
            ranked.retriever.refresh()
        except UnknownCollectionError as exc:
            raise not_found(str(exc)) from None
        found = ranked.search(body.query, k=body.k)
        hits = found.hits[: body.k]
        with session_scope(settings) as session:
            record = save_search(session, body.collection, body.query, hits, {"reranker": found.reranker}, caller.name)
        return SearchResponse(search_id=record.id, results=[context_dict(h) for h in hits], reranker=found.reranker)

    # ---- feedback -------------------------------------------------------------------------------------
    def _event(caller: Principal, kind: str, **fields) -> EventAck:
        from feedback.store import NotFound, record_event

        try:
            with session_scope(settings) as session:
                event = record_event(session, kind, caller, **fields)
        except NotFound as exc:
            raise not_found(str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        metrics.FEEDBACK.labels(kind).inc()
        return EventAck(event_id=event.id, kind=event.kind, created_at=event.created_at.isoformat())

    @app.post("/v1/answers/{answer_id}/feedback", response_model=EventAck, status_code=201, responses=ERRORS, tags=["feedback"])
    def vote(answer_id: str, body: VoteRequest, caller: Reader) -> EventAck:
        kind = "thumbs_up" if body.rating == "up" else "thumbs_down"
        return _event(caller, kind, answer_id=answer_id, reason=body.comment)

    @app.post("/v1/answers/{answer_id}/citations/{n}/flag", response_model=EventAck, status_code=201, responses=ERRORS, tags=["feedback"])
    def flag_citation(answer_id: str, n: int, body: FlagRequest, caller: Curator) -> EventAck:
        return _event(caller, "citation_flag", answer_id=answer_id, citation_n=n, reason=body.reason)

    @app.post("/v1/judgements", response_model=EventAck, status_code=201, responses=ERRORS, tags=["feedback"])
    def judge(body: JudgementRequest, caller: Curator) -> EventAck:
        if (body.answer_id is None) == (body.search_id is None):
            raise ApiError(400, "invalid_request", "give exactly one of answer_id or search_id")
        kind = "relevant" if body.relevant else "not_relevant"
        return _event(caller, kind, answer_id=body.answer_id, search_id=body.search_id, chunk_id=body.chunk_id)

    @app.post("/v1/answers/{answer_id}/correction", response_model=EventAck, status_code=201, responses=ERRORS, tags=["feedback"])
    def correct(answer_id: str, body: CorrectionRequest, caller: Curator) -> EventAck:
        return _event(caller, "correction", answer_id=answer_id, correction=body.answer)

    @app.get("/v1/review-queue", response_model=list[ReviewItem], responses=ERRORS, tags=["feedback"])
    def queue(collection: Annotated[str, Query(min_length=1)], caller: Curator, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[ReviewItem]:
        from feedback.store import NotFound, review_queue

        reach(caller, collection)
        try:
            with session_scope(settings) as session:
                return [ReviewItem(**item) for item in review_queue(session, collection, limit)]
        except NotFound as exc:
            raise not_found(str(exc)) from None

    @app.get(
        "/v1/feedback/export",
        responses=ERRORS | {200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}},
        tags=["feedback"],
        response_class=Response,
    )
    def export(
        collection: Annotated[str, Query(min_length=1)],
        caller: Admin,
        since: datetime | None = None,
        format: Literal["jsonl", "parquet"] = "jsonl",
    ) -> Response:
        from feedback.store import NotFound, export_rows

        reach(caller, collection)
        if since is not None and since.tzinfo is not None:
            since = since.astimezone(timezone.utc).replace(tzinfo=None)
        try:
            with session_scope(settings) as session:
                rows = export_rows(session, collection, since)
        except NotFound as exc:
            raise not_found(str(exc)) from None
        if format == "jsonl":
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            return Response(body, media_type="application/x-ndjson")
        return Response(_parquet(rows), media_type="application/vnd.apache.parquet")

    @app.delete("/v1/feedback", response_model=ErasureResult, responses=ERRORS, tags=["feedback"])
    def erase(key_name: Annotated[str, Query(min_length=1)], caller: Admin) -> ErasureResult:
        from feedback.store import erase_actor

        with session_scope(settings) as session:
            counts = erase_actor(session, key_name)
        return ErasureResult(key_name=key_name, **counts)

    return app


def _answer_json(answer) -> dict:
    data = answer.to_dict()
    keep = AskResponse.model_fields.keys()
    return {k: v for k, v in data.items() if k in keep}


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _parquet(rows: list[dict]) -> bytes:
    """Parquet with nested fields as JSON text (their shapes vary by event kind)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = ("contexts", "citations", "cited", "models")
    flat = [{k: (json.dumps(v, ensure_ascii=False) if k in nested else v) for k, v in r.items()} for r in rows]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(flat) if flat else pa.table({"event_id": pa.array([], pa.string())}), buffer)
    return buffer.getvalue()
