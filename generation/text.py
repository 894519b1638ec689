"""Text units for citation checks: sentences with exact offsets (Punkt within paragraphs and list items), and
content words (stemmed, stopwords out) with their overlap between a sentence and a passage."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=1)
def _sentence_splitter():
    # Punkt, the sentence tokenizer llama-index's splitters use; span_tokenize keeps offsets.
    from nltk.tokenize import PunktSentenceTokenizer

    return PunktSentenceTokenizer()


# Where a unit of text ends regardless of punctuation: a blank line (a paragraph, a heading, a reST field list
# entry or directive stands alone), or a line break before a list item ("1. ...", "- ...", "* ..."): each step
# of a procedure is its own claim, and a quote never runs from a document's title block into its first sentence.
BLOCK_BREAK = re.compile(r"\n[ \t]*\n\s*|\n(?=[ \t]*(?:\d{1,2}[.)]|[-*\u2022])[ \t]+\S)")
LINE_BREAK = re.compile(r"\n\s*")
LIST_MARKER = re.compile(r"\s*(?:\d{1,2}[.)]|[-*\u2022])(?:\s+|$)")


def sentence_spans(text: str, every_line: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each sentence: Punkt sentences within each block that BLOCK_BREAK delimits (with
    `every_line`, each line is a block: a generated answer's lines are its list items). A list item's marker
    stays with its item's first sentence."""
    spans: list[tuple[int, int]] = []
    block_start = 0
    breaks = LINE_BREAK if every_line else BLOCK_BREAK
    for match in [*breaks.finditer(text), None]:
        block_end = match.start() if match else len(text)
        block = text[block_start:block_end]
        marker_only = None
        for s, e in _sentence_splitter().span_tokenize(block):
            if not block[s:e].strip():
                continue
            if LIST_MARKER.fullmatch(block[s:e]):
                marker_only = marker_only if marker_only is not None else block_start + s
                continue
            spans.append((marker_only if marker_only is not None else block_start + s, block_start + e))
            marker_only = None
        block_start = match.end() if match else len(text)
    return spans


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


# Words about the sources themselves ("According to the sources, ...", "Based on the information provided in
# the text, ..."): small models open answers with them; they claim nothing a passage could contain.
META_WORDS = frozenset(
    "according based information provided source sources text texts passage passages context document documents "
    "paper article study mentioned stated states answer question".split()
)


def content_words(text: str) -> list[str]:
    """Stemmed words without stopwords, numbers kept ("9 antigens" must find the 9): the unit of overlap."""
    from retrieval.sparse import stem

    stop = _stopwords() | META_WORDS
    return [stem(w) for w in re.findall(r"\w+", text.lower()) if w not in stop and (len(w) > 1 or w.isdigit())]


def content_overlap(sentence: str, passage: str, question: str = "") -> float:
    """Share of the sentence's content words that occur in the passage.

    Words the sentence shares with the question are left out when others remain: every retrieved passage
    contains them, so they would make any on-topic sentence look supported ("X is caused by Y" must find Y).
    """
    words, passage_words, question_words = content_words(sentence), content_words(passage), content_words(question)
    asked = set(question_words)
    words = [w for w in words if w not in asked] or words
    if not words:
        return 0.0
    present = set(passage_words)
    return sum(w in present for w in words) / len(words)
