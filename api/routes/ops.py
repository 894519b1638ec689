"""Probes and metrics: no key needed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

import citeloop
from api import metrics
from api.deps import ServicesDep
from api.schemas import Health, Ready

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok", version=citeloop.__version__)


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(services: ServicesDep) -> Response:
    from generation.engines import load_generator

    ready = services.models_ready.is_set()
    models = {"generator": load_generator(services.settings).model_id if ready else None, "error": services.load_error}
    body = Ready(ready=ready, models=models)
    return JSONResponse(body.model_dump(), 200 if ready else 503)


@router.get("/metrics", response_class=Response)
def prometheus(services: ServicesDep) -> Response:
    body, content_type = metrics.render(services.settings)
    return Response(body, media_type=content_type)
