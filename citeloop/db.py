"""Storage: SQLAlchemy 2 models, engine and sessions. The schema is owned by Alembic migrations."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from citeloop.config import Settings, get_settings
from citeloop.errors import UnknownCollectionError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Its feedback never enters a training set (the owner's choice; the events are still stored and exported).
    training_opt_out: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list[Document]] = relationship(back_populates="collection", cascade="all, delete-orphan", passive_deletes=True)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("collection_id", "doc_id", name="uq_documents_collection_doc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    doc_id: Mapped[str] = mapped_column(String(512))  # the caller's id: a relative path or a corpus _id
    source: Mapped[str] = mapped_column(Text)  # where it was read from
    title: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64))  # of the extracted text + title + metadata
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    text: Mapped[str] = mapped_column(Text)  # the extracted source text that chunk offsets point into
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True, order_by="Chunk.ordinal"
    )


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)

    document: Mapped[Document] = relationship(back_populates="chunks")


class IndexBuild(Base):
    """One immutable set of index files for a collection; exactly one is active after each ingest."""

    __tablename__ = "index_builds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # active | retired
    n_chunks: Mapped[int] = mapped_column(Integer)
    dense_index: Mapped[str] = mapped_column(String(32))  # flat | hnsw
    embedder: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


IS_ACTIVE = text("status = 'active'")


class ModelVersion(Base):
    """A trained model of one collection; at most one `active` version per collection and kind (a partial
    unique index, so the database refuses a second one whatever the caller does)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        Index("ix_model_versions_collection_kind_status", "collection_id", "kind", "status"),
        Index(
            "uq_model_versions_one_active", "collection_id", "kind",
            unique=True, sqlite_where=IS_ACTIVE, postgresql_where=IS_ACTIVE,
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # reranker | generator | reward
    status: Mapped[str] = mapped_column(String(16))  # candidate | active | retired
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the version it was trained from
    path: Mapped[str] = mapped_column(Text)  # artifact directory
    artifact_sha256: Mapped[str] = mapped_column(String(64))  # of the artifact files, checked before loading
    snapshot_id: Mapped[str] = mapped_column(String(64))  # sha256 of the exact training examples
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # hyper-parameters
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # training, gate and eval figures
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Set when an erasure removed rows of the training snapshot this version was trained on.
    data_erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Deployment(Base):
    """One change of a collection's active model of a kind, in order of `id`: a promotion (`gate_passed` or
    `forced`) or a `rollback` (to `to_version`, or to none: the stage below serves)."""

    __tablename__ = "model_deployments"
    __table_args__ = (Index("ix_model_deployments_collection_kind", "collection_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=True)
    to_version: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), nullable=True)
    reason: Mapped[str] = mapped_column(String(16))  # gate_passed | forced | rollback
    actor: Mapped[str] = mapped_column(String(128))  # who deployed: an API key name, "cli", a job
    deployed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key: only its sha256 is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # reader | curator | admin
    collections: Mapped[list[str]] = mapped_column(JSON)  # names it may reach; ["*"] = all
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart in listings
    training_opt_out: Mapped[bool] = mapped_column(default=False, server_default=false())  # its feedback never trains
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AnswerRecord(Base):
    """An answer as the user saw it: the exact contexts (text included), citations and model versions."""

    __tablename__ = "answers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)  # API key name that asked
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    abstained: Mapped[bool] = mapped_column(default=False)
    abstain_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    extractive: Mapped[bool] = mapped_column(default=False, server_default=false())  # a quoted extract, not generated
    prompt: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)  # the chat messages generated from
    prompt_format: Mapped[str | None] = mapped_column(String(32), nullable=True)  # generation.prompt.PROMPT_FORMAT
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    contexts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    support: Mapped[float] = mapped_column(default=1.0)  # share of sentences with a supported citation
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class SearchRecord(Base):
    """A search as the user saw it, so its results can be judged like an answer's contexts."""

    __tablename__ = "searches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    query: Mapped[str] = mapped_column(Text)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeedbackRecord(Base):
    """One feedback event (feedback/events.py shape), committed before the API acknowledges it."""

    __tablename__ = "feedback_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    answer_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    search_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    chunk_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    citation_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # query, contexts, cited, answer, correction, reason, models
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class TrainingSnapshot(Base):
    """The exact labelled rows one training run reads (feedback/trainset.py), with where they came from and
    what the quality gates dropped. `sha256` is of `rows`; an erasure removes its rows and updates it."""

    __tablename__ = "training_snapshots"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # the model kind it trains
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)  # per signal kind, queries, rows
    dropped: Mapped[dict[str, Any]] = mapped_column(JSON)  # gate -> events or labels it dropped
    first_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    erased_rows: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalSet(Base):
    """Labelled queries of one collection that no training run reads: the gate of its models. `level`: the
    qrels name documents (BEIR) or chunks (judged feedback)."""

    __tablename__ = "eval_sets"
    __table_args__ = (UniqueConstraint("collection_id", "name", name="uq_eval_sets_collection_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    level: Mapped[str] = mapped_column(String(8))  # doc | chunk
    queries: Mapped[dict[str, Any]] = mapped_column(JSON)  # query id -> text
    qrels: Mapped[dict[str, Any]] = mapped_column(JSON)  # query id -> {doc or chunk id: grade}
    # Questions with reference answers (`eval.qa.QuestionRow` fields; none for an unanswerable one): generators are
    # gated on them. Empty for a set of retrieval labels only.
    qa_rows: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalRun(Base):
    """One `eval qa` run, or a gate's ranking of its queries: the questions asked (their file and digest), the models
    that answered or ranked, the settings, and what came out (metrics, per-question rows). Read by `eval runs`,
    `eval compare` and `GET /v1/evals`."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    questions: Mapped[str] = mapped_column(Text)  # the file the questions were read from
    questions_sha256: Mapped[str] = mapped_column(String(64))  # of the rows asked (ids, questions, references, gold ids)
    models: Mapped[dict[str, Any]] = mapped_column(JSON)  # embedder, reranker, generator that answered
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the run's options and the answer settings
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    failures: Mapped[dict[str, Any]] = mapped_column(JSON)  # ragas metric -> rows it failed on
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalLabel(Base):
    """A curator's 0/1 label of one answer of a stored run under one metric it scored per question (eval/labels.py)."""

    __tablename__ = "eval_labels"
    __table_args__ = (UniqueConstraint("run_id", "row_id", "metric", name="uq_eval_labels_run_row_metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    row_id: Mapped[str] = mapped_column(String(256))  # the question's id in the run's rows
    metric: Mapped[str] = mapped_column(String(64))
    label: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


UNFINISHED = text("status IN ('queued', 'running')")


class TrainingJob(Base):
    """A training run requested of the task queue (feedback/jobs.py): its state as the API reports it. At most
    one unfinished job per collection and kind (a partial unique index)."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_collection_kind", "collection_id", "kind"),
        Index("uq_training_jobs_one_unfinished", "collection_id", "kind", unique=True, sqlite_where=UNFINISHED, postgresql_where=UNFINISHED),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    trigger: Mapped[str] = mapped_column(String(16))  # api | cli | auto
    requested_by: Mapped[str] = mapped_column(String(128))
    options: Mapped[dict[str, Any]] = mapped_column(JSON)  # training arguments overridden for this job
    progress: Mapped[float] = mapped_column(default=0.0, server_default=text("0"))
    log: Mapped[list[str]] = mapped_column(JSON)  # the latest lines
    queue_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)  # host:pid that runs it
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    snapshot_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    version_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # metrics, gate decision, promoted
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def get_collection(session: Session, name: str) -> Collection:
    """The collection of that name: the one lookup every package uses; raises `UnknownCollectionError`."""
    from sqlalchemy import select

    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        raise UnknownCollectionError(name)
    return collection


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(settings: Settings | None = None) -> Engine:
    """One engine per URL, migrated to the latest schema on first use."""
    settings = settings or get_settings()
    url = settings.sqlalchemy_url
    with _engines_lock:
        if url not in _engines:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            from citeloop.migrate import upgrade

            upgrade(engine)
            _engines[url] = engine
        return _engines[url]


def dispose_engine(settings: Settings) -> None:
    """Close the pooled connections of a URL (before dropping its database, or at shutdown)."""
    with _engines_lock:
        engine = _engines.pop(settings.sqlalchemy_url, None)
    if engine is not None:
        _sessionmakers.pop(id(engine), None)
        engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_sessionmakers: dict[int, sessionmaker] = {}


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error."""
    engine = get_engine(settings)
    factory = _sessionmakers.setdefault(id(engine), sessionmaker(engine, expire_on_commit=False))
    with factory.begin() as session:
        yield session
