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

The same judgements rate single answers for the reward model (`build_rating_set`): each side of a curator's pair,
and each voted answer by its net vote.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
    RatedAnswer,
    TrainingSetError,
    chat_messages,
    gated_events,
    prompt_key,
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
# (chat messages, seed) -> an answer sampled from them.
Sample = Callable[[list[dict[str, str]], int], str]
# (question, answer) pairs -> the reward model's scores.
Score = Callable[[Sequence[tuple[str, str]]], list[float]]
# Sampled answers whose rewards differ by less are not told apart (scores are probabilities of being preferred).
SAMPLE_MARGIN = 0.2


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
        object.__setattr__(self, "prompt_key", prompt_key(self.prompt))

    @property
    def refused(self) -> bool:
        return self.abstained or declined(self.text)


def served_answers(session: Session, answer_ids: set[str], scrub: Callable[[str], str]) -> dict[str, ServedAnswer]:
    """The stored answers, their questions (inside the prompt too) scrubbed."""
    if not answer_ids:
        return {}
    return {record.id: served_answer(record, scrub) for record in session.scalars(select(AnswerRecord).where(AnswerRecord.id.in_(answer_ids)))}


def served_answer(record: AnswerRecord, scrub: Callable[[str], str]) -> ServedAnswer:
    """A stored answer, its question (inside the prompt too) scrubbed."""
    question = scrub(record.question)
    prompt = tuple((m["role"], m["content"].replace(record.question, question)) for m in record.prompt or ())
    sources = tuple(Source(n, c["chunk_id"], c.get("doc_id", ""), c.get("title", ""), c["text"]) for n, c in enumerate(record.contexts, start=1))
    return ServedAnswer(record.id, question, record.answer, record.abstained, prompt, record.prompt_format, sources)


def renumbered(text: str, numbers: dict[int, int]) -> str:
    """Citation markers [k] rewritten as [numbers[k]]; a marker with no number there is removed."""
    return re.sub(r"\[(\d+)\]", lambda m: f"[{numbers[int(m.group(1))]}]" if int(m.group(1)) in numbers else "", text)


@dataclass
class JudgedAnswers:
    """The stored answers the feedback judged, through the rules: candidate pairs (before verification) and each
    voted answer's net vote."""

    candidates: list[Candidate]
    net_votes: list[tuple[ServedAnswer, float, tuple[str, ...]]]  # (answer, reliability-weighted net vote != 0, event ids)
    counts: Counter
    dropped: Counter
    first_event_at: datetime | None
    last_event_at: datetime | None


def judged_answers(
    session: Session, collection: str, scrub: Callable[[str], str], regenerate: Regenerate | None, until: datetime | None = None
) -> JudgedAnswers:
    """The collection's feedback on answers through the gates and pair rules; `regenerate` None: a flagged answer's
    candidate has no chosen side."""
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
    net_votes = _vote_pairs(events, usable, dropped, candidates)
    _flag_pairs(events, usable, corrected, regenerate, dropped, candidates)
    _refusal_pairs(events, usable, corrected, candidates)
    return JudgedAnswers(candidates, net_votes, counts, dropped, events[0].created_at, events[-1].created_at)


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
    judged = judged_answers(session, collection, scrub, regenerate, until)
    counts, dropped = judged.counts, judged.dropped
    rows, seen = [], set()
    for answer, chosen, rejected, rule, weight, event_ids in judged.candidates:
        if chosen is None:
            dropped["flag_without_regeneration" if regenerate is None else f"{rule}_not_verified"] += 1
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
    result = PairSet(train, held, dict(counts), dict(dropped), judged.first_event_at, judged.last_event_at)
    result.counts |= {"rows": len(train), "queries": len({r.query_id for r in train}), "held_out_pairs": len(held)}
    result.examples = [f"{r.rule}: {r.query!r}: {r.chosen[:60]!r} > {r.rejected[:60]!r}" for r in train[:5]]
    if len(train) < min_pairs:
        raise TrainingSetError(
            f"collection '{collection}' has {len(train)} preference pairs to train on (outside the evaluation share); "
            f"at least {min_pairs} are needed (CITELOOP_TRAINING_MIN_PAIRS); dropped: {dict(dropped) or 'none'}"
        )
    return result


@dataclass
class RatingSet:
    rows: list[RatedAnswer]  # training ratings: held-out questions excluded
    eval_rows: list[RatedAnswer]  # the held-out questions' ratings
    # The held-out questions' pairs as the pair rules make them: (question, chosen, rejected, event ids).
    eval_pairs: list[tuple[str, str, str, tuple[str, ...]]]
    counts: dict[str, int]
    dropped: dict[str, int]
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    examples: list[str] = field(default_factory=list)


def build_rating_set(
    session: Session,
    collection: str,
    scrub: Callable[[str], str],
    holdout: float,
    min_ratings: int,
    evaluation_queries: set[str] = frozenset(),
    until: datetime | None = None,
) -> RatingSet:
    """The collection's stored feedback as ratings of (question, answer) for a reward model: each side of a
    curator's pair (correction, flagged citation, refusal rules: chosen 1, rejected 0) and each voted answer by the
    sign of its net vote. Curators outrank votes on the same (question, answer text); curators who disagree drop it.
    Raises TrainingSetError when fewer than `min_ratings` are left outside the held-out share, or (`min_ratings` > 0)
    they are all alike."""
    judged = judged_answers(session, collection, scrub, None, until)
    counts, dropped = dict(judged.counts), judged.dropped
    dropped.pop("votes_without_a_contrary_answer", None)  # a pair needs one; a rating does not
    marks: dict[tuple[str, str], list[RatedAnswer]] = defaultdict(list)

    def mark(answer: ServedAnswer, text: str, label: int, weight: float, signal: str, event_ids: tuple[str, ...]) -> None:
        key = query_key(answer.question)
        marks[key, text.strip()].append(RatedAnswer(key, answer.question, text.strip(), label, round(weight, 4), signal, answer.id, event_ids))

    held_pairs: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (question, chosen, rejected) -> event ids
    for answer, chosen, rejected, rule, weight, event_ids in judged.candidates:
        key = query_key(answer.question)
        if chosen is not None and chosen != rejected and is_holdout(key, holdout) and key not in evaluation_queries:
            held_pairs[answer.question, chosen, rejected] = tuple(sorted({*held_pairs.get((answer.question, chosen, rejected), ()), *event_ids}))
        if rule == "votes":  # voted answers are rated by their own net vote below
            continue
        mark(answer, rejected, 0, weight, "curator", event_ids)
        if chosen is not None:
            mark(answer, chosen, 1, weight, "curator", event_ids)
    for answer, net, event_ids in judged.net_votes:
        mark(answer, answer.text, int(net > 0), WEAK * abs(net), "vote", event_ids)
    rows = []
    for found in marks.values():
        curators = [m for m in found if m.signal == "curator"]
        if curators and len({m.label for m in curators}) > 1:
            dropped["rating_curator_conflict"] += 1
            continue
        if curators and len(curators) < len(found):
            dropped["vote_outranked_by_curator"] += len(found) - len(curators)
        kept = curators or found
        label = kept[0].label
        if not curators:  # answers of one text voted on apart: their net votes decide
            net = sum(m.weight if m.label else -m.weight for m in kept)
            if net == 0:
                dropped["rating_vote_tie"] += 1
                continue
            label = int(net > 0)
        rows.append(replace(kept[0], label=label, weight=max(m.weight for m in kept), event_ids=tuple(sorted({i for m in kept for i in m.event_ids}))))
    if in_evaluation := sum(r.query_id in evaluation_queries for r in rows):
        dropped["question_in_evaluation_set"] += in_evaluation
        rows = [r for r in rows if r.query_id not in evaluation_queries]
    train = [r for r in rows if not is_holdout(r.query_id, holdout)]
    held = [r for r in rows if is_holdout(r.query_id, holdout)]
    counts |= {f"ratings_{signal}": sum(r.signal == signal for r in train) for signal in ("curator", "vote")}
    counts |= {"rows": len(train), "preferred": sum(r.label for r in train), "queries": len({r.query_id for r in train}), "held_out_ratings": len(held), "held_out_pairs": len(held_pairs)}
    eval_pairs = [(*pair, event_ids) for pair, event_ids in held_pairs.items()]
    result = RatingSet(train, held, eval_pairs, counts, dict(dropped), judged.first_event_at, judged.last_event_at)
    result.examples = [f"{r.signal} {r.label}: {r.query!r}: {r.answer[:80]!r}" for r in train[:5]]
    if len(train) < min_ratings:
        raise TrainingSetError(
            f"collection '{collection}' has {len(train)} rated answers to train a reward model on (outside the evaluation share); "
            f"at least {min_ratings} are needed (CITELOOP_TRAINING_MIN_PAIRS); dropped: {dict(dropped) or 'none'}"
        )
    if min_ratings and len(labels := {r.label for r in train}) < 2:
        alike = "preferred" if 1 in labels else "not preferred"
        raise TrainingSetError(f"collection '{collection}': its {len(train)} rated answers are all {alike}; a reward model needs both")
    return result


def sampled_pairs(
    session: Session,
    collection: str,
    scrub: Callable[[str], str],
    sample: Sample,
    score: Score,
    verify: VerifyAnswer,
    k: int,
    holdout: float,
    paired_prompts: set[str],
    evaluation_queries: set[str] = frozenset(),
    max_prompts: int = 200,
    on_prompt: Callable[[int], None] = lambda sampled: None,
    until: datetime | None = None,
) -> tuple[list[PairRow], Counter]:
    """Pairs from logged prompts no feedback paired (`paired_prompts`: their `prompt_key`s): for each stored answer
    of the current prompt format (newest first, at most `max_prompts`; not the held-out share's questions, an
    evaluation set's, or a key's that opted out), `k` answers sampled from its prompt and scored by the reward model;
    the best is chosen over the worst when their scores differ by SAMPLE_MARGIN and the best passes citation
    verification (a declined best is the refusal). A pair's `event_ids` name its answer (`answer:<id>`): erasing the
    answer removes the pair from snapshots. `on_prompt`: called with the prompts sampled so far; `until`: only
    answers logged up to then. Returns the pairs and what was dropped or skipped."""
    if k < 2:
        raise TrainingSetError(f"samples={k}: a best and a worst answer need at least 2 samples a prompt")
    from citeloop.db import ApiKey, get_collection

    dropped: Counter = Counter()
    opted_out = set(session.scalars(select(ApiKey.name).where(ApiKey.training_opt_out.is_(True))))
    logged = select(AnswerRecord).where(AnswerRecord.collection_id == get_collection(session, collection).id, AnswerRecord.prompt_format == PROMPT_FORMAT)
    if until is not None:
        logged = logged.where(AnswerRecord.created_at <= until)
    records = session.scalars(logged.order_by(AnswerRecord.created_at.desc()))
    rows: list[PairRow] = []
    seen_prompts: set[str] = set()
    for record in records:
        if len(seen_prompts) == max_prompts:
            break
        if record.actor in opted_out or not record.prompt:
            dropped["sampling_skipped_key_opted_out" if record.prompt else "sampling_skipped_no_stored_prompt"] += 1
            continue
        answer = served_answer(record, scrub)  # the row in hand: no second query per logged answer
        key = query_key(answer.question)
        skip = next(
            (reason for reason, applies in (
                ("sampling_skipped_prompt_paired_by_feedback", answer.prompt_key in paired_prompts),
                ("sampling_skipped_question_held_out", is_holdout(key, holdout) or key in evaluation_queries),
                ("sampling_skipped_prompt_sampled", answer.prompt_key in seen_prompts),
            ) if applies),
            None,
        )
        if skip:
            dropped[skip] += 1
            continue
        seen_prompts.add(answer.prompt_key)
        on_prompt(len(seen_prompts))
        drafts = list(dict.fromkeys(sample(chat_messages(answer.prompt), seed).strip() for seed in range(k)))
        scores = score([(answer.question, REFUSAL if declined(d) else d) for d in drafts])
        ranked = sorted(zip(scores, drafts), key=lambda x: -x[0])
        (best_score, best), (worst_score, worst) = ranked[0], ranked[-1]
        if best_score - worst_score < SAMPLE_MARGIN:
            dropped["sampled_without_a_margin"] += 1
            continue
        chosen = REFUSAL if declined(best) else verify(answer.question, best, answer.sources)
        if chosen is None:
            dropped["sampled_not_verified"] += 1
            continue
        rows.append(PairRow(key, answer.question, answer.prompt, PROMPT_FORMAT, chosen, worst, "reward_samples", WEAK, answer.id, (f"answer:{answer.id}",)))
    return rows, dropped


def check_pair_feedback(session: Session, collection: str, holdout: float, min_pairs: int, sampling: bool = False) -> None:
    """Raises TrainingSetError when the stored feedback cannot make `min_pairs` training pairs: the pairs counted
    before verification and personal-data scrubbing, each flagged answer as the pair its regeneration may make and,
    with `sampling`, each other logged answer as the pair its samples may make (what a job checks before it is
    queued; the job applies every gate). Sampling needs the collection's active reward model."""
    from citeloop.db import ModelVersion, get_collection

    pairs = build_pair_set(session, collection, lambda text: text, lambda question, answer, sources: answer, None, holdout, 0)
    possible = len(pairs.rows) + pairs.dropped.get("flag_without_regeneration", 0)
    if sampling:
        cid = get_collection(session, collection).id
        reward = select(ModelVersion.id).where(ModelVersion.collection_id == cid, ModelVersion.kind == "reward", ModelVersion.status == "active")
        if session.scalar(reward) is None:
            raise TrainingSetError(f"collection '{collection}' has no active reward model to rank sampled answers: train one (citeloop train reward)")
        logged = session.scalars(select(AnswerRecord.id).where(AnswerRecord.collection_id == cid, AnswerRecord.prompt_format == PROMPT_FORMAT))
        possible += len(set(logged) - {p.answer_id for p in pairs.rows + pairs.eval_rows})
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


def _vote_pairs(events, answers, dropped, out) -> list[tuple[ServedAnswer, float, tuple[str, ...]]]:
    """Returns each voted answer with its net vote (ties left out)."""
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
    return [(answers[a], total, tuple(sorted(event_ids[a]))) for a, total in net.items() if total != 0]


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
        event_ids = tuple(sorted(e.id for e in flags))
        if regenerate is None:
            out.append((answer, None, answer.text, "citation_flag", STRONG, event_ids))
            continue
        bad = {e.chunk_id for e in flags}
        kept = [s for s in answer.sources if s.chunk_id not in bad]
        if not kept:
            dropped["flag_on_every_source"] += 1
            continue
        numbered = [Source(i, s.chunk_id, s.doc_id, s.title, s.text, s.excerpt) for i, s in enumerate(kept, start=1)]
        draft = regenerate(answer.question, numbered)
        chosen = None if declined(draft) else renumbered(draft, {i: s.n for i, s in enumerate(kept, start=1)})
        out.append((answer, chosen, answer.text, "citation_flag", STRONG, event_ids))


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
