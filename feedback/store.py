"""Answers, searches and feedback events in the database: what was shown, and what users said about it.

An event is built from the stored answer or search it refers to (question, exact contexts, citations, model
versions), validated as a `FeedbackEvent`, and committed in the caller's transaction before the API answers.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from citeloop.db import AnswerRecord, Collection, FeedbackRecord, SearchRecord, get_collection, utcnow
from citeloop.errors import NotFoundError
from citeloop.keys import Principal
from feedback.events import FeedbackEvent, FeedbackKind
from feedback.trainset import erase_from_snapshots
from generation.pipeline import Answer, context_dict
from retrieval.retriever import RetrievedChunk


class NotFound(NotFoundError):
    """No such answer/search/citation in the collections the caller reaches (never says which)."""


class InvalidFeedback(ValueError):
    """The event contradicts what it refers to (a chunk that was not shown, neither answer nor search)."""


def collection_id(session: Session, name: str) -> int:
    """The collection's id; raises UnknownCollectionError."""
    return get_collection(session, name).id


def save_answer(session: Session, answer: Answer, actor: str) -> AnswerRecord:
    claims = [s for s in answer.sentences if s.is_claim]
    support = sum(s.supported for s in claims) / len(claims) if claims else (1.0 if answer.abstained else 0.0)
    record = AnswerRecord(
        id=answer.answer_id,
        collection_id=collection_id(session, answer.collection),
        actor=actor,
        question=answer.question,
        answer=answer.answer,
        abstained=answer.abstained,
        abstain_reason=answer.abstain_reason,
        extractive=answer.extractive,
        prompt=answer.prompt,
        prompt_format=answer.prompt_format,
        citations=[asdict(c) for c in answer.citations],
        contexts=[context_dict(c) for c in answer.contexts],
        support=support,
        models=answer.models,
        timings_ms=answer.timings_ms,
    )
    session.add(record)
    return record


def save_search(session: Session, collection: str, query: str, hits: list[RetrievedChunk], models: dict, actor: str) -> SearchRecord:
    record = SearchRecord(
        id=uuid.uuid4().hex,
        collection_id=collection_id(session, collection),
        actor=actor,
        query=query,
        results=[context_dict(h) for h in hits],
        models=models,
    )
    session.add(record)
    return record


def _reachable(session: Session, model, record_id: str, caller: Principal):
    """The record and its collection's name, if the caller reaches that collection; otherwise NotFound, as if absent."""
    found = session.execute(
        select(model, Collection.name).join(Collection, Collection.id == model.collection_id).where(model.id == record_id)
    ).first()
    if found is None or not caller.reaches(found[1]):
        raise NotFound(f"no {model.__tablename__[:-1]} '{record_id}'")
    return found


def record_event(
    session: Session,
    kind: FeedbackKind,
    caller: Principal,
    answer_id: str | None = None,
    search_id: str | None = None,
    chunk_id: str | None = None,
    citation_n: int | None = None,
    reason: str | None = None,
    correction: str | None = None,
) -> FeedbackEvent:
    """Store one event about a stored answer or search; raises NotFound or InvalidFeedback."""
    if answer_id:
        source, name = _reachable(session, AnswerRecord, answer_id, caller)
        query, shown, text = source.question, source.contexts, source.answer
        cited = [c["chunk_id"] for c in source.citations]
        if citation_n is not None:
            matching = [c for c in source.citations if c["n"] == citation_n]
            if not matching:
                raise NotFound(f"answer '{answer_id}' has no citation [{citation_n}]")
            chunk_id = matching[0]["chunk_id"]
    elif search_id:
        source, name = _reachable(session, SearchRecord, search_id, caller)
        query, shown, text, cited = source.query, source.results, None, []
    else:
        raise InvalidFeedback("give an answer_id or a search_id")
    if chunk_id is not None and chunk_id not in {c["chunk_id"] for c in shown}:
        raise InvalidFeedback(f"chunk '{chunk_id}' was not among the contexts shown")
    event = FeedbackEvent(
        id=uuid.uuid4().hex,
        kind=kind,
        collection=name,
        query=query,
        actor=caller.name,
        created_at=utcnow(),
        answer_id=answer_id,
        search_id=search_id,
        chunk_id=chunk_id,
        contexts=tuple(c["chunk_id"] for c in shown),
        cited=tuple(cited),
        answer=text,
        correction=correction,
        reason=reason,
        models=dict(source.models),
    )
    payload = {
        "query": event.query,
        "contexts": list(event.contexts),
        "cited": list(event.cited),
        "answer": event.answer,
        "correction": event.correction,
        "reason": event.reason,
        "models": event.models,
    }
    session.add(
        FeedbackRecord(
            id=event.id,
            kind=kind,
            collection_id=source.collection_id,
            actor=caller.name,
            answer_id=answer_id,
            search_id=search_id,
            chunk_id=chunk_id,
            citation_n=citation_n,
            payload=payload,
            created_at=event.created_at,
        )
    )
    return event


def export_rows(session: Session, collection: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every event of the collection with what it refers to: question, contexts (with text), answer,
    citations, model versions. A vote superseded by a later vote of the same key is marked so."""
    cid = collection_id(session, collection)
    query = select(FeedbackRecord).where(FeedbackRecord.collection_id == cid).order_by(FeedbackRecord.created_at, FeedbackRecord.id)
    if since is not None:
        query = query.where(FeedbackRecord.created_at >= since)
    events = session.scalars(query).all()
    answer_ids = {e.answer_id for e in events if e.answer_id}
    answers = {a.id: a for a in session.scalars(select(AnswerRecord).where(AnswerRecord.id.in_(answer_ids)))} if answer_ids else {}
    search_ids = {e.search_id for e in events if e.search_id}
    searches = {s.id: s for s in session.scalars(select(SearchRecord).where(SearchRecord.id.in_(search_ids)))} if search_ids else {}
    latest_vote: dict[tuple[str, str], str] = {}
    for e in events:
        if e.kind in ("thumbs_up", "thumbs_down"):
            latest_vote[(e.actor, e.answer_id)] = e.id
    rows = []
    for e in events:
        answer = answers.get(e.answer_id) if e.answer_id else None
        search = searches.get(e.search_id) if e.search_id else None
        rows.append(
            {
                "event_id": e.id,
                "kind": e.kind,
                "collection": collection,
                "actor": e.actor,
                "created_at": e.created_at.isoformat(),
                "answer_id": e.answer_id,
                "search_id": e.search_id,
                "chunk_id": e.chunk_id,
                "citation_n": e.citation_n,
                "superseded": e.kind in ("thumbs_up", "thumbs_down") and latest_vote.get((e.actor, e.answer_id)) != e.id,
                **e.payload,
                "contexts": (answer.contexts if answer else search.results if search else e.payload["contexts"]),
                "citations": answer.citations if answer else [],
                "abstained": answer.abstained if answer else None,
            }
        )
    return rows


def erase_actor(session: Session, actor: str, caller: Principal) -> dict[str, dict[str, int]]:
    """Right to erasure, in the collections the caller reaches: the person's events, answers and searches,
    and other people's events about the person's answers and searches (they repeat the question). Returns
    the counts erased per collection, for the collections where something was. Training snapshots lose the rows
    resolved from those events in the same transaction, and the models trained on them are marked."""
    erased = {}
    for cid, name in session.execute(select(Collection.id, Collection.name).order_by(Collection.name)).all():
        if caller.reaches(name):
            counts = _erase_in_collection(session, actor, cid)
            if any(counts.values()):
                erased[name] = counts
    return erased


def _erase_in_collection(session: Session, actor: str, cid: int) -> dict[str, int]:
    answer_ids = select(AnswerRecord.id).where(AnswerRecord.collection_id == cid, AnswerRecord.actor == actor)
    search_ids = select(SearchRecord.id).where(SearchRecord.collection_id == cid, SearchRecord.actor == actor)
    about_actor = (FeedbackRecord.actor == actor) | FeedbackRecord.answer_id.in_(answer_ids) | FeedbackRecord.search_id.in_(search_ids)
    erased_ids = set(session.scalars(select(FeedbackRecord.id).where(FeedbackRecord.collection_id == cid, about_actor)))
    # Pairs sampled from a logged prompt name their answer instead of an event.
    erased_ids |= {f"answer:{answer_id}" for answer_id in session.scalars(answer_ids)}
    snapshot_rows = erase_from_snapshots(session, cid, erased_ids)
    events = session.execute(delete(FeedbackRecord).where(FeedbackRecord.collection_id == cid, about_actor)).rowcount
    answers = session.execute(delete(AnswerRecord).where(AnswerRecord.collection_id == cid, AnswerRecord.actor == actor)).rowcount
    searches = session.execute(delete(SearchRecord).where(SearchRecord.collection_id == cid, SearchRecord.actor == actor)).rowcount
    return {"events": events or 0, "answers": answers or 0, "searches": searches or 0, "snapshot_rows": snapshot_rows}


def review_queue(session: Session, collection: str, limit: int = 50) -> list[dict[str, Any]]:
    """Answers most in need of a curator: thumbs-down and flagged first, then low citation support."""
    cid = collection_id(session, collection)
    downs = func.sum(case((FeedbackRecord.kind == "thumbs_down", 1), else_=0))
    flags = func.sum(case((FeedbackRecord.kind == "citation_flag", 1), else_=0))
    corrected = func.sum(case((FeedbackRecord.kind == "correction", 1), else_=0))
    counts = (
        select(FeedbackRecord.answer_id, downs.label("downs"), flags.label("flags"), corrected.label("corrections"))
        .where(FeedbackRecord.collection_id == cid, FeedbackRecord.answer_id.is_not(None))
        .group_by(FeedbackRecord.answer_id)
        .subquery()
    )
    rows = session.execute(
        select(AnswerRecord, counts.c.downs, counts.c.flags, counts.c.corrections)
        .outerjoin(counts, counts.c.answer_id == AnswerRecord.id)
        .where(AnswerRecord.collection_id == cid)
    ).all()
    items = []
    for answer, downs_n, flags_n, corrections_n in rows:
        downs_n, flags_n, corrections_n = int(downs_n or 0), int(flags_n or 0), int(corrections_n or 0)
        if corrections_n or not (downs_n or flags_n or answer.support < 1.0):
            continue  # corrected already, or nothing to review
        items.append(
            {
                "answer_id": answer.id,
                "question": answer.question,
                "answer": answer.answer,
                "abstained": answer.abstained,
                "support": answer.support,
                "thumbs_down": downs_n,
                "citation_flags": flags_n,
                "created_at": answer.created_at.isoformat(),
            }
        )
    items.sort(key=lambda i: (-(i["thumbs_down"] + i["citation_flags"]), i["support"], i["created_at"]))
    return items[:limit]

