"""The answer pipeline's components after retrieval and reranking (those are `retrieval.rerank.HybridRetriever`
and `retrieval.rerank.Reranker`): each a small class whose `run` takes its inputs as arguments and returns a
small dataclass, so it can be built and tested alone. `generation.pipeline.AnswerPipeline` composes them.
"""

from __future__ import annotations

import collections.abc
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


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
from citeloop.config import Settings
from citeloop.modelpkg import ModelPackageError
from citeloop.registry import RegistryError, VersionInfo, active_version, verified_path
from generation.engines import ADAPTER_GGUF, GenerationError, Generator, SamplingParams, load_generator
from generation.models import resolve_generator
from generation.prompt import PROMPT_FORMAT, build_messages, declined, fit_sources, numbered_sources, with_excerpts
from retrieval.retriever import RetrievedChunk
from retrieval.sparse import stem

# A word in at most this many chunks is rare however large the collection (see AbstentionPolicy.rare_share).
RARE_TERM_MIN_CHUNKS = 5

ABSTAIN_REASONS = {
    "no_contexts": "the collection returned no passages for this question",
    "weak_evidence": "no passage is close enough to the question",
    "unknown_terms": "the question names something none of the passages found mentions",
    "model_declined": "the sources do not contain the answer",
    "unsupported": "too few sentences of the draft answer are supported by the passages (CITELOOP_ANSWER_MIN_SUPPORT)",
}


@dataclass
class Prompt:
    messages: list[dict[str, str]]  # chat messages for the generator
    sources: list[Source]  # the numbered sources the messages hold
    contexts: list[RetrievedChunk]  # the hits behind them, in prompt order: contexts[n - 1] is [n]


class PromptBuilder:
    """Numbers the hits as sources and keeps the best-ranked that fit the prompt's token budget. With
    `evidence_sentences`, each source is shown as its sentences closest to the question (compact evidence:
    fewer prompt tokens to prefill); citations are still verified against, and quote, the whole chunk."""

    def __init__(self, count_tokens: Callable[[str], int], budget: int, spans: SpanEncoder | None = None, evidence_sentences: int = 0):
        self.count_tokens = count_tokens
        self.budget = budget  # the context window less the tokens kept for the answer
        self.spans = spans
        self.evidence_sentences = evidence_sentences

    def run(self, question: str, hits: Sequence[RetrievedChunk]) -> Prompt:
        sources = numbered_sources(hits)
        if self.spans is not None and self.evidence_sentences and sources:
            sources = with_excerpts(sources, self.spans.closest_sentences(question, sources, self.evidence_sentences))
        sources = fit_sources(question, sources, self.count_tokens, self.budget)
        return Prompt(build_messages(question, sources), sources, list(hits[: len(sources)]))


@dataclass
class TokenEvent:
    text: str  # one generated piece, as the engine streamed it


@dataclass
class Draft:
    text: str  # what the generator wrote, stripped
    timings_ms: dict[str, float]  # first_token (from `started`; absent when nothing was written), generate


@dataclass(frozen=True)
class ChosenGenerator:
    engine: Generator
    version_id: str | None  # the registry version of kind `generator` whose adapter it applies; None: the base alone
    note: str | None = None  # why the base alone serves although a version is active


class ActiveGenerator:
    """Component: the engine that answers for a collection: the configured generator with the LoRA adapter of
    the collection's active `generator` version, or the configured generator alone with a note saying why (none
    promoted; promoted for other base weights or another prompt format; an artifact that cannot be loaded).
    Picks up promotions and rollbacks per run."""

    def __init__(self, collection: str, settings: Settings, base: Generator):
        self.collection = collection
        self.settings = settings
        self.base = base
        self._log = logging.getLogger("citeloop.generation")

    def run(self, version: VersionInfo | None = None) -> ChosenGenerator:
        """`version`: a generator version asked for by id (an evaluation) instead of the active one; a version
        that cannot serve is then an error, not a fallback."""
        chosen = version or active_version(self.collection, "generator", self.settings)
        if chosen is None:
            return ChosenGenerator(self.base, None)
        try:
            base = chosen.params.get("base") or {}
            digest = resolve_generator(self.settings.generator, self.settings).digest
            if base.get("digest") != digest:
                raise RegistryError(f"its adapter was trained on {base.get('name')}@{str(base.get('digest'))[:12]}, not the configured {self.settings.generator}@{digest[:12]}")
            if chosen.params.get("prompt_format") != PROMPT_FORMAT:
                raise RegistryError(f"it was trained on prompts of format {chosen.params.get('prompt_format')}, serving sends {PROMPT_FORMAT}")
            engine = load_generator(self.settings, adapter=verified_path(chosen) / ADAPTER_GGUF)
        except (RegistryError, GenerationError, ModelPackageError, OSError) as error:
            if version is not None:
                raise
            # A broken or mismatched active adapter must not take answering down: the base serves, and says why.
            note = f"active generator {chosen.id} of '{self.collection}' cannot serve ({error}): serving the base generator"
            self._log.error(note)
            return ChosenGenerator(self.base, None, note)
        return ChosenGenerator(engine, chosen.id)


class AnswerGenerator:
    """An engine with the sampling settings: streams an answer's pieces and times them."""

    def __init__(self, generator: Generator, params: SamplingParams):
        self.generator = generator
        self.params = params

    @property
    def model_id(self) -> str:
        return self.generator.model_id

    def run(
        self, messages: list[dict[str, str]], started: float, engine: Generator | None = None
    ) -> collections.abc.Generator[TokenEvent, None, Draft]:
        """Yields each piece as it is written and returns the Draft; `started` is when the request began
        (perf_counter), so first_token is what the asker waited. `engine`: another engine than the component's
        (the collection's adapter, chosen per request)."""
        pieces: list[str] = []
        timings: dict[str, float] = {}
        generate_start = time.perf_counter()
        # Closed explicitly when the caller stops reading (an asker who left): the engine's lock is freed then.
        with contextlib.closing((engine or self.generator).stream(messages, self.params)) as stream:
            for piece in stream:
                if not pieces:
                    timings["first_token"] = elapsed_ms(started)
                pieces.append(piece)
                yield TokenEvent(piece)
        timings["generate"] = elapsed_ms(generate_start)
        return Draft("".join(pieces).strip(), timings)


@dataclass
class VerifiedAnswer:
    answer: str  # the draft with [n] added where verification attributed an uncited sentence
    sentences: list[AnswerSentence]  # offsets index `answer`
    citations: list[Citation]


class CitationVerifier:
    """Splits a draft into cited sentences and checks each citation against the chunk it names."""

    def __init__(self, spans: SpanEncoder, thresholds: SupportThresholds):
        self.spans = spans  # caches span embeddings per chunk across runs (shared with the PromptBuilder)
        self.thresholds = thresholds

    def run(self, question: str, draft: str, sources: Sequence[Source]) -> VerifiedAnswer:
        sentences = split_cited_sentences(draft, len(sources))
        citations = verify_citations(question, sentences, sources, self.spans, self.thresholds)
        return VerifiedAnswer(with_attributed_markers(draft, sentences, citations), sentences, citations)


class EvidenceExtractor:
    """When the generator declines, or its draft is unsupported, although a source holds a sentence close to the
    question: that sentence, quoted and cited, is the answer (an extractive answer) instead of a refusal."""

    def __init__(self, spans: SpanEncoder, min_similarity: float):
        self.spans = spans
        self.min_similarity = min_similarity  # MiniLM cosine of the sentence with the question

    def run(self, question: str, sources: Sequence[Source]) -> VerifiedAnswer | None:
        scored = [(score, n, offsets) for n, items in self.spans.sentence_scores(question, sources).items() for score, offsets in items]
        if not scored:
            return None
        score, n, (start, end) = max(scored, key=lambda x: (x[0], -x[1]))
        if score < self.min_similarity:
            return None
        source = next(s for s in sources if s.n == n)
        quote = source.text[start:end]
        answer = f'"{" ".join(quote.split())}" [{n}]'
        sentence = AnswerSentence(text=" ".join(quote.split()), start=0, end=len(answer), cited=[n], supported=True)
        citation = Citation(n, source.chunk_id, source.doc_id, source.title, quote, start, end, True, 1.0, 1.0, round(score, 4), 0)
        return VerifiedAnswer(answer, [sentence], [citation])


class AbstentionPolicy:
    """When to answer "I don't know." instead: one decision at each point where the pipeline can stop, each
    returning a key of ABSTAIN_REASONS, or None to go on."""

    def __init__(
        self,
        min_evidence: float,
        min_support: float,
        common_words: frozenset[str] | None = None,
        english_stems: frozenset[str] = frozenset(),
        rare_share: float = 0.002,
    ):
        self.min_evidence = min_evidence  # dense cosine of the closest source to the question
        self.min_support = min_support  # share of the draft's claims that verification supports
        # Words too common to name a thing (the question may paraphrase the documents); None: no such check.
        self.common_words = common_words
        # Stems of English words (`retrieval.sparse.english_stems`): a word the collection has names a thing
        # only when it is not one of them.
        self.english_stems = english_stems
        # A word in at most this share of the collection's chunks (or RARE_TERM_MIN_CHUNKS) is rare.
        self.rare_share = rare_share

    def before_generating(self, contexts: Sequence[RetrievedChunk], term_counts: Mapping[str, int] | None = None, chunks: int = 0) -> str | None:
        """`term_counts`: how many of the collection's `chunks` contain each of the question's terms."""
        if not contexts:
            return "no_contexts"
        if max(_dense(h) for h in contexts) < self.min_evidence:
            return "weak_evidence"
        if term_counts and self.unknown_terms(contexts, term_counts, chunks):
            return "unknown_terms"
        return None

    def unknown_terms(self, contexts: Sequence[RetrievedChunk], term_counts: Mapping[str, int], chunks: int) -> list[str]:
        """The question's terms that name something the sources never mention, in no form: not with spacing
        and punctuation ignored ("wifi" for "Wi-Fi"), not misspelt ("carageenan"), not as another form of a
        word ("respiratory" for "respiration", "install" for "reinstall"). A term names something when it is
        not a number or a common word and either no chunk of the collection contains it, or few do (rare) and
        it is not an English word: retrieval put forward the passages closest to the question, and when none
        of them mentions the library, product, identifier or drug the question is about, they cannot answer it."""
        if self.common_words is None:
            return []
        rare = max(RARE_TERM_MIN_CHUNKS, self.rare_share * chunks)
        named = [term for term, count in term_counts.items() if self._names_something(term, count, rare)]
        if not named:
            return []
        text = " ".join(f"{h.title} {h.text}" for h in contexts).lower()
        squashed, words = re.sub(r"\W+", "", text), set(re.findall(r"\w+", text))
        return [term for term in named if not _mentioned(term.lower(), squashed, words)]

    def _names_something(self, term: str, count: int, rare: float) -> bool:
        """Dotted names count only when no chunk has them (`count` 0)."""
        lowered = term.lower()
        if term.isdigit() or lowered in self.common_words:
            return False
        if count == 0:
            return True
        return "." not in term and count <= rare and stem(lowered) not in self.english_stems

    def after_generating(self, draft: str) -> str | None:
        return "model_declined" if declined(draft) else None

    def after_verifying(self, verified: VerifiedAnswer) -> str | None:
        """A draft that claims nothing (only fragments like "1.") is unsupported too."""
        claims = [s for s in verified.sentences if s.is_claim]
        if not claims or sum(s.supported for s in claims) / len(claims) < self.min_support:
            return "unsupported"
        return None


def _mentioned(term: str, squashed: str, words: set[str]) -> bool:
    """The lower-cased term is in the sources: in their text with spacing and punctuation ignored
    (`squashed`), or as a word of theirs (`words`) misspelt or in another form."""
    return re.sub(r"\W+", "", term) in squashed or _misspelt(term, words) or _other_form(term, words)


def _misspelt(term: str, words: set[str]) -> bool:
    """A word of the sources within one edit of the term (a transposition counts one; two edits from ten
    letters on): "carageenan" is the sources' "carrageenan", "HIN1" their "H1N1". Terms under four characters
    and dotted names must match exactly."""
    from rapidfuzz.distance import OSA
    from rapidfuzz.process import extractOne

    if len(term) < 4 or "." in term:
        return False
    edits = 2 if len(term) >= 10 else 1
    return extractOne(term, words, scorer=OSA.distance, score_cutoff=edits) is not None


# English prefixes that make a word from another of the same topic ("reinstall", "coinfection").
_PREFIXES = ("re", "un", "pre", "non", "dis", "mis", "co")


def _other_form(term: str, words: set[str]) -> bool:
    """A word of the sources that is another form of the term: both share all but the last three letters of
    one of them, six letters at least ("respiratory" and "respiration"), or the term is the word with an
    English prefix ("reinstall" from "install")."""
    if "." in term:
        return False

    def head(word: str) -> str:
        return word[: max(6, len(word) - 3)]

    if any(term.startswith(p) and term[len(p) :] in words for p in _PREFIXES):
        return True
    return any(len(w) >= 6 and len(term) >= 6 and (w.startswith(head(term)) or term.startswith(head(w))) for w in words)


def _dense(hit: RetrievedChunk) -> float:
    stage = hit.stages.get("dense")
    return stage.score if stage else -1.0


def elapsed_ms(since: float) -> float:
    """Milliseconds since a perf_counter reading."""
    return (time.perf_counter() - since) * 1000
