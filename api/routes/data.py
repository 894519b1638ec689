"""The feedback data itself (admin keys): export a collection's events, erase a person's data.

Both touch only the collections the calling key reaches.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import Admin, ServicesDep, reach
from api.errors import ERRORS
from api.schemas import CollectionErasure, ErasureResult
from citeloop.db import session_scope
from feedback.store import erase_actor, export_rows

router = APIRouter(tags=["feedback"])
EXPORT_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


@router.get("/v1/feedback/export", responses=ERRORS | {200: {"content": {t: {} for t in EXPORT_TYPES.values()}}}, response_class=Response)
def export(
    collection: Annotated[str, Query(min_length=1)],
    caller: Admin,
    services: ServicesDep,
    since: datetime | None = None,
    format: Literal["jsonl", "parquet"] = "jsonl",
) -> Response:
    reach(caller, collection)
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(timezone.utc).replace(tzinfo=None)
    with session_scope(services.settings) as session:
        rows = export_rows(session, collection, since)
    if format == "jsonl":
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    else:
        body = _parquet(rows)
    return Response(body, media_type=EXPORT_TYPES[format])


@router.delete("/v1/feedback", response_model=ErasureResult, responses=ERRORS)
def erase(key_name: Annotated[str, Query(min_length=1)], caller: Admin, services: ServicesDep) -> ErasureResult:
    with session_scope(services.settings) as session:
        erased = erase_actor(session, key_name, caller)
    per_collection = [CollectionErasure(collection=name, **counts) for name, counts in erased.items()]
    return ErasureResult(
        key_name=key_name,
        events=sum(c.events for c in per_collection),
        answers=sum(c.answers for c in per_collection),
        searches=sum(c.searches for c in per_collection),
        snapshot_rows=sum(c.snapshot_rows for c in per_collection),
        collections=per_collection,
    )


def _parquet(rows: list[dict]) -> bytes:
    """Parquet with nested fields as JSON text (their shapes vary by event kind)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = ("contexts", "citations", "cited", "models")
    flat = [{k: (json.dumps(v, ensure_ascii=False) if k in nested else v) for k, v in r.items()} for r in rows]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(flat) if flat else pa.table({"event_id": pa.array([], pa.string())}), buffer)
    return buffer.getvalue()
