"""The citeloop HTTP API: ask, search, feedback capture, keys and roles, collections, export, evaluation sets,
evaluation runs, training jobs, the model registry, observability.

`create_app` builds the process's `Services` and includes one router per resource (`api/routes/`). Every
route but the probes needs `Authorization: Bearer <key>` (`api/deps.py`); errors are rendered in one place
(`api/errors.py`).
"""

from __future__ import annotations

import threading

from fastapi import FastAPI

import citeloop
from api import metrics
from api.errors import install_error_handlers
from api.routes import answers, collections, data, evals, evalsets, feedback, keys, models, ops, training
from api.schemas import DocumentsIn
from api.services import Services
from citeloop.config import Settings, get_settings


def create_app(settings: Settings | None = None, warm_up: bool = True) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="citeloop",
        version=citeloop.__version__,
        description="Grounded question answering with verified citations, and the feedback that improves it.",
    )
    app.openapi = lambda: _openapi(app)
    services = Services(settings)
    app.state.services = services
    if warm_up:
        threading.Thread(target=services.warm_up, name="citeloop-warm-up", daemon=True).start()
    for module in (ops, collections, answers, feedback, data, evalsets, evals, keys, training, models):
        app.include_router(module.router)
    app.add_middleware(metrics.RequestTimer)
    install_error_handlers(app)  # after the timer: its request-id middleware is the outermost
    return app


def _openapi(app: FastAPI) -> dict:
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
