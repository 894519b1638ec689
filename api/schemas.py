"""Request and response models of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

CollectionName = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Scalar = str | int | float | bool
# Documents' metadata to match: each key equal to its value, or to any value of a list.
MetadataFilters = dict[str, Scalar | list[Scalar]] | None
FILTERS = Field(None, description='Only chunks of documents whose metadata match: {"product": "kettle", "lang": ["en", "de"]}.', max_length=32)


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
    filters: MetadataFilters = FILTERS


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
    filters: MetadataFilters = FILTERS


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
    snapshot_rows: int = Field(description="Rows removed from training snapshots (the models trained on them are marked).")


class ErasureResult(BaseModel):
    """Totals over the collections the calling key reaches, and what was erased in each of them."""

    key_name: str
    events: int
    answers: int
    searches: int
    snapshot_rows: int
    collections: list[CollectionErasure]


class TrainingSettings(Strict):
    training_opt_out: bool = Field(description="True: this feedback never enters a training set (it is still stored and exported).")


class CollectionSettings(BaseModel):
    name: str
    training_opt_out: bool


class KeySettings(BaseModel):
    name: str
    training_opt_out: bool


class EvalSetRow(BaseModel):
    """A ragas-style row: the question and the documents (or chunks) that answer it; with a `reference` answer it is
    also a QA question generators are gated on; `answerable: false` (no ids, no reference): the collection holds no
    answer to it, and a generator should decline it."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    user_input: str = Field(min_length=1, max_length=4000)
    reference_doc_ids: list[str] | None = Field(None, min_length=1)
    reference_chunk_ids: list[str] | None = Field(None, min_length=1)
    reference: str | None = Field(None, min_length=1)
    answerable: bool | None = None


class EvalSetCreate(Strict):
    """Either `rows` (ragas-style) or BEIR-style `queries` + `qrels` (query id -> {doc id: grade})."""

    name: str = Field(min_length=1, max_length=128)
    rows: list[EvalSetRow] | None = Field(None, min_length=1, max_length=100_000)
    queries: dict[str, str] | None = None
    qrels: dict[str, dict[str, int]] | None = None
    level: Literal["doc", "chunk"] = Field("doc", description="With queries + qrels: whether their ids name documents or chunks.")


class EvalSetInfoOut(BaseModel):
    id: str
    collection: str
    name: str
    level: str
    queries: int  # retrieval queries (with relevant documents or chunks)
    qa_questions: int  # questions generators are gated on: with a reference answer, or unanswerable
    unanswerable: int
    sha256: str
    created_by: str
    created_at: str


class TrainingOptions(Strict):
    """Training arguments a job may override (the rest keep the trainer's defaults). Rerankers: epochs, max_steps,
    batch_size, learning_rate, hard_negatives, max_positives_per_query, max_tokens, seed; generators: epochs,
    max_steps, batch_size, gradient_accumulation, learning_rate, beta, lora_rank, max_length, bf16, seed, samples,
    sample_temperature; reward models: epochs, max_steps, batch_size, learning_rate, seed."""

    epochs: int | None = Field(None, ge=1, le=50)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=2, le=512)
    learning_rate: float | None = Field(None, gt=0, lt=1)
    hard_negatives: int | None = Field(None, ge=0, le=32)
    max_positives_per_query: int | None = Field(None, ge=1, le=32)
    max_tokens: int | None = Field(None, ge=16, le=512)
    gradient_accumulation: int | None = Field(None, ge=1, le=64)
    beta: float | None = Field(None, gt=0, le=10)
    lora_rank: int | None = Field(None, ge=1, le=256)
    max_length: int | None = Field(None, ge=64, le=32768)
    bf16: bool | None = None
    samples: int | None = Field(None, ge=2, le=16, description="Generators: answers sampled per logged prompt, ranked by the active reward model.")
    sample_temperature: float | None = Field(None, gt=0, le=2)
    seed: int | None = None


class JobCreate(Strict):
    kind: Literal["reranker", "generator", "reward"] = Field(description="The model kind to train from the collection's feedback.")
    collection: str = CollectionName
    options: TrainingOptions = Field(default_factory=TrainingOptions)


class JobOut(BaseModel):
    id: str
    collection: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    trigger: str
    requested_by: str
    options: dict[str, Any]
    progress: float
    log: list[str] = Field(description="The latest log lines, oldest first.")
    cancel_requested: bool
    snapshot_id: str | None
    version_id: str | None = Field(description="The candidate the job registered.")
    result: dict[str, Any] | None = Field(description="Training metrics, the gate decision, whether it was promoted.")
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class ModelOut(BaseModel):
    id: str
    collection: str
    kind: str
    status: str
    parent_id: str | None
    snapshot_id: str
    artifact_sha256: str
    metrics: dict[str, Any]
    created_at: str
    promoted_at: str | None
    data_erased_at: str | None = Field(description="When an erasure removed rows of the snapshot it was trained on.")


class DeploymentOut(BaseModel):
    collection: str
    kind: str
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str
    deployed_at: str


class ModelsOut(BaseModel):
    models: list[ModelOut]
    history: list[DeploymentOut] = Field(description="Promotions and rollbacks of the listed collections' models, oldest first.")


class PromoteRequest(Strict):
    force: bool = Field(False, description="Promote even when the gate fails (recorded as forced).")


class EvalRunOut(BaseModel):
    """A stored `eval qa` run, or a gate's ranking: what was asked (the questions' file and digest), by which models,
    with which settings, and its metrics (ragas failures per metric beside them)."""

    id: str
    collection: str
    questions: str
    questions_sha256: str
    models: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, Any]
    failures: dict[str, int]
    created_by: str
    created_at: str


class EvalRunDetailOut(EvalRunOut):
    rows: list[dict[str, Any]]  # one per question: the answer, citations, contexts and each metric's value (a ranking: its nDCG@10 and top 10)


class EvalLabelIn(Strict):
    id: str = Field(min_length=1, max_length=256, description="The question's id in the run's rows.")
    metric: str = Field(min_length=1, max_length=64, description="A metric the run scored per question, e.g. faithfulness.")
    label: StrictInt = Field(ge=0, le=1, description="1: the answer deserves the metric (faithfulness: supported by its contexts); 0: it does not.")


class EvalLabelsRequest(Strict):
    labels: list[EvalLabelIn] = Field(min_length=1, max_length=10_000)

    @model_validator(mode="after")
    def one_label_per_answer_and_metric(self) -> EvalLabelsRequest:
        seen = set()
        for item in self.labels:
            if (item.id, item.metric) in seen:
                raise ValueError(f"'{item.id}' is labelled twice under '{item.metric}'")
            seen.add((item.id, item.metric))
        return self

    def by_metric(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for item in self.labels:
            out.setdefault(item.metric, {})[item.id] = item.label
        return out


class EvalLabelsOut(BaseModel):
    run_id: str
    labelled: dict[str, int] = Field(description="The run's labelled questions per metric, these labels included.")


class EvalCalibrationOut(BaseModel):
    """Each labelled metric's judge mean corrected by the curators' labels (prediction-powered inference)."""

    run_id: str
    labelled: dict[str, int]
    calibrated: dict[str, dict[str, Any] | None] = Field(
        description="metric -> judge_mean, estimate, ci95, classical (the labels alone), n_labelled, excluded, agreement "
        "(accuracy, cohen_kappa); null where fewer than 2 labelled answers have a judge score, or no unlabelled one has."
    )
