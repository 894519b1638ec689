"""question -> retrieve (hybrid, reranked when a reranker is active) -> numbered sources -> streamed answer
-> verified citations, or an explicit abstention with its reason.

`AnswerPipeline` composes the components (`retrieval.rerank.HybridRetriever` and `Reranker`, then
`generation.components`' PromptBuilder, AnswerGenerator, CitationVerifier, AbstentionPolicy and
EvidenceExtractor), handing each the previous one's output. `AnswerPipeline.stream` yields events (the API's
server-sent events map onto them one to one): `ContextsEvent` once, `TokenEvent` per generated piece, then
`DoneEvent` with the finished `Answer`. Citations are resolved at the end, when the whole answer is known.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from citeloop.registry import VersionInfo
from generation.citations import AnswerSentence, Citation, SpanEncoder, SupportThresholds
from generation.components import (
    ABSTAIN_REASONS,
    AbstentionPolicy,
    ActiveGenerator,
    AnswerGenerator,
    CitationVerifier,
    EvidenceExtractor,
    PromptBuilder,
    TokenEvent,
    elapsed_ms,
)
from generation.engines import SamplingParams, load_generator
from generation.prompt import PROMPT_FORMAT, REFUSAL
from retrieval.embedder import EMBEDDER_ID, load_embedder
from retrieval.rerank import RankedSearch
from retrieval.sparse import english_stems
from retrieval.retriever import RetrievedChunk

__all__ = [
    "ABSTAIN_REASONS",
    "Answer",
    "AnswerEvent",
    "AnswerPipeline",
    "ContextsEvent",
    "DoneEvent",
    "QuestionError",
    "TokenEvent",
    "context_dict",
]


class QuestionError(ValueError):
    """The question cannot be answered as asked (empty, too long, or the collection has nothing)."""


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
    extractive: bool = False  # the answer quotes a source's sentence: the generator declined, the evidence did not
    # The exact chat messages the generator was (or, had it not abstained first, would have been) given, and their
    # format: preference pairs train on exactly what was served.
    prompt: list[dict[str, str]] = field(default_factory=list)
    prompt_format: str = PROMPT_FORMAT

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
        settings = self.settings
        if self.search is None:
            self.search = RankedSearch(self.collection, settings)
        self.retriever = self.search.hybrid
        self.reranker = self.search.reranker
        generator = load_generator(settings)
        embedder = load_embedder(settings)
        spans = SpanEncoder(embedder.embed)
        budget = settings.context_window - settings.max_new_tokens
        self.prompt_builder = PromptBuilder(generator.count_tokens, budget, spans, settings.evidence_sentences)
        self.generator = AnswerGenerator(generator, SamplingParams.from_settings(settings))
        self.generators = ActiveGenerator(self.collection, settings, generator)
        thresholds = SupportThresholds(settings.citation_min_similarity, settings.citation_min_overlap, settings.citation_min_relevance)
        self.verifier = CitationVerifier(spans, thresholds)
        self.extractor = EvidenceExtractor(spans, settings.extractive_min_similarity)
        if settings.abstain_unknown_terms:
            common, english = embedder.common_words(), english_stems()
        else:
            common, english = None, frozenset()
        self.policy = AbstentionPolicy(settings.abstain_min_evidence, settings.answer_min_support, common, english, settings.abstain_rare_term_share)

    def check_question(self, question: str) -> str:
        question = question.strip()
        if not question:
            raise QuestionError("the question is empty")
        if len(question) > self.settings.max_question_chars:
            raise QuestionError(
                f"the question has {len(question)} characters; the limit is {self.settings.max_question_chars} (CITELOOP_MAX_QUESTION_CHARS)"
            )
        return question

    def answer(self, question: str, top_k: int | None = None, generator: VersionInfo | None = None, filters: dict | None = None) -> Answer:
        for event in self.stream(question, top_k, generator, filters):
            if isinstance(event, DoneEvent):
                return event.answer
        raise AssertionError("the answer stream ended without a DoneEvent")

    def stream(
        self, question: str, top_k: int | None = None, generator: VersionInfo | None = None, filters: dict | None = None
    ) -> Iterator[AnswerEvent]:
        """`generator`: a generator version to answer with (an evaluation) instead of the collection's active one;
        `filters`: answer from the chunks of documents whose metadata match only (as search's)."""
        question = self.check_question(question)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        wanted = top_k or self.settings.answer_contexts
        retrieved = self.retriever.run(question, wanted, filters)
        if retrieved.chunks == 0:
            raise QuestionError(f"collection '{self.collection}' has no documents; ingest some first")
        ranked = self.reranker.run(question, retrieved.hits, wanted)
        timings["retrieve"] = elapsed_ms(started)
        prompt = self.prompt_builder.run(question, ranked.hits)
        chosen = self.generators.run(generator)
        models = {
            "reranker": ranked.reranker, "generator": chosen.engine.model_id, "generator_version": chosen.version_id, "embedder": EMBEDDER_ID,
        }
        yield ContextsEvent(prompt.contexts)

        def finish(text: str, reason: str | None, sentences=(), citations=(), draft: str = "", extractive: bool = False) -> DoneEvent:
            timings["total"] = elapsed_ms(started)
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
                    contexts=prompt.contexts,
                    models=models,
                    timings_ms={k: round(v, 1) for k, v in timings.items()},
                    draft=draft,
                    extractive=extractive,
                    prompt=prompt.messages,
                )
            )

        def refuse_or_extract(reason: str, draft: str) -> DoneEvent:
            if extract := self.extractor.run(question, prompt.sources):
                return finish(extract.answer, None, extract.sentences, extract.citations, draft, extractive=True)
            return finish(REFUSAL, reason, draft=draft)

        counts = self.retriever.term_counts(question) if self.settings.abstain_unknown_terms else None
        if reason := self.policy.before_generating(prompt.contexts, counts, retrieved.chunks):
            yield finish(REFUSAL, reason)
            return
        draft = yield from self.generator.run(prompt.messages, started, chosen.engine)
        timings |= draft.timings_ms
        if reason := self.policy.after_generating(draft.text):
            yield refuse_or_extract(reason, draft.text)
            return
        verify_start = time.perf_counter()
        verified = self.verifier.run(question, draft.text, prompt.sources)
        timings["verify"] = elapsed_ms(verify_start)
        if reason := self.policy.after_verifying(verified):
            yield refuse_or_extract(reason, draft.text)
            return
        yield finish(verified.answer, None, verified.sentences, verified.citations, draft=draft.text)
