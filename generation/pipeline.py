"""question -> retrieve (hybrid, reranked when a reranker is active) -> numbered sources -> streamed answer
-> verified citations, or an explicit abstention with its reason.

`AnswerPipeline.stream` yields events (the API's server-sent events map onto them one to one):
`ContextsEvent` once, `TokenEvent` per generated piece, then `DoneEvent` with the finished `Answer`.
Citations are resolved at the end, when the whole answer is known.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from generation.citations import (
    AnswerSentence,
    Citation,
    Source,
    SpanEncoder,
    SupportThresholds,
    split_cited_sentences,
    verify_citations,
    with_attributed_markers,
)
from generation.engines import Generator, SamplingParams, load_generator
from generation.prompt import REFUSAL, build_messages, declined, fit_sources
from retrieval.embedder import EMBEDDER_ID
from retrieval.rerank import RankedSearch
from retrieval.retriever import RetrievedChunk


class QuestionError(ValueError):
    """The question cannot be answered as asked (empty, too long, or the collection has nothing)."""


ABSTAIN_REASONS = {
    "no_contexts": "the collection returned no passages for this question",
    "weak_evidence": "no passage is close enough to the question",
    "model_declined": "the sources do not contain the answer",
    "unsupported": "too few sentences of the draft answer are supported by the passages (CITELOOP_ANSWER_MIN_SUPPORT)",
}


@dataclass
class Answer:
    answer_id: str
    question: str
    collection: str
    answer: str
    abstained: bool
    abstain_reason: str | None  # a key of ABSTAIN_REASONS
    citations: list[Citation]
    sentences: list[AnswerSentence]
    contexts: list[RetrievedChunk]  # the numbered sources, in prompt order: contexts[n - 1] is [n]
    models: dict[str, str | None]
    timings_ms: dict[str, float]
    draft: str = ""  # what the generator wrote, kept when the answer is an abstention

    @property
    def unsupported_sentences(self) -> list[int]:
        return [i for i, s in enumerate(self.sentences) if s.is_claim and not s.supported]

    def to_dict(self) -> dict:
        """The JSON shape of an answer (CLI --json, eval rows, API)."""
        out = asdict(self)
        out["contexts"] = [context_dict(c) for c in self.contexts]
        out["unsupported_sentences"] = self.unsupported_sentences
        return out


def context_dict(hit: RetrievedChunk) -> dict:
    return {
        "chunk_id": hit.chunk_id,
        "doc_id": hit.doc_id,
        "title": hit.title,
        "text": hit.text,
        "rank": hit.rank,
        "scores": {name: {"score": s.score, "rank": s.rank} for name, s in hit.stages.items()},
    }


@dataclass
class ContextsEvent:
    contexts: list[RetrievedChunk]


@dataclass
class TokenEvent:
    text: str


@dataclass
class DoneEvent:
    answer: Answer


AnswerEvent = ContextsEvent | TokenEvent | DoneEvent


@dataclass
class AnswerPipeline:
    collection: str
    settings: Settings = field(default_factory=get_settings)
    # A process that also serves search passes its RankedSearch, so the collection is loaded once.
    search: RankedSearch | None = None

    def __post_init__(self) -> None:
        if self.search is None:
            self.search = RankedSearch(self.collection, self.settings)
        self.generator: Generator = load_generator(self.settings)
        self.thresholds = SupportThresholds(
            self.settings.citation_min_similarity, self.settings.citation_min_overlap, self.settings.citation_min_relevance
        )
        self.spans = SpanEncoder(self.search.retriever.embedder.embed)

    def check_question(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise QuestionError("the question is empty")
        if len(question) > self.settings.max_question_chars:
            raise QuestionError(
                f"the question has {len(question)} characters; the limit is {self.settings.max_question_chars} (CITELOOP_MAX_QUESTION_CHARS)"
            )
        return question

    def answer(self, question: str, top_k: int | None = None) -> Answer:
        for event in self.stream(question, top_k):
            if isinstance(event, DoneEvent):
                return event.answer
        raise AssertionError("the answer stream ended without a DoneEvent")

    def stream(self, question: str, top_k: int | None = None) -> Iterator[AnswerEvent]:
        question = self.check_question(question)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        self.search.retriever.refresh()
        if len(self.search.retriever) == 0:
            raise QuestionError(f"collection '{self.collection}' has no documents; ingest some first")
        found = self.search.search(question, k=top_k or self.settings.answer_contexts)
        timings["retrieve"] = _ms(started)
        budget = self.settings.context_window - self.settings.max_new_tokens
        sources = fit_sources(question, numbered_sources(found.hits), self.generator.count_tokens, budget)
        contexts = found.hits[: len(sources)]
        models = {"reranker": found.reranker, "generator": self.generator.model_id, "embedder": EMBEDDER_ID}
        yield ContextsEvent(contexts)

        def finish(text: str, reason: str | None, sentences=(), citations=(), draft: str = "") -> DoneEvent:
            timings["total"] = _ms(started)
            return DoneEvent(
                Answer(
                    answer_id=uuid.uuid4().hex,
                    question=question,
                    collection=self.collection,
                    answer=text,
                    abstained=reason is not None,
                    abstain_reason=reason,
                    citations=list(citations),
                    sentences=list(sentences),
                    contexts=contexts,
                    models=models,
                    timings_ms={k: round(v, 1) for k, v in timings.items()},
                    draft=draft,
                )
            )

        if not sources:
            yield finish(REFUSAL, "no_contexts")
            return
        if max(_dense(h) for h in contexts) < self.settings.abstain_min_evidence:
            yield finish(REFUSAL, "weak_evidence")
            return

        pieces: list[str] = []
        generate_start = time.perf_counter()
        for piece in self.generator.stream(build_messages(question, sources), SamplingParams.from_settings(self.settings)):
            if not pieces:
                timings["first_token"] = _ms(started)
            pieces.append(piece)
            yield TokenEvent(piece)
        timings["generate"] = _ms(generate_start)
        draft = "".join(pieces).strip()

        verify_start = time.perf_counter()
        sentences = split_cited_sentences(draft, len(sources))
        if declined(draft, sentences[0].text if sentences else ""):
            yield finish(REFUSAL, "model_declined", draft=draft)
            return
        citations = verify_citations(question, sentences, sources, self.spans, self.thresholds)
        timings["verify"] = _ms(verify_start)
        claims = [s for s in sentences if s.is_claim]
        if not claims or sum(s.supported for s in claims) / len(claims) < self.settings.answer_min_support:
            yield finish(REFUSAL, "unsupported", draft=draft)
            return
        yield finish(with_attributed_markers(draft, sentences, citations), None, sentences, citations, draft=draft)


def numbered_sources(hits: list[RetrievedChunk]) -> list[Source]:
    """Hits as the prompt numbers them: [1] is the best-ranked."""
    return [Source(n, h.chunk_id, h.doc_id, h.title, h.text) for n, h in enumerate(hits, start=1)]


def _dense(hit: RetrievedChunk) -> float:
    stage = hit.stages.get("dense")
    return stage.score if stage else -1.0


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
