"""The citeloop HTTP API. Until the API issue lands it serves health and first-stage search."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

import citeloop
from citeloop.catalog import list_collections


class Health(BaseModel):
    status: str
    version: str
    collections: list[str]


def create_app() -> FastAPI:
    app = FastAPI(title="citeloop", version=citeloop.__version__)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok", version=citeloop.__version__, collections=[c.name for c in list_collections()])

    return app
