"""Errors as the API renders them, `{"error": {"code", "message"}}`: the one place that gives each domain
exception its status (by type, along the exception's class hierarchy), and the catch-all for the rest.

The catch-all is ASGI middleware rather than an `Exception` handler: Starlette re-raises after such a
handler, so the server would log the traceback a second time, without the request id. The middleware gives
every request an id (`X-Request-ID` on every response), logs an unexpected exception once with its
traceback and that id, and answers a generic 500 that carries the id and never the exception's text.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.asgi import HttpMiddleware
from api.schemas import ErrorResponse
from citeloop.errors import NotFoundError
from citeloop.registry import CorruptArtifactError, RegistryError
from eval.labels import LabelError
from feedback.evalsets import EvalSetError
from feedback.jobs import JobConflict, JobError
from feedback.store import InvalidFeedback
from feedback.trainset import TrainingSetError
from generation.engines import GenerationError, GenerationTimeout
from generation.pipeline import QuestionError

REQUEST_ID_HEADER = "X-Request-ID"
log = logging.getLogger("citeloop.api")

# Documented on every route that takes a key; routes add their own (409, 413, 503, 504).
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 422, 429)}


class ApiError(Exception):
    """An error the client caused or must know about, with its status and code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# (status, code) of each domain exception; a subclass listed here wins over its base (GenerationTimeout).
DOMAIN_ERRORS: dict[type[Exception], tuple[int, str]] = {
    NotFoundError: (404, "not_found"),  # UnknownCollectionError, feedback.store.NotFound
    QuestionError: (400, "invalid_question"),
    InvalidFeedback: (400, "invalid_request"),
    EvalSetError: (400, "invalid_request"),
    LabelError: (400, "invalid_request"),
    TrainingSetError: (422, "insufficient_training_data"),
    JobError: (400, "invalid_request"),
    JobConflict: (409, "conflict"),  # a job of that kind unfinished for the collection, or the job finished
    RegistryError: (409, "conflict"),  # e.g. promoting a version whose gate failed without force
    CorruptArtifactError: (409, "corrupt_artifact"),
    GenerationTimeout: (504, "generation_failed"),
    GenerationError: (503, "generation_failed"),
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def domain_error_response(exc: Exception) -> JSONResponse | None:
    """The response for a domain exception, or None when `exc` is not one."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            return error_response(*DOMAIN_ERRORS[cls], str(exc))
    return None


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    return domain_error_response(exc)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
    return error_response(422, "invalid_request", problems)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for cls in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _domain_error)
    app.add_middleware(RequestIds)


class RequestIds(HttpMiddleware):
    """A request id per request, and the catch-all for unexpected exceptions."""

    async def handle(self, scope, receive, send) -> None:
        request_id = uuid.uuid4().hex
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        started = False

        async def with_request_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = message | {"headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, with_request_id)
        except Exception:
            log.exception("unexpected error in %s %s (request %s)", scope["method"], scope["path"], request_id)
            if started:  # a stream broke off: the status is sent already, the server closes the connection
                return
            message = f"internal error; the server log has the details under request id {request_id}"
            await error_response(500, "internal", message, {REQUEST_ID_HEADER: request_id})(scope, receive, send)
