"""Evaluation sets of a collection: labelled queries its models are gated on and never trained on.

A set is uploaded (BEIR queries + qrels naming documents, or ragas-style rows with `reference_doc_ids` /
`reference_chunk_ids`), or saved by a training run from the held-out share of the judged questions (`judged`).
Training from feedback leaves out every question that is in one of the collection's uploaded sets.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from citeloop.db import Chunk, Collection, Document, EvalSet, get_collection
from feedback.examples import query_key

# doc / chunk: the qrels name relevant documents or chunks, and everything else ranked counts as not relevant.
# judged: chunk ids with their judgement (1 relevant, 0 not), scored on the ranking condensed to the judged chunks
# (Sakai, 2007): feedback judges only what was shown, so an unjudged chunk is unknown, not irrelevant.
LEVELS = ("doc", "chunk", "judged")


class EvalSetError(ValueError):
    """An evaluation set that cannot be stored or found as given."""


@dataclass(frozen=True)
class EvalSetInfo:
    id: str
    collection: str
    name: str
    level: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    sha256: str
    created_by: str
    created_at: datetime

    @property
    def query_keys(self) -> set[str]:
        return {query_key(t) for t in self.queries.values()}


def evalset_from_rows(rows: list[dict], where: str = "rows") -> tuple[dict[str, str], dict[str, dict[str, int]], str]:
    """Ragas-style rows -> (queries, qrels, level): each row a `user_input` (or `question`) with
    `reference_doc_ids` (documents) or `reference_chunk_ids` (chunks); `id` optional."""
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    levels = set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise EvalSetError(f"{where} {i}: expected a JSON object")
        text = row.get("user_input") or row.get("question")
        if not isinstance(text, str) or not text.strip():
            raise EvalSetError(f"{where} {i}: needs a non-empty 'user_input' (or 'question')")
        for field, level in (("reference_doc_ids", "doc"), ("reference_chunk_ids", "chunk")):
            if field in row:
                ids = row[field]
                if not isinstance(ids, list) or not ids or not all(isinstance(x, (str, int)) for x in ids):
                    raise EvalSetError(f"{where} {i}: '{field}' must be a non-empty list of ids")
                levels.add(level)
                qid = str(row.get("id", i))
                if qid in queries:
                    raise EvalSetError(f"{where} {i}: id '{qid}' repeats")
                queries[qid] = text
                qrels[qid] = {str(x): 1 for x in ids}
                break
        else:
            raise EvalSetError(f"{where} {i}: needs 'reference_doc_ids' or 'reference_chunk_ids'")
    if len(levels) > 1:
        raise EvalSetError(f"{where}: mixes document and chunk references; use one kind per set")
    return queries, qrels, levels.pop() if levels else "doc"


def add_evalset(
    session: Session,
    collection: str,
    name: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    level: str,
    created_by: str,
) -> EvalSetInfo:
    """Store a set after checking that it has labelled queries and that every id it names is in the collection."""
    if level not in LEVELS:
        raise EvalSetError(f"level must be one of {', '.join(LEVELS)}, not '{level}'")
    name = name.strip()
    if not name:
        raise EvalSetError("an evaluation set needs a name")
    keep_zero = level == "judged"
    qrels = {q: {str(i): int(g) for i, g in r.items() if int(g) > 0 or (keep_zero and int(g) == 0)} for q, r in qrels.items()}
    qrels = {q: r for q, r in qrels.items() if any(g > 0 for g in r.values())}
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise EvalSetError(f"{len(missing)} judged query ids have no query text (e.g. '{missing[0]}')")
    queries = {q: queries[q] for q in sorted(qrels)}
    if not queries:
        raise EvalSetError("the set has no query with a relevant document or chunk")
    row = get_collection(session, collection)
    named = {i for r in qrels.values() for i in r}
    if level == "doc":  # chunk and judged sets name chunks
        known = set(session.scalars(select(Document.doc_id).where(Document.collection_id == row.id, Document.doc_id.in_(named))))
    else:
        known = set(
            session.scalars(select(Chunk.id).join(Document).where(Document.collection_id == row.id, Chunk.id.in_(named)))
        )
    unknown = sorted(named - known)
    if unknown:
        raise EvalSetError(f"{len(unknown)} of the {level} ids the set names are not in collection '{collection}' (e.g. '{unknown[0]}')")
    digest = hashlib.sha256(json.dumps({"level": level, "queries": queries, "qrels": qrels}, sort_keys=True).encode()).hexdigest()
    record = EvalSet(
        id=f"eval-{uuid.uuid4().hex[:12]}", collection_id=row.id, name=name, level=level, queries=queries, qrels=qrels,
        sha256=digest, created_by=created_by,
    )
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        raise EvalSetError(f"collection '{collection}' already has an evaluation set named '{name}'") from None
    return _info(record, collection)


def get_evalset(session: Session, evalset_id: str) -> EvalSetInfo:
    found = session.execute(select(EvalSet, Collection.name).join(Collection).where(EvalSet.id == evalset_id)).first()
    if found is None:
        raise EvalSetError(f"no evaluation set '{evalset_id}'")
    return _info(*found)


def list_evalsets(session: Session, collection: str, uploaded_only: bool = False) -> list[EvalSetInfo]:
    query = select(EvalSet).where(EvalSet.collection_id == get_collection(session, collection).id).order_by(EvalSet.created_at, EvalSet.id)
    sets = [_info(r, collection) for r in session.scalars(query)]
    return [s for s in sets if not (uploaded_only and s.created_by.startswith(TRAINING_AUTHOR))]


TRAINING_AUTHOR = "training:"  # created_by of the sets a training run saves from its held-out share


def uploaded_query_keys(session: Session, collection: str) -> set[str]:
    """`query_key`s of the questions in the collection's uploaded sets: training from feedback leaves them out."""
    return set().union(*(s.query_keys for s in list_evalsets(session, collection, uploaded_only=True)))


def _info(record: EvalSet, collection: str) -> EvalSetInfo:
    return EvalSetInfo(
        record.id, collection, record.name, record.level, dict(record.queries), {q: dict(r) for q, r in record.qrels.items()},
        record.sha256, record.created_by, record.created_at,
    )
