"""Collections and their documents: create, list and configure collections, ingest and delete documents (admin keys)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from api.deps import Admin, Reader, ServicesDep, reach
from api.errors import ERRORS, ApiError
from api.schemas import CollectionCreate, CollectionInfo, CollectionSettings, DeleteResult, DocumentsIn, ErrorResponse, IngestResult, TrainingSettings
from api.services import Services
from citeloop.db import Collection, get_collection, session_scope
from citeloop.errors import NotFoundError

router = APIRouter(tags=["collections"])

# The body is read raw (its size is checked first), so its schema is documented here, not inferred.
DOCUMENTS_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DocumentsIn"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
            },
        }
    }
}


@router.post("/v1/collections", response_model=CollectionInfo, status_code=201, responses=ERRORS | {409: {"model": ErrorResponse}})
def create_collection(body: CollectionCreate, caller: Admin, services: ServicesDep) -> CollectionInfo:
    reach(caller, body.name)
    try:
        with session_scope(services.settings) as session:
            session.add(Collection(name=body.name))
    except IntegrityError:  # the unique name: also right when two admins create it at once
        raise ApiError(409, "conflict", f"collection '{body.name}' exists") from None
    return CollectionInfo(name=body.name, documents=0, chunks=0)


@router.get("/v1/collections", response_model=list[CollectionInfo], responses=ERRORS)
def get_collections(caller: Reader, services: ServicesDep) -> list[CollectionInfo]:
    from citeloop.catalog import list_collections

    return [
        CollectionInfo(name=c.name, documents=c.documents, chunks=c.chunks)
        for c in list_collections(services.settings)
        if caller.reaches(c.name)
    ]


@router.patch("/v1/collections/{collection}", response_model=CollectionSettings, responses=ERRORS)
def update_collection(collection: str, body: TrainingSettings, caller: Admin, services: ServicesDep) -> CollectionSettings:
    from citeloop.catalog import set_collection_training_opt_out

    reach(caller, collection)
    set_collection_training_opt_out(collection, body.training_opt_out, services.settings)
    return CollectionSettings(name=collection, training_opt_out=body.training_opt_out)


@router.post("/v1/collections/{collection}/documents", response_model=IngestResult, responses=ERRORS | {413: {"model": ErrorResponse}}, openapi_extra=DOCUMENTS_BODY)
async def add_documents(collection: str, request: Request, caller: Admin, services: ServicesDep) -> IngestResult:
    from retrieval.readers import SourceDocument, read_paths

    reach(caller, collection)
    await run_in_threadpool(require_collection, services, collection)
    limit = int(services.settings.max_upload_mb * 1024 * 1024)
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
        report = await run_in_threadpool(_ingest, services, items, collection)
    return IngestResult(
        ingested=len(report.ingested),
        unchanged=report.unchanged,
        skipped=[{"name": s.name, "reason": s.reason} for s in report.skipped],
        chunks=report.total_chunks,
    )


@router.delete("/v1/collections/{collection}/documents/{doc_id:path}", response_model=DeleteResult, responses=ERRORS)
def delete_document(collection: str, doc_id: str, caller: Admin, services: ServicesDep) -> DeleteResult:
    from retrieval.ingest import IngestError, delete_documents

    reach(caller, collection)
    require_collection(services, collection)  # deleting from a missing collection must not create it
    try:
        with services.ingest_lock:
            report = delete_documents(collection, [doc_id], services.settings)
    except IngestError as exc:  # raised for document ids the collection does not have
        raise NotFoundError(str(exc)) from None
    return DeleteResult(deleted=len(report.deleted), chunks=report.total_chunks)


def require_collection(services: Services, collection: str) -> None:
    """Raises UnknownCollectionError unless the collection exists (ingest would create it)."""
    with session_scope(services.settings) as session:
        get_collection(session, collection)


def _ingest(services: Services, items, collection: str):
    from retrieval.ingest import ingest

    with services.ingest_lock:
        return ingest(items, collection, services.settings)
