"""Split documents into token-sized chunks with llama-index's SentenceSplitter, keeping exact source offsets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ChunkSpan:
    ordinal: int
    text: str
    char_start: int
    char_end: int  # text == source[char_start:char_end]


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int, count_tokens: Callable[[str], list]):
        from llama_index.core.node_parser import SentenceSplitter

        if chunk_overlap >= chunk_size:
            raise ValueError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
        self.splitter = SentenceSplitter(
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            tokenizer=count_tokens,
            include_metadata=False,
            include_prev_next_rel=False,
        )

    def split(self, text: str) -> list[ChunkSpan]:
        spans: list[ChunkSpan] = []
        cursor = 0
        for piece in self.splitter.split_text(text):
            # The splitter trims whitespace at chunk edges; each chunk is found verbatim after the previous start.
            start = text.find(piece, cursor)
            if start < 0:
                start = text.find(piece)
            if start < 0:
                raise ValueError("chunk text not found in its source; the splitter rewrote it")
            spans.append(ChunkSpan(len(spans), piece, start, start + len(piece)))
            cursor = start + 1
        return spans
