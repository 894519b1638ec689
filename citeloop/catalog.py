"""Collections as stored: their counts, active builds and settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from citeloop.config import Settings
from citeloop.db import Chunk, Collection, Document, IndexBuild, get_collection, session_scope


@dataclass
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    build_id: str | None
    dense_index: str | None
    updated: str | None
    training_opt_out: bool = False


def list_collections(settings: Settings | None = None) -> list[CollectionInfo]:
    with session_scope(settings) as session:
        doc_counts = dict(session.execute(select(Document.collection_id, func.count(Document.id)).group_by(Document.collection_id)).all())
        chunk_counts = dict(
            session.execute(select(Document.collection_id, func.count(Chunk.id)).join(Chunk).group_by(Document.collection_id)).all()
        )
        builds = {b.collection_id: b for b in session.scalars(select(IndexBuild).where(IndexBuild.status == "active"))}
        result = []
        for c in session.scalars(select(Collection).order_by(Collection.name)):
            build = builds.get(c.id)
            result.append(
                CollectionInfo(
                    c.name,
                    doc_counts.get(c.id, 0),
                    chunk_counts.get(c.id, 0),
                    build.id[:12] if build else None,
                    build.dense_index if build else None,
                    build.created_at.strftime("%Y-%m-%d %H:%M") if build else None,
                    c.training_opt_out,
                )
            )
        return result


def set_collection_training_opt_out(name: str, opt_out: bool, settings: Settings | None = None) -> None:
    """Keep the collection's feedback out of every training set (its events are still stored and exported), or
    let it back in; raises UnknownCollectionError."""
    with session_scope(settings) as session:
        get_collection(session, name).training_opt_out = opt_out
