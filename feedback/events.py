"""The feedback event: what the API stores for every vote, flag, judgement and correction.

Training reads exactly these fields, so the API writes exactly this shape. Each event keeps the question,
the chunks that were shown and cited, and the model versions that produced them, so a judgement can be
replayed into a training example long after the models changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

FeedbackKind = Literal["thumbs_up", "thumbs_down", "citation_flag", "relevant", "not_relevant", "correction"]
FEEDBACK_KINDS: tuple[FeedbackKind, ...] = ("thumbs_up", "thumbs_down", "citation_flag", "relevant", "not_relevant", "correction")


@dataclass(frozen=True)
class FeedbackEvent:
    id: str
    kind: FeedbackKind
    collection: str
    query: str
    actor: str  # the API key name that sent it (erasure removes by this)
    created_at: datetime
    answer_id: str | None = None  # the answer judged, voted on or corrected
    search_id: str | None = None  # or the search whose results were judged
    chunk_id: str | None = None  # the chunk a judgement or citation flag is about
    contexts: tuple[str, ...] = ()  # chunk ids shown to the user, in order
    cited: tuple[str, ...] = ()  # chunk ids the answer cited, in citation order
    answer: str | None = None  # the answer text as shown
    correction: str | None = None  # a curator's corrected answer
    reason: str | None = None  # why a citation was flagged, or the voter's comment
    models: dict[str, str] = field(default_factory=dict)  # {"reranker": version or "none", "generator": ...}

    def __post_init__(self) -> None:
        if self.kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind '{self.kind}'; one of {', '.join(FEEDBACK_KINDS)}")
        if self.kind in ("relevant", "not_relevant", "citation_flag") and not self.chunk_id:
            raise ValueError(f"a '{self.kind}' event needs the chunk_id it is about")
        if self.kind == "correction" and not self.correction:
            raise ValueError("a 'correction' event needs the corrected answer")
