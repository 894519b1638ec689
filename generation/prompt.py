"""The grounded prompt: numbered sources, then the question; the model's own chat template wraps it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from generation.citations import Source, split_cited_sentences
from retrieval.retriever import RetrievedChunk

REFUSAL = "I don't know."
SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources you are given.\n"
    "- Answer in one to three short sentences, copying the facts from the sources.\n"
    "- End every sentence with the number of the source it comes from, like [1] or [2][3].\n"
    f"- If the sources do not contain the answer, reply exactly: {REFUSAL}"
)
# What small models write when they decline; checked on the answer's first sentence only.
DECLINED = re.compile(
    r"\b(i (do not|don'?t) know|i (cannot|can'?t|am unable to) (answer|find|determine|say)|"
    r"(sources?|context|documents?|passages?|text) (do|does) not (contain|mention|provide|say|include|specify)|"
    r"(is|are) not (mentioned|provided|specified|stated|given) in the (sources?|context|documents?|passages?)|"
    r"no information)\b",
    re.IGNORECASE,
)


def numbered_sources(hits: Sequence[RetrievedChunk]) -> list[Source]:
    """Hits as the prompt numbers them: [1] is the best-ranked."""
    return [Source(n, h.chunk_id, h.doc_id, h.title, h.text) for n, h in enumerate(hits, start=1)]


def format_source(source: Source) -> str:
    title = f"{source.title}\n" if source.title else ""
    return f"[{source.n}] {title}{(source.excerpt or source.text).strip()}"


def with_excerpts(sources: Sequence[Source], closest: dict[int, list[tuple[int, int]]]) -> list[Source]:
    """Sources whose prompt text is their chosen sentences (joined by " ... "); a source whose chosen
    sentences are all it has keeps its whole text."""
    out = []
    for source in sources:
        spans = closest.get(source.n, [])
        pieces = [" ".join(source.text[a:b].split()) for a, b in spans]
        excerpt = " ... ".join(pieces)
        shorter = spans and len(excerpt) < len(" ".join(source.text.split()))
        out.append(replace(source, excerpt=excerpt) if shorter else source)
    return out


def build_messages(question: str, sources: Sequence[Source]) -> list[dict[str, str]]:
    body = "\n\n".join(format_source(s) for s in sources)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Sources:\n\n{body}\n\nQuestion: {question.strip()}"},
    ]


def _prompt_format() -> str:
    probe = build_messages("QUESTION", [Source(1, "chunk", "doc", "TITLE", "TEXT")])
    return "p-" + hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:12]


# How prompts are written (system prompt, source layout), read off `build_messages` itself: answers record it, and
# preference pairs from answers of another format never train a generator (their prompts are not what it serves).
PROMPT_FORMAT = _prompt_format()


def fit_sources(
    question: str, sources: Sequence[Source], count_tokens: Callable[[str], int], budget: int
) -> list[Source]:
    """The leading sources whose prompt fits `budget` tokens (the best-ranked come first)."""
    used = count_tokens(SYSTEM_PROMPT) + count_tokens(question) + 32  # template and headers
    kept: list[Source] = []
    for source in sources:
        cost = count_tokens(format_source(source)) + 2
        if used + cost > budget:
            break
        kept.append(source)
        used += cost
    return kept


def declined(answer: str) -> bool:
    """An empty answer, or one whose first sentence (markers left out) is a refusal."""
    sentences = split_cited_sentences(answer, n_sources=0)  # any marker will do: only the words are read
    return not answer.strip() or bool(DECLINED.search(sentences[0].text if sentences else ""))
