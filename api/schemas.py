"""Request and response models of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CollectionName = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    version: str


class Ready(BaseModel):
    ready: bool
    models: dict[str, str | None]


class CollectionCreate(Strict):
    name: str = CollectionName


class CollectionInfo(BaseModel):
    name: str
    documents: int
    chunks: int


class DocumentIn(Strict):
    id: str = Field(min_length=1, max_length=512)
    title: str = Field("", max_length=2000)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsIn(Strict):
    documents: list[DocumentIn] = Field(min_length=1, max_length=10_000)


class Skipped(BaseModel):
    name: str
    reason: str


class IngestResult(BaseModel):
    ingested: int
    unchanged: int
    skipped: list[Skipped]
    chunks: int


class DeleteResult(BaseModel):
    deleted: int
    chunks: int


class StageScoreOut(BaseModel):
    score: float
    rank: int


class ContextOut(BaseModel):
    chunk_id: str
    doc_id: str
    title: str
    text: str
    rank: int
    scores: dict[str, StageScoreOut]


class CitationOut(BaseModel):
    n: int
    chunk_id: str
    doc_id: str
    title: str
    quote: str
    start: int
    end: int
    supported: bool
    similarity: float
    overlap: float
    relevance: float
    attributed: bool


class AskRequest(Strict):
    collection: str = CollectionName
    question: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=50)
    stream: bool = False


class AskResponse(BaseModel):
    answer_id: str
    answer: str
    abstained: bool
    abstain_reason: str | None
    extractive: bool = Field(
        description="The answer quotes the source sentence that best answers the question: the generator declined although a source supports an answer."
    )
    citations: list[CitationOut]
    contexts: list[ContextOut]
    unsupported_sentences: list[int]
    models: dict[str, str | None]
    timings_ms: dict[str, float]


class SearchRequest(Strict):
    collection: str = CollectionName
    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=100)


class SearchResponse(BaseModel):
    search_id: str
    results: list[ContextOut]
    reranker: str | None


class VoteRequest(Strict):
    rating: Literal["up", "down"]
    comment: str | None = Field(None, max_length=5000)


class FlagRequest(Strict):
    reason: str = Field(min_length=1, max_length=5000)


class JudgementRequest(Strict):
    answer_id: str | None = Field(None, max_length=32)
    search_id: str | None = Field(None, max_length=32)
    chunk_id: str = Field(min_length=1, max_length=32)
    relevant: bool


class CorrectionRequest(Strict):
    answer: str = Field(min_length=1, max_length=20_000)


class EventAck(BaseModel):
    event_id: str
    kind: str
    created_at: str


class ReviewItem(BaseModel):
    answer_id: str
    question: str
    answer: str
    abstained: bool
    support: float
    thumbs_down: int
    citation_flags: int
    created_at: str


class CollectionErasure(BaseModel):
    collection: str
    events: int
    answers: int
    searches: int


class ErasureResult(BaseModel):
    """Totals over the collections the calling key reaches, and what was erased in each of them."""

    key_name: str
    events: int
    answers: int
    searches: int
    collections: list[CollectionErasure]
