"""Evaluation sets of a collection: labelled queries its models are gated on and never trained on.

A set is uploaded (BEIR queries + qrels naming documents, or ragas-style rows with `reference_doc_ids` /
`reference_chunk_ids`), or saved by a training run from the held-out share of the judged questions (`judged`).
Uploaded rows with a `reference` answer, and rows marked unanswerable (`"answerable": false`, or the shape
`unanswerable`), are also the set's QA questions: a generator trained from feedback is gated on them. Training from
feedback leaves out every question that is in one of the collection's uploaded sets.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from citeloop.db import Chunk, Collection, Document, EvalSet, get_collection
from eval.qa import QuestionRow, QuestionsFormatError, question_row
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
    qa_rows: list[dict] = field(default_factory=list)  # `QuestionRow` fields: the generator gate's questions

    @property
    def query_keys(self) -> set[str]:
        """Every question of the set, retrieval queries and QA questions alike."""
        return {query_key(t) for t in self.queries.values()} | {query_key(r["question"]) for r in self.qa_rows}

    def questions(self) -> list[QuestionRow]:
        return [QuestionRow(**row) for row in self.qa_rows]


@dataclass
class LabelledRows:
    """Uploaded rows as a set's parts: retrieval labels (queries, qrels at `level`) and QA questions."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    level: str
    qa_rows: list[QuestionRow]


def evalset_from_rows(rows: list[dict], where: str = "row") -> LabelledRows:
    """Ragas-style rows: each a `user_input` (or `question`) with `reference_doc_ids` (documents) or
    `reference_chunk_ids` (chunks), and optionally a `reference` answer (or `reference_answers`), `shape` and
    `filters` as `eval qa` reads them; `id` optional. A row marked unanswerable (`"answerable": false` or shape
    `unanswerable`) names no ids and no reference: the collection holds no answer to it."""
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    qa_rows: list[QuestionRow] = []
    ids: set[str] = set()
    levels = set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise EvalSetError(f"{where} {i}: expected a JSON object")
        text = row.get("user_input") or row.get("question")
        if not isinstance(text, str) or not text.strip():
            raise EvalSetError(f"{where} {i}: needs a non-empty 'user_input' (or 'question')")
        named = [(name, level) for name, level in (("reference_doc_ids", "doc"), ("reference_chunk_ids", "chunk")) if name in row]
        for name, _ in named:
            if not isinstance(row[name], list) or not row[name] or not all(isinstance(x, (str, int)) for x in row[name]):
                raise EvalSetError(f"{where} {i}: '{name}' must be a non-empty list of ids")
        try:
            question = question_row(row | {"user_input": text}, f"{where} {i}", i)
        except QuestionsFormatError as exc:
            raise EvalSetError(str(exc)) from None
        if question.id in ids:
            raise EvalSetError(f"{where} {i}: id '{question.id}' repeats")
        ids.add(question.id)
        unanswerable = row.get("answerable") is False or question.shape == "unanswerable"
        if unanswerable:
            if named or question.references:
                raise EvalSetError(f"{where} {i}: an unanswerable row names no reference answer and no reference ids")
            qa_rows.append(question)
            continue
        if not named:
            raise EvalSetError(
                f"{where} {i}: needs 'reference_doc_ids' or 'reference_chunk_ids' "
                '(or "answerable": false for a question the collection holds no answer to)'
            )
        name, level = named[0]
        levels.add(level)
        queries[question.id] = text
        qrels[question.id] = {str(x): 1 for x in row[name]}
        if question.references:
            qa_rows.append(question)
    if len(levels) > 1:
        raise EvalSetError(f"{where}: mixes document and chunk references; use one kind per set")
    return LabelledRows(queries, qrels, levels.pop() if levels else "doc", qa_rows)


def add_evalset(
    session: Session,
    collection: str,
    name: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    level: str,
    created_by: str,
    qa_rows: list[QuestionRow] = (),
) -> EvalSetInfo:
    """Store a set after checking that it has labelled queries (unanswerable QA questions alone are not a set) and
    that every id it names is in the collection. A QA question of a chunk-level set cites the documents of its chunks."""
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
    if not queries:  # an answerable QA question names its documents: it is a query here too
        raise EvalSetError("the set has no query with a relevant document or chunk (unanswerable questions alone are not a set)")
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
    if level == "chunk" and qa_rows:
        doc_of = dict(session.execute(select(Chunk.id, Document.doc_id).join(Document).where(Chunk.id.in_(named))).all())
        qa_rows = [replace(q, doc_ids=sorted({doc_of[c] for c in qrels.get(q.id, {})})) for q in qa_rows]
    stored_rows = [asdict(q) for q in qa_rows]
    content = {"level": level, "queries": queries, "qrels": qrels} | ({"qa_rows": stored_rows} if stored_rows else {})
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    record = EvalSet(
        id=f"eval-{uuid.uuid4().hex[:12]}", collection_id=row.id, name=name, level=level, queries=queries, qrels=qrels,
        qa_rows=stored_rows, sha256=digest, created_by=created_by,
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
        record.sha256, record.created_by, record.created_at, list(record.qa_rows),
    )
