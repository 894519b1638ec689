"""Ingestion: source documents -> chunks -> embeddings -> a new index build, committed atomically.

Only new or changed documents are chunked and embedded; vectors of unchanged chunks are carried
over from the active build. Index files are written first, then one database transaction swaps
documents, chunks and the active build, so a crash leaves the previous state intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from citeloop.config import Settings, get_settings
from citeloop.db import Chunk, Collection, Document, IndexBuild, get_collection, session_scope
from citeloop.errors import UnknownCollectionError
from citeloop.progress import progress_bar
from retrieval.chunking import ChunkSpan, Chunker
from retrieval.dense import DenseIndex
from retrieval.embedder import Embedder, load_embedder
from retrieval.index import DENSE_FILE, ROWS_FILE, collection_index_dir, prune_builds, write_build
from retrieval.readers import Skipped, SourceDocument


class IngestError(RuntimeError):
    pass


class ConcurrentIngestError(IngestError):
    pass


@dataclass
class IngestReport:
    collection: str
    ingested: list[str] = field(default_factory=list)  # doc ids new or replaced
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks_embedded: int = 0
    total_chunks: int = 0
    build_id: str | None = None
    seconds: float = 0.0


def content_sha256(doc: SourceDocument) -> str:
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def index_text(title: str, text: str) -> str:
    """What the embedder and BM25 see for a chunk: its document title gives the chunk its context."""
    return f"{title}\n{text}" if title else text


def get_or_create_collection(session: Session, name: str) -> Collection:
    try:
        return get_collection(session, name)
    except UnknownCollectionError:
        collection = Collection(name=name)
        session.add(collection)
        session.flush()
        return collection


@dataclass
class _NewDocument:
    source: SourceDocument
    sha256: str
    spans: list[ChunkSpan]
    chunk_ids: list[str]


def ingest(
    items: Iterable[SourceDocument | Skipped],
    collection: str,
    settings: Settings | None = None,
    show_progress: bool = False,
    delete_doc_ids: Iterable[str] = (),
) -> IngestReport:
    settings = settings or get_settings()
    started = time.perf_counter()
    report = IngestReport(collection=collection)
    with session_scope(settings) as session:
        collection_id = get_or_create_collection(session, collection).id
        known = dict(session.execute(select(Document.doc_id, Document.sha256).where(Document.collection_id == collection_id)).all())

    deletions = {d for d in delete_doc_ids if d in known}
    report.deleted = sorted(deletions)
    unknown = set(delete_doc_ids) - deletions
    if unknown:
        raise IngestError(f"no such document(s) in collection '{collection}': {', '.join(sorted(unknown))}")

    chunker: Chunker | None = None  # built on the first document that needs chunking: it loads the embedder
    new_docs: dict[str, _NewDocument] = {}
    with progress_bar("reading and chunking", None, show_progress) as advance:
        for item in items:
            advance(1)
            if isinstance(item, Skipped):
                report.skipped.append(item)
                continue
            sha = content_sha256(item)
            if item.doc_id in new_docs:
                report.skipped.append(Skipped(item.source, f"duplicate document id '{item.doc_id}' in this ingest"))
                continue
            if known.get(item.doc_id) == sha:
                report.unchanged += 1
                continue
            if chunker is None:
                chunker = Chunker(settings.chunk_size, settings.chunk_overlap, _token_ids(load_embedder(settings)))
            spans = chunker.split(item.text)
            new_docs[item.doc_id] = _NewDocument(item, sha, spans, [uuid.uuid4().hex for _ in spans])

    if not new_docs and not deletions:
        with session_scope(settings) as session:
            report.build_id = _active_build_id(session, collection_id)
            report.total_chunks = _count_chunks(session, collection_id)
        report.seconds = time.perf_counter() - started
        return report

    replaced = set(new_docs) | deletions
    embedder = load_embedder(settings)
    with session_scope(settings) as session:
        base_build = session.scalar(
            select(IndexBuild).where(IndexBuild.collection_id == collection_id, IndexBuild.status == "active")
        )
        kept_rows = session.execute(
            select(Chunk.id, Chunk.text, Document.title, Document.doc_id)
            .join(Document)
            .where(Document.collection_id == collection_id)
            .order_by(Document.id, Chunk.ordinal)
        ).all()
    kept_rows = [row for row in kept_rows if row.doc_id not in replaced]
    kept_ids = [row.id for row in kept_rows]
    carried = _carried_vectors(base_build, kept_ids, embedder)
    to_embed_ids = [cid for cid in kept_ids if cid not in carried]
    to_embed_texts = [index_text(row.title, row.text) for row in kept_rows if row.id not in carried]
    for doc in new_docs.values():
        to_embed_ids.extend(doc.chunk_ids)
        to_embed_texts.extend(index_text(doc.source.title, s.text) for s in doc.spans)

    fresh = dict(zip(to_embed_ids, _embed(embedder, to_embed_texts, show_progress)))
    all_ids = kept_ids + [cid for doc in new_docs.values() for cid in doc.chunk_ids]
    vectors = np.stack([carried[cid] if cid in carried else fresh[cid] for cid in all_ids]) if all_ids else np.zeros((0, embedder.dim), dtype=np.float32)
    bm25_texts = [index_text(row.title, row.text) for row in kept_rows] + [
        index_text(doc.source.title, s.text) for doc in new_docs.values() for s in doc.spans
    ]
    files = write_build(settings, collection_id, all_ids, vectors, bm25_texts)

    with session_scope(settings) as session:
        active_now = _active_build_id(session, collection_id)
        if active_now != (base_build.id if base_build else None):
            raise ConcurrentIngestError(f"collection '{collection}' changed during this ingest; run it again")
        _apply(session, collection_id, new_docs, replaced)
        session.execute(
            update(IndexBuild).where(IndexBuild.collection_id == collection_id, IndexBuild.status == "active").values(status="retired")
        )
        session.add(
            IndexBuild(
                id=files.build_id,
                collection_id=collection_id,
                path=str(files.path.resolve()),
                status="active",
                n_chunks=files.n_chunks,
                dense_index=files.dense_kind,
                embedder=embedder.model_id,
                params={"chunk_size": settings.chunk_size, "chunk_overlap": settings.chunk_overlap, "bm25_method": settings.bm25_method},
            )
        )
    # Keep the previous build on disk: a server may still be answering from it until it reloads.
    prune_builds(settings, collection_id, keep={files.build_id} | ({base_build.id} if base_build else set()))

    report.ingested = sorted(new_docs)
    report.chunks_embedded = len(to_embed_texts)
    report.total_chunks = len(all_ids)
    report.build_id = files.build_id
    report.seconds = time.perf_counter() - started
    return report


def delete_documents(collection: str, doc_ids: Iterable[str], settings: Settings | None = None) -> IngestReport:
    """Remove documents from an existing collection (UnknownCollectionError: deleting never creates one)."""
    with session_scope(settings) as session:
        get_collection(session, collection)
    return ingest([], collection, settings, delete_doc_ids=list(doc_ids))


def delete_collection(name: str, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    with session_scope(settings) as session:
        try:
            collection = get_collection(session, name)
        except UnknownCollectionError:
            return False
        collection_id = collection.id
        session.delete(collection)
    shutil.rmtree(collection_index_dir(settings, collection_id), ignore_errors=True)
    return True


def _token_ids(embedder: Embedder):
    # The Rust tokenizer directly, without padding/truncation: the splitter only needs token counts.
    backend = embedder.tokenizer.backend_tokenizer.__class__.from_str(embedder.tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return lambda text: backend.encode(text, add_special_tokens=False).ids


def _embed(embedder: Embedder, texts: list[str], show_progress: bool) -> np.ndarray:
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    step = 1024
    parts = []
    with progress_bar("embedding chunks", len(texts), show_progress) as advance:
        for i in range(0, len(texts), step):
            parts.append(embedder.embed(texts[i : i + step]))
            advance(len(texts[i : i + step]))
    return np.concatenate(parts)


def _carried_vectors(base_build: IndexBuild | None, chunk_ids: list[str], embedder: Embedder) -> dict[str, np.ndarray]:
    """Vectors of unchanged chunks from the active build (same embedder); the rest must be embedded."""
    if base_build is None or base_build.embedder != embedder.model_id:
        return {}
    path = Path(base_build.path)
    try:
        rows = {cid: i for i, cid in enumerate(json.loads((path / ROWS_FILE).read_text()))}
        stored = DenseIndex.load(path / DENSE_FILE).vectors()
    except OSError:
        return {}
    return {cid: stored[rows[cid]] for cid in chunk_ids if cid in rows}


def _apply(session: Session, collection_id: int, new_docs: dict[str, _NewDocument], replaced: set[str]) -> None:
    if replaced:
        session.execute(
            delete(Document).where(Document.collection_id == collection_id, Document.doc_id.in_(sorted(replaced)))
        )
    if not new_docs:
        return
    # Bulk INSERT ... RETURNING (one statement per table, not one flush per document).
    inserted = session.execute(
        insert(Document).returning(Document.id, Document.doc_id, sort_by_parameter_order=True),
        [
            {
                "collection_id": collection_id,
                "doc_id": doc.source.doc_id,
                "source": doc.source.source,
                "title": doc.source.title,
                "sha256": doc.sha256,
                "meta": doc.source.metadata,
                "text": doc.source.text,
            }
            for doc in new_docs.values()
        ],
    ).all()
    session.execute(
        insert(Chunk),
        [
            {"id": cid, "document_id": row.id, "ordinal": s.ordinal, "text": s.text, "char_start": s.char_start, "char_end": s.char_end}
            for row in inserted
            for cid, s in zip(new_docs[row.doc_id].chunk_ids, new_docs[row.doc_id].spans)
        ],
    )


def _active_build_id(session: Session, collection_id: int) -> str | None:
    return session.scalar(
        select(IndexBuild.id).where(IndexBuild.collection_id == collection_id, IndexBuild.status == "active")
    )


def _count_chunks(session: Session, collection_id: int) -> int:
    return session.scalar(select(func.count(Chunk.id)).join(Document).where(Document.collection_id == collection_id)) or 0
