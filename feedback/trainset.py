"""Training sets from stored feedback events. For both model kinds (the generator's preference pairs are built in
feedback/pairs.py): the gates every event passes (`gated_events`: opt-outs, erasure, personal-data scrubbing),
versioned snapshots in the database, and erasure reaching them. For the reranker: the label rules, conflict
resolution and key reliability below.

Rules, per (question, chunk):
- a curator's `relevant` mark is a strong positive; `not_relevant` and a flagged citation are hard negatives;
- the supported cited chunks of a thumbs-up answer are weak positives, a thumbs-down answer's cited chunks weak
  negatives; a key's latest vote on an answer replaces its earlier ones;
- one key counts once per (question, chunk): its latest judgement;
- curators outrank voters: where any curator judged, votes are not counted; curators who disagree are resolved
  by majority and a tie is dropped; votes are summed with each key's reliability, a zero sum dropped;
- a key's reliability is how often its judgements agree with the majority of the other keys on the same
  (question, chunk), smoothed towards trust: (agreements + 2) / (comparisons + 2); it scales the label weight.
Gates: the collection or a key opted out of training, erased events (never read: they are deleted), duplicates
and superseded votes, too few labelled queries. What each gate dropped is counted in the snapshot.
A deterministic share of the judged questions (`is_holdout`) is the collection's evaluation set, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from citeloop.db import AnswerRecord, ApiKey, FeedbackRecord, TrainingSnapshot, as_utc, get_collection
from feedback.events import FeedbackEvent
from feedback.examples import STRONG, WEAK, Labelled, TrainingExample, is_holdout, query_key

CURATOR_KINDS = {"relevant": +1, "not_relevant": -1, "citation_flag": -1}
VOTE_KINDS = {"thumbs_up": +1, "thumbs_down": -1}
SIGNAL_WEIGHT = {"curator": STRONG, "vote": WEAK}
RELIABILITY_PRIOR = 2  # agreements a key is credited with before any comparison


class TrainingSetError(ValueError):
    """No usable training set: nothing judged, everything opted out, too few labelled queries, a corrupt snapshot."""


@dataclass(frozen=True)
class Judgement:
    """One key's mark on one (question, chunk), from one event."""

    query_id: str
    query: str
    chunk_id: str
    actor: str
    sign: int  # +1 relevant, -1 not relevant
    signal: str  # curator | vote
    event_id: str
    created_at: datetime


@dataclass(frozen=True)
class LabelRow:
    """One resolved label of a snapshot; `event_ids` are the events it was resolved from (erasure removes the row)."""

    query_id: str
    query: str  # scrubbed of personal data
    chunk_id: str
    label: int
    weight: float
    signal: str
    event_ids: tuple[str, ...]


def prompt_key(prompt: tuple[tuple[str, str], ...]) -> str:
    """Names a stored prompt: answers served from the same one share it."""
    return hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:16]


def chat_messages(prompt: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """A stored (role, content) prompt as the chat messages a generator takes."""
    return [{"role": role, "content": content} for role, content in prompt]


@dataclass(frozen=True)
class PairRow:
    """One preference pair of a generator snapshot: two answers to the exact prompt one of them was served from."""

    query_id: str
    query: str  # scrubbed of personal data
    prompt: tuple[tuple[str, str], ...]  # (role, content) chat messages, the question in them scrubbed
    prompt_format: str
    chosen: str
    rejected: str
    rule: str  # correction | correction_over_refusal | votes | citation_flag | refusal | reward_samples
    weight: float
    answer_id: str  # the answer whose prompt it is
    event_ids: tuple[str, ...]  # the feedback events it was made from; a sampled pair: its answer, `answer:<id>`

    @property
    def messages(self) -> list[dict[str, str]]:
        return chat_messages(self.prompt)


@dataclass(frozen=True)
class RatedAnswer:
    """One resolved rating of a reward snapshot: an answer to a question, preferred (1) or not (0)."""

    query_id: str
    query: str  # scrubbed of personal data
    answer: str
    label: int
    weight: float
    signal: str  # curator | vote
    answer_id: str  # the stored answer it rates or, for a curator's correction, the answer corrected
    event_ids: tuple[str, ...]


ROW_TYPES = {"reranker": LabelRow, "generator": PairRow, "reward": RatedAnswer}


@dataclass
class TrainingSet:
    rows: list[LabelRow]  # training rows: held-out questions excluded
    eval_rows: list[LabelRow]  # the held-out questions' labels: the collection's feedback evaluation set
    counts: dict[str, int]
    dropped: dict[str, int]
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    examples: list[str] = field(default_factory=list)  # a few readable rows, for previews

    @property
    def labelled_queries(self) -> int:
        return len({r.query_id for r in self.rows if r.label > 0})


def judgements_from_events(events: Iterable[FeedbackEvent], supported_cited: dict[str, set[str]], dropped: Counter) -> list[Judgement]:
    """Events -> judgements, applying the vote and per-key rules. `supported_cited`: answer id -> the cited
    chunks whose citation the verifier found supported."""
    events = sorted(events, key=lambda e: (e.created_at, e.id))
    latest_vote = {(e.actor, e.answer_id): e.id for e in events if e.kind in VOTE_KINDS}
    latest: dict[tuple[str, str, str, str], Judgement] = {}
    for event in events:
        key = query_key(event.query)
        if event.kind in CURATOR_KINDS:
            marks = [(event.chunk_id, CURATOR_KINDS[event.kind], "curator")]
        elif event.kind in VOTE_KINDS:
            if latest_vote[(event.actor, event.answer_id)] != event.id:
                dropped["superseded_vote"] += 1
                continue
            sign = VOTE_KINDS[event.kind]
            supported = supported_cited.get(event.answer_id or "", set())
            chunks = [c for c in dict.fromkeys(event.cited) if sign < 0 or c in supported]
            if not chunks:
                dropped["vote_without_supported_citation"] += 1
                continue
            marks = [(c, sign, "vote") for c in chunks]
        else:  # corrections train the generator, not the reranker
            continue
        for chunk_id, sign, signal in marks:
            slot = (key, chunk_id, event.actor, signal)
            if slot in latest:
                dropped["duplicate_judgement"] += 1
            latest[slot] = Judgement(key, event.query, chunk_id, event.actor, sign, signal, event.id, event.created_at)
    return list(latest.values())


def key_reliability(judgements: list[Judgement]) -> dict[str, float]:
    """Each key's smoothed agreement with the majority of the other keys on the items they also judged."""
    by_item: dict[tuple[str, str], list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_item[(j.query_id, j.chunk_id)].append(j)
    agree: Counter = Counter()
    compared: Counter = Counter()
    for item in by_item.values():
        for j in item:
            others = sum(o.sign for o in item if o.actor != j.actor)
            if others != 0:
                compared[j.actor] += 1
                agree[j.actor] += (others > 0) == (j.sign > 0)
    actors = {j.actor for j in judgements}
    return {a: (agree[a] + RELIABILITY_PRIOR) / (compared[a] + RELIABILITY_PRIOR) for a in actors}


def resolve(judgements: list[Judgement], reliability: dict[str, float], counts: Counter, dropped: Counter) -> list[LabelRow]:
    """One label per (question, chunk): curators by majority (ties dropped), else reliability-weighted votes."""
    by_item: dict[tuple[str, str], list[Judgement]] = defaultdict(list)
    for j in judgements:
        by_item[(j.query_id, j.chunk_id)].append(j)
    rows = []
    for (query_id, chunk_id), item in sorted(by_item.items()):
        curators = [j for j in item if j.signal == "curator"]
        if curators:
            if len(curators) < len(item):
                dropped["vote_overridden_by_curator"] += len(item) - len(curators)
            plus = sum(j.sign > 0 for j in curators)
            minus = len(curators) - plus
            if plus and minus:
                counts["curator_conflicts"] += 1
                if plus == minus:
                    dropped["curator_tie"] += 1
                    continue
                counts["curator_conflicts_by_majority"] += 1
            label = +1 if plus > minus else -1
            agreeing = [j for j in curators if j.sign == label]
            weight = SIGNAL_WEIGHT["curator"] * sum(reliability[j.actor] for j in agreeing) / len(agreeing)
            used, signal = agreeing, "curator"
        else:
            total = sum(j.sign * reliability[j.actor] for j in item)
            if total == 0:
                dropped["vote_tie"] += 1
                continue
            label = +1 if total > 0 else -1
            used = [j for j in item if j.sign == label]
            weight = SIGNAL_WEIGHT["vote"] * abs(total) / len(item)
            signal = "vote"
        counts[f"{signal}_{'positive' if label > 0 else 'negative'}"] += 1
        rows.append(LabelRow(query_id, item[0].query, chunk_id, label, round(weight, 4), signal, tuple(sorted(j.event_id for j in item))))
    return rows


def stored_events(session: Session, collection_id: int, until: datetime | None = None) -> list[FeedbackEvent]:
    query = select(FeedbackRecord).where(FeedbackRecord.collection_id == collection_id)
    if until is not None:
        query = query.where(FeedbackRecord.created_at <= until)
    records = session.scalars(query.order_by(FeedbackRecord.created_at, FeedbackRecord.id)).all()
    return [
        FeedbackEvent(
            id=r.id, kind=r.kind, collection="", query=r.payload["query"], actor=r.actor, created_at=as_utc(r.created_at),  # type: ignore[arg-type]
            answer_id=r.answer_id, search_id=r.search_id, chunk_id=r.chunk_id, contexts=tuple(r.payload.get("contexts") or ()),
            cited=tuple(r.payload.get("cited") or ()), answer=r.payload.get("answer"), correction=r.payload.get("correction"),
            reason=r.payload.get("reason"), models=dict(r.payload.get("models") or {}),
        )
        for r in records
    ]


def supported_citations(session: Session, answer_ids: set[str]) -> dict[str, set[str]]:
    if not answer_ids:
        return {}
    rows = session.execute(select(AnswerRecord.id, AnswerRecord.citations).where(AnswerRecord.id.in_(answer_ids))).all()
    return {answer_id: {c["chunk_id"] for c in citations if c.get("supported")} for answer_id, citations in rows}


def gated_events(
    session: Session,
    collection: str,
    kinds: set[str],
    scrub: Callable[[str], str],
    text_fields: tuple[str, ...],
    until: datetime | None = None,
) -> tuple[list[FeedbackEvent], Counter, Counter]:
    """The collection's stored events of these kinds that may train a model, oldest first, with their
    `text_fields` scrubbed of personal data, and the counts and drops so far. Raises TrainingSetError when the
    collection opted out of training or no event is left (erased events are deleted: never read)."""
    row = get_collection(session, collection)
    if row.training_opt_out:
        raise TrainingSetError(f"collection '{collection}' has opted out of training (training_opt_out)")
    dropped: Counter = Counter()
    counts: Counter = Counter()
    opted_out = set(session.scalars(select(ApiKey.name).where(ApiKey.training_opt_out.is_(True))))
    usable = [e for e in stored_events(session, row.id, until) if e.kind in kinds]
    kept = [e for e in usable if e.actor not in opted_out]
    dropped["key_opted_out"] += len(usable) - len(kept)
    if not kept:
        why = "all of them come from keys that opted out of training" if usable else f"there are no events of kind {', '.join(sorted(kinds))}"
        raise TrainingSetError(f"collection '{collection}' has no feedback to train on: {why}")
    counts.update(f"events_{e.kind}" for e in kept)
    texts = sorted({text for e in kept for name in text_fields if (text := getattr(e, name))})
    scrubbed = {text: scrub(text) for text in texts}
    counts["texts_scrubbed"] = sum(text != clean for text, clean in scrubbed.items())
    kept = [replace(e, **{name: scrubbed[getattr(e, name)] for name in text_fields if getattr(e, name)}) for e in kept]
    return kept, counts, dropped


def build_training_set(
    session: Session,
    collection: str,
    scrub: Callable[[str], str],
    holdout: float,
    min_queries: int,
    evaluation_queries: set[str] = frozenset(),
    until: datetime | None = None,
) -> TrainingSet:
    """The collection's stored feedback through the rules and gates; raises TrainingSetError when nothing usable
    is left (the message says which gate). Questions are scrubbed first, so everything downstream, the question's
    id (`query_key` of the scrubbed text) included, sees only scrubbed text. `evaluation_queries`: query keys of
    the collection's uploaded evaluation sets, never trained on; `until`: only events created up to then."""
    kept, counts, dropped = gated_events(session, collection, set(CURATOR_KINDS) | set(VOTE_KINDS), scrub, ("query",), until)
    supported = supported_citations(session, {e.answer_id for e in kept if e.kind in VOTE_KINDS and e.answer_id})
    judgements = judgements_from_events(kept, supported, dropped)
    labels = resolve(judgements, key_reliability(judgements), counts, dropped)
    in_evaluation = [r for r in labels if r.query_id in evaluation_queries]
    if in_evaluation:
        dropped["question_in_evaluation_set"] += len(in_evaluation)
    labels = [r for r in labels if r.query_id not in evaluation_queries]
    train = [r for r in labels if not is_holdout(r.query_id, holdout)]
    held = [r for r in labels if is_holdout(r.query_id, holdout)]
    result = TrainingSet(train, held, dict(counts), dict(dropped), kept[0].created_at, kept[-1].created_at)
    result.counts |= {
        "rows": len(train),
        "queries": len({r.query_id for r in train}),
        "labelled_queries": result.labelled_queries,
        "held_out_queries": len({r.query_id for r in held if r.label > 0}),
    }
    result.examples = [f"{'+' if r.label > 0 else '-'}{r.weight:g} {r.signal}: {r.query!r} -> {r.chunk_id}" for r in train[:5]]
    if result.labelled_queries < min_queries:
        raise TrainingSetError(
            f"collection '{collection}' has {result.labelled_queries} judged questions with a relevant chunk to train on "
            f"(outside the evaluation share); at least {min_queries} are needed (CITELOOP_TRAINING_MIN_QUERIES)"
        )
    return result


def held_out_evalset(training_set: TrainingSet) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The held-out questions with a relevant chunk, and their judged chunks (1 relevant, 0 not): a `judged` set."""
    with_positive = {r.query_id for r in training_set.eval_rows if r.label > 0}
    queries, qrels = {}, {}
    for r in training_set.eval_rows:
        if r.query_id in with_positive:
            queries[r.query_id] = r.query
            qrels.setdefault(r.query_id, {})[r.chunk_id] = int(r.label > 0)
    return queries, qrels


def examples_from_rows(rows: Iterable[LabelRow]) -> list[TrainingExample]:
    """Snapshot rows -> one contrastive example per question with a positive (negatives alone wait for one)."""
    by_query: dict[str, tuple[str, list[Labelled], list[Labelled]]] = {}
    for r in sorted(rows, key=lambda r: (r.query_id, -r.weight, r.chunk_id)):
        _, positives, negatives = by_query.setdefault(r.query_id, (r.query, [], []))
        (positives if r.label > 0 else negatives).append(Labelled(r.chunk_id, r.weight))
    return [
        TrainingExample(q, text, tuple(pos), tuple(neg), source="feedback")
        for q, (text, pos, neg) in sorted(by_query.items())
        if pos
    ]


def rows_sha256(rows: Iterable[dict]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    collection: str
    kind: str
    sha256: str
    counts: dict
    dropped: dict
    first_event_at: datetime | None
    last_event_at: datetime | None
    erased_rows: int
    rows: tuple[LabelRow, ...] | tuple[PairRow, ...] | tuple[RatedAnswer, ...]


def save_snapshot(session: Session, collection: str, kind: str, training_set) -> SnapshotInfo:
    """Store a reranker's TrainingSet, a generator's PairSet or a reward model's RatingSet as a versioned snapshot."""
    stored = [json.loads(json.dumps(asdict(r))) for r in training_set.rows]  # tuples as JSON lists
    record = TrainingSnapshot(
        id=f"snap-{uuid.uuid4().hex[:12]}", collection_id=get_collection(session, collection).id, kind=kind,
        sha256=rows_sha256(stored), rows=stored, counts=training_set.counts, dropped=training_set.dropped,
        first_event_at=training_set.first_event_at, last_event_at=training_set.last_event_at, erased_rows=0,
    )
    session.add(record)
    session.flush()
    return _snapshot_info(record, collection)


def load_snapshot(session: Session, snapshot_id: str) -> SnapshotInfo:
    """The snapshot, after checking its rows still have its sha256."""
    record = session.get(TrainingSnapshot, snapshot_id)
    if record is None:
        raise TrainingSetError(f"no training snapshot '{snapshot_id}'")
    if rows_sha256(record.rows) != record.sha256:
        raise TrainingSetError(f"training snapshot '{snapshot_id}' is corrupt: its rows do not match its sha256 {record.sha256}")
    from citeloop.db import Collection

    return _snapshot_info(record, session.get(Collection, record.collection_id).name)


def _snapshot_info(record: TrainingSnapshot, collection: str) -> SnapshotInfo:
    rows = tuple(_row(ROW_TYPES[record.kind], r) for r in record.rows)
    return SnapshotInfo(
        record.id, collection, record.kind, record.sha256, dict(record.counts), dict(record.dropped),
        record.first_event_at, record.last_event_at, record.erased_rows, rows,
    )


def _row(row_type: type, stored: dict):
    """A snapshot row from its JSON: lists back to the tuples the row type holds."""
    tuples = {"event_ids": tuple(stored["event_ids"])}
    if "prompt" in stored:
        tuples["prompt"] = tuple(tuple(message) for message in stored["prompt"])
    return row_type(**(stored | tuples))


def erase_from_snapshots(session: Session, collection_id: int, event_ids: set[str]) -> int:
    """Remove the rows resolved from any of these events from the collection's snapshots (in the caller's
    transaction, with the events themselves) and mark the model versions trained on a changed snapshot.
    Returns the rows removed."""
    from citeloop.db import ModelVersion, utcnow

    if not event_ids:
        return 0
    removed = 0
    for record in session.scalars(select(TrainingSnapshot).where(TrainingSnapshot.collection_id == collection_id)):
        kept = [r for r in record.rows if not event_ids.intersection(r["event_ids"])]
        if len(kept) == len(record.rows):
            continue
        removed += len(record.rows) - len(kept)
        record.erased_rows += len(record.rows) - len(kept)
        record.rows, record.sha256 = kept, rows_sha256(kept)
        for version in session.scalars(select(ModelVersion).where(ModelVersion.snapshot_id == record.id)):
            version.data_erased_at = version.data_erased_at or utcnow()
    # A reward model's gate keeps its held-out ratings and pairs (with their event ids) in the version itself.
    for version in session.scalars(select(ModelVersion).where(ModelVersion.collection_id == collection_id, ModelVersion.kind == "reward")):
        held = dict((version.params or {}).get("eval") or {})
        ratings = [r for r in held.get("ratings", ()) if not event_ids.intersection(r["event_ids"])]
        pairs = [p for p in held.get("pairs", ()) if not event_ids.intersection(p[3])]
        if len(ratings) < len(held.get("ratings", ())) or len(pairs) < len(held.get("pairs", ())):
            version.params = {**version.params, "eval": held | {"ratings": ratings, "pairs": pairs}}
            version.data_erased_at = version.data_erased_at or utcnow()
    # A generator's gate keeps its held-out questions (references from curators' answers) in the version itself.
    for version in session.scalars(select(ModelVersion).where(ModelVersion.collection_id == collection_id, ModelVersion.kind == "generator")):
        held = dict((version.params or {}).get("eval") or {})
        if "question_events" not in held:  # a version from before they were kept: any of its questions may be the erased
            held["question_events"] = {q["id"]: sorted(event_ids) for q in held.get("questions", ())}
        events = held["question_events"]
        erased = {q for q, ids in events.items() if event_ids.intersection(ids)}
        if erased:
            questions = [q for q in held.get("questions", ()) if q["id"] not in erased]
            kept_events = {q: ids for q, ids in events.items() if q not in erased}
            version.params = {**version.params, "eval": held | {"questions": questions, "question_events": kept_events}}
            version.data_erased_at = version.data_erased_at or utcnow()
    return removed
