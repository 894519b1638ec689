"""Inline citations: parse `[n]` markers out of an answer and verify each cited sentence against its chunk.

A citation is supported when all three hold (`SupportThresholds`):
- similarity: the sentence is close to some span of the cited chunk in embedding space (MiniLM cosine);
- overlap: the chunk contains enough of the sentence's content words (BM25's tokeniser: stemmed, stopwords
  out; words the question already has are left out when others remain);
- relevance: the sentence is close to the question (MiniLM cosine), so a copied passage that does not
  answer supports nothing.
The best-matching span is returned as the quote, with offsets inside the chunk text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from generation.text import LIST_MARKER, content_overlap, content_words, sentence_spans


# [1], [1, 2], [1-3], [1][2], [Source 1], [source 2; 3]
MARKER = re.compile(r"\[\s*(?:sources?\s*)?(\d+(?:\s*(?:[,;]|[-–])\s*(?:sources?\s*)?\d+)*)\s*\]", re.IGNORECASE)
MAX_RANGE = 20  # [1-999] is a malformed marker, not 999 citations
MIN_CLAIM_WORDS = 2
# A quote is one sentence unless two neighbours together match the claim clearly better (the claim needs both).
PAIR_QUOTE_MARGIN = 0.05


@dataclass(frozen=True)
class Source:
    """A numbered source as the generator saw it."""

    n: int
    chunk_id: str
    doc_id: str
    title: str
    text: str  # the whole chunk: citations are verified against it and quote it with offsets
    excerpt: str = ""  # what the prompt shows instead, when shorter (the chunk's sentences closest to the question)


@dataclass
class Citation:
    n: int
    chunk_id: str
    doc_id: str
    title: str
    quote: str  # the chunk span that best supports the citing sentence
    start: int  # offsets of `quote` in the chunk text
    end: int
    supported: bool
    similarity: float
    overlap: float
    relevance: float  # of the citing sentence to the question
    sentence: int  # index into the answer's sentences
    attributed: bool = False  # added by verification to a sentence the model left uncited


@dataclass
class AnswerSentence:
    text: str  # without its markers
    start: int  # offsets in the answer text (markers included)
    end: int
    cited: list[int] = field(default_factory=list)  # valid source numbers
    invalid_markers: list[str] = field(default_factory=list)  # out of range or malformed
    supported: bool = False  # at least one of its citations is supported

    @property
    def is_claim(self) -> bool:
        """Fragments with fewer than MIN_CLAIM_WORDS content words ("1.", "Yes.") state nothing to verify."""
        return len(content_words(self.text)) >= MIN_CLAIM_WORDS


def _numbers(body: str) -> list[int] | None:
    """Source numbers in a marker body; None when the marker is malformed."""
    numbers: list[int] = []
    for part in re.split(r"\s*[,;]\s*", body):
        part = re.sub(r"(?i)sources?\s*", "", part)
        if re.fullmatch(r"\d+\s*[-–]\s*\d+", part):
            lo, hi = (int(x) for x in re.split(r"\s*[-–]\s*", part))
            if hi < lo or hi - lo >= MAX_RANGE:
                return None
            numbers.extend(range(lo, hi + 1))
        elif part.isdigit():
            numbers.append(int(part))
        else:
            return None
    return numbers


def split_cited_sentences(answer: str, n_sources: int) -> list[AnswerSentence]:
    """Sentences with their markers; a marker that opens a sentence ("... end. [2] Next") belongs to the one before."""
    sentences: list[AnswerSentence] = []
    for start, end in sentence_spans(answer, every_line=True):
        chunk = answer[start:end]
        leading = re.match(r"(\s*" + MARKER.pattern + r")+", chunk, re.IGNORECASE)
        if leading and sentences:
            head = chunk[: leading.end()]
            _attach_markers(sentences[-1], head, n_sources)
            sentences[-1].end = start + leading.end()
            start += leading.end()
            chunk = answer[start:end]
        if not chunk.strip():
            continue
        sentence = AnswerSentence(text="", start=start, end=end)
        _attach_markers(sentence, chunk, n_sources)
        words = MARKER.sub("", chunk[LIST_MARKER.match(chunk).end() :] if LIST_MARKER.match(chunk) else chunk)
        sentence.text = re.sub(r"\s+([.,;:!?])", r"\1", words).strip()
        sentences.append(sentence)
    return [s for s in sentences if s.text or s.cited or s.invalid_markers]


def _attach_markers(sentence: AnswerSentence, text: str, n_sources: int) -> None:
    for match in MARKER.finditer(text):
        numbers = _numbers(match.group(1))
        if numbers is None or any(not 1 <= n <= n_sources for n in numbers):
            sentence.invalid_markers.append(match.group(0))
            numbers = [n for n in (numbers or []) if 1 <= n <= n_sources]
        for n in numbers:
            if n not in sentence.cited:
                sentence.cited.append(n)


@dataclass(frozen=True)
class SupportThresholds:
    min_similarity: float  # sentence vs the best span of the cited chunk
    min_overlap: float  # the sentence's new content words found in the chunk
    min_relevance: float = 0.0  # sentence vs the question: a copied passage that does not answer supports nothing


class SpanEncoder:
    """Candidate quotes of a chunk (each sentence and each pair of neighbours) with their embeddings, cached
    per chunk id: a chunk id names immutable text."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], cache_size: int = 4096):
        self.embed = embed
        self.cache_size = cache_size
        self._cache: dict[str, tuple[list[tuple[int, int]], np.ndarray]] = {}

    def spans(self, sources: Sequence[Source]) -> dict[int, tuple[list[tuple[int, int]], np.ndarray]]:
        missing = [s for s in sources if s.chunk_id not in self._cache]
        if missing:
            texts, owners = [], []
            for source in missing:
                single = sentence_spans(source.text) or [(0, len(source.text))]
                spans = single + [(a[0], b[1]) for a, b in zip(single, single[1:])]
                texts += [source.text[a:b] for a, b in spans]
                owners.append((source.chunk_id, spans))
            vectors, offset = self.embed(texts), 0
            if len(self._cache) + len(owners) > self.cache_size:
                self._cache.clear()
            for chunk_id, spans in owners:
                self._cache[chunk_id] = (spans, vectors[offset : offset + len(spans)])
                offset += len(spans)
        return {s.n: self._cache[s.chunk_id] for s in sources}

    def sentence_scores(self, question: str, sources: Sequence[Source]) -> dict[int, list[tuple[float, tuple[int, int]]]]:
        """Per source number, (MiniLM cosine with the question, offsets) of each of its sentences, in text order."""
        question_vector = self.embed([question])[0]
        scores = {}
        for n, (offsets, vectors) in self.spans(sources).items():
            singles = (len(offsets) + 1) // 2  # sentences first, then the pairs of neighbours
            scores[n] = [(float(s), offsets[i]) for i, s in enumerate(vectors[:singles] @ question_vector)]
        return scores

    def closest_sentences(self, question: str, sources: Sequence[Source], keep: int) -> dict[int, list[tuple[int, int]]]:
        """Per source number, the offsets of its `keep` sentences closest to the question, in text order."""
        return {
            n: sorted(offsets for _, offsets in sorted(scored, key=lambda x: -x[0])[:keep])
            for n, scored in self.sentence_scores(question, sources).items()
        }


def verify_citations(
    question: str,
    sentences: Sequence[AnswerSentence],
    sources: Sequence[Source],
    encoder: SpanEncoder,
    thresholds: SupportThresholds,
    attribute_uncited: bool = True,
) -> list[Citation]:
    """One Citation per (sentence, cited source); sets each sentence's `supported`.

    A sentence the model left uncited, or cited to a source that does not support it, is attributed to the
    source that supports it best, when one passes both thresholds (small models often answer correctly but
    forget the marker or pick the wrong number); such citations are marked `attributed` and `[n]` is added to
    the answer by `with_attributed_markers`.
    """
    claim_rows = [i for i, s in enumerate(sentences) if s.is_claim and (s.cited or attribute_uncited)]
    if not claim_rows or not sources:
        return []
    by_n = {s.n: s for s in sources}
    spans = encoder.spans(sources)
    vectors = encoder.embed([question] + [sentences[i].text for i in claim_rows])
    claims = vectors[1:]
    relevance = claims @ vectors[0]
    citations: list[Citation] = []
    for row, i in enumerate(claim_rows):
        sentence = sentences[i]
        check = lambda source: _check(question, sentence.text, claims[row], float(relevance[row]), source, spans[source.n], thresholds, i)  # noqa: E731
        chosen = [check(by_n[n]) for n in sentence.cited]
        if attribute_uncited and not any(c.supported for c in chosen):
            # Uncited, or cited wrongly: the source that supports the sentence best, if any passes. The model's
            # own unsupported citations stay, flagged, beside it.
            others = [check(s) for s in sources if s.n not in sentence.cited]
            supported = [c for c in others if c.supported]
            if supported:
                best = max(supported, key=lambda c: (c.similarity, c.overlap))
                best.attributed = True
                sentence.cited.append(best.n)
                chosen.append(best)
        sentence.supported = any(c.supported for c in chosen)
        citations += chosen
    return citations


def _check(
    question: str, text: str, claim: np.ndarray, relevance: float, source: Source, spans, thresholds: SupportThresholds, sentence: int
) -> Citation:
    offsets, vectors = spans
    sims = vectors @ claim
    singles = (len(offsets) + 1) // 2  # SpanEncoder lists the sentences, then each pair of neighbours
    best = int(np.argmax(sims[:singles]))
    if singles < len(offsets) and sims[singles:].max() > sims[best] + PAIR_QUOTE_MARGIN:
        best = singles + int(np.argmax(sims[singles:]))
    start, end = offsets[best]
    similarity = float(sims[best])
    overlap = content_overlap(text, source.text, question)
    return Citation(
        n=source.n,
        chunk_id=source.chunk_id,
        doc_id=source.doc_id,
        title=source.title,
        quote=source.text[start:end],
        start=start,
        end=end,
        supported=(
            similarity >= thresholds.min_similarity and overlap >= thresholds.min_overlap and relevance >= thresholds.min_relevance
        ),
        similarity=round(similarity, 4),
        overlap=round(overlap, 4),
        relevance=round(relevance, 4),
        sentence=sentence,
    )


def with_attributed_markers(answer: str, sentences: Sequence[AnswerSentence], citations: Sequence[Citation]) -> str:
    """The answer with `[n]` added to each sentence whose citation was attributed (before its final
    punctuation); the sentences' offsets are moved to match the returned text."""
    marks: dict[int, list[int]] = {}
    for c in citations:
        if c.attributed:
            marks.setdefault(c.sentence, []).append(c.n)
    pieces, cursor, shift = [], 0, 0
    for i, sentence in enumerate(sentences):
        start, end = sentence.start, sentence.end
        if i in marks:
            core = answer[start:end].rstrip().rstrip(".!?;:")
            tag = " " + "".join(f"[{n}]" for n in marks[i])
            pieces.append(answer[cursor : start + len(core)] + tag)
            cursor = start + len(core)
            sentence.start, sentence.end = start + shift, end + shift + len(tag)
            shift += len(tag)
        else:
            sentence.start, sentence.end = start + shift, end + shift
    pieces.append(answer[cursor:])
    return "".join(pieces)
