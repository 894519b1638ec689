"""Generator preference pairs from stored feedback: two answers to the exact prompt one of them was served from.

Rules (an answer's prompt is the chat messages it was generated from, stored with it):
- a curator's correction of an answer is chosen over the answer (`correction`), or over the refusal when the
  model declined (`correction_over_refusal`); a curator's latest correction of an answer replaces the earlier ones;
- answers served from the same prompt: one the voters liked is chosen over one they did not (`votes`); each key's
  latest vote counts, weighted by the key's agreement with the other keys on the answers they both voted on;
- an answer with a flagged citation is rejected; the chosen answer is regenerated from the same sources without
  the flagged one (`citation_flag`; renumbered back into the prompt's numbering), unless a curator corrected it;
- where curators judged every source an answer was shown not relevant (by majority), the refusal is chosen over
  the answer (`refusal`).
Gates, besides the training sets' own (feedback/trainset.py: opt-outs, erasure, personal data, snapshots): an
answer stored without its prompt or with a prompt of another format (`PROMPT_FORMAT`) makes no pair; a chosen
answer that fails citation verification is dropped; duplicate pairs count once. Every drop is counted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.orm import Session

from citeloop.config import Settings
from citeloop.db import AnswerRecord
from feedback.events import FeedbackEvent
from feedback.examples import STRONG, WEAK, is_holdout, query_key
from feedback.trainset import (
    CURATOR_KINDS,
    VOTE_KINDS,
    Judgement,
    PairRow,
    TrainingSetError,
    gated_events,
    judgements_from_events,
    key_reliability,
    resolve,
)
from generation.citations import Source, SpanEncoder, SupportThresholds
from generation.components import AbstentionPolicy, CitationVerifier
from generation.prompt import PROMPT_FORMAT, REFUSAL, declined
from retrieval.embedder import load_embedder

PAIR_KINDS = set(CURATOR_KINDS) | set(VOTE_KINDS) | {"correction"}
# (question, answer, sources) -> the answer with its citations verified, or None when it fails verification.
VerifyAnswer = Callable[[str, str, Sequence[Source]], "str | None"]
# (question, sources) -> a newly generated answer citing those sources as [1] .. [len(sources)].
Regenerate = Callable[[str, Sequence[Source]], str]


# (the answer whose prompt it is, chosen (None: no verifiable answer), rejected, rule, weight, event ids)
Candidate = tuple["ServedAnswer", "str | None", str, str, float, tuple[str, ...]]


@dataclass
class PairSet:
    rows: list[PairRow]  # training pairs: held-out questions excluded
    eval_rows: list[PairRow]  # the held-out questions' pairs: chosen answers the gate can score against
    counts: dict[str, int]
    dropped: dict[str, int]
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    examples: list[str] = field(default_factory=list)  # a few readable pairs, for previews


@dataclass(frozen=True)
class ServedAnswer:
    """What an answer was generated from, as stored: the pairs' prompt and rejected or chosen side."""

    id: str
    question: str  # scrubbed
    text: str
    abstained: bool
    prompt: tuple[tuple[str, str], ...]
    prompt_format: str | None
    sources: tuple[Source, ...]
    prompt_key: str = field(init=False)  # names the prompt: answers served from the same one share it

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_key", hashlib.sha256(json.dumps(self.prompt).encode()).hexdigest()[:16])

    @property
    def refused(self) -> bool:
        return self.abstained or declined(self.text)


def served_answers(session: Session, answer_ids: set[str], scrub: Callable[[str], str]) -> dict[str, ServedAnswer]:
    """The stored answers, their questions (inside the prompt too) scrubbed."""
    if not answer_ids:
        return {}
    out = {}
    for record in session.scalars(select(AnswerRecord).where(AnswerRecord.id.in_(answer_ids))):
        question = scrub(record.question)
        prompt = tuple((m["role"], m["content"].replace(record.question, question)) for m in record.prompt or ())
        sources = tuple(
            Source(n, c["chunk_id"], c.get("doc_id", ""), c.get("title", ""), c["text"]) for n, c in enumerate(record.contexts, start=1)
        )
        out[record.id] = ServedAnswer(record.id, question, record.answer, record.abstained, prompt, record.prompt_format, sources)
    return out


def renumbered(text: str, numbers: dict[int, int]) -> str:
    """Citation markers [k] rewritten as [numbers[k]]; a marker with no number there is removed."""
    return re.sub(r"\[(\d+)\]", lambda m: f"[{numbers[int(m.group(1))]}]" if int(m.group(1)) in numbers else "", text)


def build_pair_set(
    session: Session,
    collection: str,
    scrub: Callable[[str], str],
    verify: VerifyAnswer,
    regenerate: Regenerate | None,
    holdout: float,
    min_pairs: int,
    evaluation_queries: set[str] = frozenset(),
    until: datetime | None = None,
) -> PairSet:
    """The collection's stored feedback as preference pairs, through the rules and gates; raises TrainingSetError
    when fewer than `min_pairs` are left outside the held-out share (the message says why). `regenerate` None:
    flagged answers without a correction make no pair (counted)."""
    scrub = lru_cache(maxsize=None)(scrub)  # a question is in its events and in its answers' prompts
    events, counts, dropped = gated_events(session, collection, PAIR_KINDS, scrub, ("query", "correction"), until)
    answers = served_answers(session, {e.answer_id for e in events if e.answer_id}, scrub)
    usable = {}
    for answer in answers.values():
        if not answer.prompt:
            dropped["answer_without_stored_prompt"] += 1
        elif answer.prompt_format != PROMPT_FORMAT:
            dropped["answer_of_another_prompt_format"] += 1
        else:
            usable[answer.id] = answer
    candidates: list[Candidate] = []
    corrected = _correction_pairs(events, usable, dropped, candidates)
    _vote_pairs(events, usable, dropped, candidates)
    _flag_pairs(events, usable, corrected, regenerate, dropped, candidates)
    _refusal_pairs(events, usable, corrected, candidates)
    rows, seen = [], set()
    for answer, chosen, rejected, rule, weight, event_ids in candidates:
        if chosen is None:
            dropped[f"{rule}_not_verified"] += 1
            continue
        if chosen != REFUSAL:
            checked = verify(answer.question, chosen, answer.sources)
            if checked is None:
                dropped[f"{rule}_not_verified"] += 1
                continue
            chosen = checked
        identity = (answer.prompt_key, chosen, rejected)
        if identity in seen or chosen == rejected:
            dropped["duplicate_pair"] += 1
            continue
        seen.add(identity)
        counts[f"pairs_{rule}"] += 1
        rows.append(
            PairRow(query_key(answer.question), answer.question, answer.prompt, PROMPT_FORMAT, chosen, rejected, rule, round(weight, 4), answer.id, event_ids)
        )
    if in_evaluation := sum(r.query_id in evaluation_queries for r in rows):
        dropped["question_in_evaluation_set"] += in_evaluation
        rows = [r for r in rows if r.query_id not in evaluation_queries]
    train = [r for r in rows if not is_holdout(r.query_id, holdout)]
    held = [r for r in rows if is_holdout(r.query_id, holdout)]
    result = PairSet(train, held, dict(counts), dict(dropped), events[0].created_at, events[-1].created_at)
    result.counts |= {"rows": len(train), "queries": len({r.query_id for r in train}), "held_out_pairs": len(held)}
    result.examples = [f"{r.rule}: {r.query!r}: {r.chosen[:60]!r} > {r.rejected[:60]!r}" for r in train[:5]]
    if len(train) < min_pairs:
        raise TrainingSetError(
            f"collection '{collection}' has {len(train)} preference pairs to train on (outside the evaluation share); "
            f"at least {min_pairs} are needed (CITELOOP_TRAINING_MIN_PAIRS); dropped: {dict(dropped) or 'none'}"
        )
    return result


def check_pair_feedback(session: Session, collection: str, holdout: float, min_pairs: int) -> None:
    """Raises TrainingSetError when the stored feedback cannot make `min_pairs` training pairs: the pairs counted
    before verification and personal-data scrubbing, each flagged answer as the pair its regeneration may make
    (what a job checks before it is queued; the job applies every gate)."""
    pairs = build_pair_set(session, collection, lambda text: text, lambda question, answer, sources: answer, None, holdout, 0)
    possible = len(pairs.rows) + pairs.dropped.get("flag_without_regeneration", 0)
    if possible < min_pairs:
        raise TrainingSetError(
            f"collection '{collection}' has feedback for at most {possible} preference pairs to train on (outside the evaluation share); "
            f"at least {min_pairs} are needed (CITELOOP_TRAINING_MIN_PAIRS); dropped: {pairs.dropped or 'none'}"
        )


def _correction_pairs(events, answers, dropped, out) -> set[str]:
    """Returns the answers a curator corrected."""
    latest: dict[str, FeedbackEvent] = {}
    for event in events:
        if event.kind != "correction":
            continue
        if event.answer_id not in answers:
            dropped["correction_of_unusable_answer"] += 1
            continue
        if event.answer_id in latest:
            dropped["superseded_correction"] += 1
        latest[event.answer_id] = event
    for answer_id, event in latest.items():
        answer = answers[answer_id]
        rule = "correction_over_refusal" if answer.refused else "correction"
        rejected = REFUSAL if answer.refused else answer.text
        out.append((answer, event.correction, rejected, rule, STRONG, (event.id,)))
    return set(latest)


def _vote_pairs(events, answers, dropped, out) -> None:
    votes = [e for e in events if e.kind in VOTE_KINDS]
    latest = {(e.actor, e.answer_id): e for e in votes}
    dropped["superseded_vote"] += len(votes) - len(latest)
    # A vote is a judgement of the answer as a whole: the answer is the item keys agree or disagree on.
    judgements = [
        Judgement(query_key(e.query), e.query, e.answer_id, e.actor, VOTE_KINDS[e.kind], "vote", e.id, e.created_at)
        for e in latest.values()
        if e.answer_id in answers
    ]
    dropped["vote_on_unusable_answer"] += len(latest) - len(judgements)
    reliability = key_reliability(judgements)
    net: dict[str, float] = defaultdict(float)
    event_ids: dict[str, list[str]] = defaultdict(list)
    for j in judgements:
        net[j.chunk_id] += j.sign * reliability[j.actor]
        event_ids[j.chunk_id].append(j.event_id)
    by_prompt: dict[str, list[str]] = defaultdict(list)
    for answer_id, total in net.items():
        if total == 0:
            dropped["vote_tie"] += 1
        else:
            by_prompt[answers[answer_id].prompt_key].append(answer_id)
    for answer_ids in by_prompt.values():
        liked = sorted(a for a in answer_ids if net[a] > 0)
        disliked = sorted(a for a in answer_ids if net[a] < 0)
        if not (liked and disliked):
            dropped["votes_without_a_contrary_answer"] += len(answer_ids)
        for good in liked:
            for bad in disliked:
                weight = WEAK * min(abs(net[good]), abs(net[bad]))
                chosen = REFUSAL if answers[good].refused else answers[good].text
                out.append((answers[bad], chosen, answers[bad].text, "votes", weight, tuple(sorted(event_ids[good] + event_ids[bad]))))


def _flag_pairs(events, answers, corrected, regenerate, dropped, out) -> None:
    flagged: dict[str, list[FeedbackEvent]] = defaultdict(list)
    for event in events:
        if event.kind == "citation_flag":
            if event.answer_id not in answers:
                dropped["flag_on_unusable_answer"] += 1
            elif event.answer_id in corrected:
                dropped["flag_on_corrected_answer"] += 1
            else:
                flagged[event.answer_id].append(event)
    for answer_id, flags in flagged.items():
        answer = answers[answer_id]
        if regenerate is None:
            dropped["flag_without_regeneration"] += 1
            continue
        bad = {e.chunk_id for e in flags}
        kept = [s for s in answer.sources if s.chunk_id not in bad]
        if not kept:
            dropped["flag_on_every_source"] += 1
            continue
        numbered = [Source(i, s.chunk_id, s.doc_id, s.title, s.text, s.excerpt) for i, s in enumerate(kept, start=1)]
        draft = regenerate(answer.question, numbered)
        chosen = None if declined(draft) else renumbered(draft, {i: s.n for i, s in enumerate(kept, start=1)})
        out.append((answer, chosen, answer.text, "citation_flag", STRONG, tuple(sorted(e.id for e in flags))))


def _refusal_pairs(events, answers, corrected, out) -> None:
    """A corrected answer's question has an answer: no refusal is chosen for it."""
    curator = [e for e in events if e.kind in CURATOR_KINDS and e.kind != "citation_flag"]
    judgements = judgements_from_events(curator, {}, Counter())
    labels = {(r.query_id, r.chunk_id): r for r in resolve(judgements, key_reliability(judgements), Counter(), Counter())}
    for answer in answers.values():
        if answer.refused or answer.id in corrected:
            continue
        marks = [labels.get((query_key(answer.question), s.chunk_id)) for s in answer.sources]
        if marks and all(m is not None and m.label < 0 for m in marks):
            event_ids = tuple(sorted(i for m in marks for i in m.event_ids))
            out.append((answer, REFUSAL, answer.text, "refusal", STRONG, event_ids))


def citation_verifier(settings: Settings) -> VerifyAnswer:
    """Serving's own check on a chosen answer: its citations verified against the prompt's sources, and refused
    when too few of its claims are supported (CITELOOP_ANSWER_MIN_SUPPORT); the verified text has the markers
    verification attributed."""
    spans = SpanEncoder(load_embedder(settings).embed)
    thresholds = SupportThresholds(settings.citation_min_similarity, settings.citation_min_overlap, settings.citation_min_relevance)
    verifier = CitationVerifier(spans, thresholds)
    policy = AbstentionPolicy(settings.abstain_min_evidence, settings.answer_min_support, None, frozenset(), settings.abstain_rare_term_share)

    def verify(question: str, answer: str, sources: Sequence[Source]) -> str | None:
        verified = verifier.run(question, answer, sources)
        return None if policy.after_verifying(verified) else verified.answer

    return verify
