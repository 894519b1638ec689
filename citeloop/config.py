"""Settings, read from ``CITELOOP_*`` environment variables (and a ``.env`` file)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from citeloop.hardware import EmbedderBackend, RerankBackend, host_embedder_backend, host_rerank_backend


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITELOOP_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Database, indexes and model artifacts.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite at DATA_DIR/citeloop.db.")
    cache_dir: Path | None = Field(
        None, description="Derived model files shared by all checkouts; default $XDG_CACHE_HOME/citeloop."
    )
    # auto: OpenVINO static int8 where the CPU has VNNI (SciFact ingest 2.3x plain encode on Zen 4, hybrid nDCG@10
    # 0.7278 vs 0.7273 fp32), else ONNX Runtime dynamic int8 (an AVX2-only CPU: 1.4x torch, OpenVINO int8 0.8x).
    embedder_backend: EmbedderBackend | Literal["auto"] = Field(
        "auto", description="Inference backend of the embedder; auto picks by the CPU's instructions."
    )
    embed_batch_size: int = Field(
        8, ge=1, description="Texts per embedding batch (small batches stay in CPU cache: 8 beat 64 by 1.5x on int8)."
    )
    embed_max_tokens: int = Field(256, ge=16, le=512, description="Embedder truncation length in tokens.")
    chunk_size: int = Field(200, ge=32, le=512, description="Chunk length in embedder tokens.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    hnsw_min_chunks: int = Field(200_000, ge=1, description="Collections at least this large get an HNSW index.")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree.")
    hnsw_ef_search: int = Field(128, ge=8, description="HNSW search breadth.")
    fusion: Literal["rrf", "minmax"] = Field("rrf", description="How dense and BM25 rankings are fused.")
    rrf_k: int = Field(60, ge=1, description="RRF constant: score = sum of w / (k + rank).")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in fusion.")
    bm25_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking in fusion.")
    candidates: int = Field(100, ge=1, description="Chunks each first stage returns before fusion.")
    bm25_method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = Field(
        "lucene", description="bm25s scoring variant."
    )
    rerank_top_n: int = Field(20, ge=1, description="Fused candidates the cross-encoder reranks.")
    # 160 tokens read the query, the title and the chunk's first ~120 tokens: held-out nDCG@10 0.7213 vs 0.7178 at 256
    # (fp32), 4.9x the plain CrossEncoder's pairs/s with OpenVINO bf16 on Zen 4 (bench/README.md).
    rerank_max_tokens: int = Field(160, ge=32, le=512, description="Cross-encoder truncation length (query + title + chunk).")
    rerank_batch_size: int = Field(8, ge=1, description="Pairs per cross-encoder batch (small batches stay in CPU cache).")
    # auto: OpenVINO bf16 where the CPU computes bf16 natively (within 0.0004 nDCG@10 of fp32 at 1.6x its speed), else
    # onnx-int8 (-0.002; on an AVX2-only CPU 1.7x torch, where OpenVINO's fp32 fallback ran no faster than torch).
    rerank_backend: RerankBackend | Literal["auto"] = Field(
        "auto", description="Inference backend of the cross-encoder (exported once per model version); auto picks by the CPU."
    )
    gate_min_ndcg_gain: float = Field(
        0.005, description="A candidate model must beat the active one (or hybrid) on nDCG@10 by this much."
    )
    gate_max_recall_drop: float = Field(0.005, ge=0, description="Largest Recall@100 loss the gate tolerates.")
    gate_require_ci: bool = Field(True, description="Promote only when the gain's paired bootstrap interval (nDCG@10 for rerankers, answer F1 for generators) lies above GATE_MIN_CI_LOWER.")
    gate_min_ci_lower: float = Field(0.0, description="What the lower bound of that interval must exceed.")
    gate_confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of that interval.")
    gate_min_answer_f1_gain: float = Field(0.0, description="A candidate generator must beat what serves on answer F1 by this much (and its interval's lower bound exceed GATE_MIN_CI_LOWER).")
    gate_max_abstain_rise: float = Field(
        0.05, ge=0, description="Largest rise of the decline rate on answerable questions the generator gate tolerates (refusals of unanswerable ones may not fall at all)."
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (http://HOST:5000, sqlite:///mlflow.db) every stored eval run is also logged to; unset: off."
    )
    queue_url: str | None = Field(
        None, description="Task queue of training jobs: redis://HOST:PORT/DB, or unset for huey's SQLite storage at DATA_DIR/queue.db."
    )
    job_heartbeat_s: float = Field(5.0, gt=0, description="How often a running job's worker records its progress and heartbeat.")
    job_stale_s: float = Field(
        120.0, gt=0, description="A running job without a heartbeat for this long (its worker on another host gone) is marked failed."
    )
    training_auto_events: int = Field(
        0, ge=0, description="Queue a reranker job when a collection has this many new judgements and votes since its last job (0: off)."
    )
    reranker_base: str = Field(
        "none",
        description="Warm start of rerankers trained from feedback: a base trained once on bundled labelled data (scifact, covidqa, scifact+covidqa), or none (the bare MiniLM).",
    )
    training_min_queries: int = Field(
        20, ge=1, description="Judged questions with a relevant chunk (outside the evaluation share) a training set from feedback needs."
    )
    training_max_sampled_prompts: int = Field(
        200, ge=1, description="Logged prompts a generator job with `samples` samples answers for (newest first)."
    )
    training_min_pairs: int = Field(
        20, ge=1, description="Preference pairs (generator) or rated answers (reward model) outside the evaluation share a training set from feedback needs."
    )
    eval_holdout: float = Field(
        0.2, gt=0, lt=1, description="Share of labelled queries held out of training to evaluate candidates."
    )
    eval_holdout_fold: int = Field(
        0, ge=0, description="Which disjoint slice of that share is held out (0 .. 1/share - 1): one run per fold cross-validates."
    )
    generator: str = Field(
        "qwen2.5-0.5b-instruct",
        description="Answer model: qwen2.5-0.5b-instruct, qwen2.5-1.5b-instruct, smollm2-135m, a .gguf file or a transformers model folder.",
    )
    # llama.cpp decodes the shipped GGUF 4-8x faster than fp32 transformers on a CPU (bench/bench_generate.py).
    generator_engine: Literal["auto", "llama-cpp", "transformers"] = Field(
        "auto", description="Inference engine; auto = llama.cpp for GGUF weights, transformers for a model folder."
    )
    generator_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="When set, the .gguf file or model folder in CITELOOP_GENERATOR must have this sha256."
    )
    generator_threads: int | None = Field(None, ge=1, description="CPU threads for generation (default: all cores).")
    context_window: int = Field(4096, ge=512, description="Prompt + answer tokens the generator is given.")
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Longest answer in tokens.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature; 0 = greedy (reproducible).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int = Field(0, description="Sampling seed.")
    generation_timeout_s: float = Field(120.0, gt=0, description="An answer not finished by then is an error.")
    evidence_sentences: int = Field(
        0, ge=0, le=50, description="Show each source to the generator as its N sentences closest to the question (0: the whole chunk)."
    )
    answer_contexts: int = Field(5, ge=1, le=50, description="Retrieved chunks given to the generator as numbered sources.")
    max_question_chars: int = Field(2000, ge=1, description="Longer questions are refused.")
    citation_min_similarity: float = Field(
        0.5, ge=-1, le=1, description="Cosine (MiniLM) a cited sentence needs with a span of its chunk to count as supported."
    )
    citation_min_overlap: float = Field(
        0.4, ge=0, le=1, description="Share of a cited sentence's content words its chunk must contain to count as supported."
    )
    citation_min_relevance: float = Field(
        0.25, ge=-1, le=1, description="Cosine (MiniLM) a cited sentence needs with the question: copied text that does not answer supports nothing."
    )
    answer_min_support: float = Field(
        0.5, ge=0, le=1, description="Abstain when fewer than this share of the answer's claims have a supported citation."
    )
    # 0.68: on the python-docs dev questions the closest retrieved sentence reached it for ~90% of answerable questions
    # and ~10% of unanswerable ones (corpora/qa-suite); with it the 0.5B model declined 0.23 of answerable tune questions
    # instead of 0.53 (bench/README.md, Answers across question shapes).
    extractive_min_similarity: float = Field(
        0.68,
        ge=-1,
        le=1.01,
        description="When the generator declines (or is unsupported) but a source sentence has this MiniLM cosine with the question, answer with that sentence quoted; above 1: never.",
    )
    abstain_min_evidence: float = Field(
        0.3, ge=-1, le=1, description="Abstain without generating when the best context's dense cosine is below this."
    )
    abstain_unknown_terms: bool = Field(
        True,
        description="Abstain without generating when the question names something (an uncommon word rare in the collection) that none of the passages found mentions.",
    )
    abstain_rare_term_share: float = Field(
        0.002,
        ge=0,
        le=1,
        description="A question word in at most this share of the collection's chunks (or in five) is rare: the passages found must mention it (CITELOOP_ABSTAIN_UNKNOWN_TERMS).",
    )
    rate_limit_per_minute: int = Field(600, ge=1, description="API requests per key per minute (token bucket, per server process).")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest file (or JSON body) the API accepts for ingestion.")
    default_collection: str = Field("python-docs", description="Collection `make run` ingests and serves.")
    host: str = Field("127.0.0.1", description="Address the API binds.")
    port: int = Field(8000, description="Port the API binds.")
    remote_url: str | None = Field(
        None, description="citeloop server `citeloop ask` sends questions to instead of answering locally (--remote overrides)."
    )
    api_key: SecretStr | None = Field(None, description="API key `citeloop ask` sends to that server (--key overrides).")

    # Resolved once here, so collection names, export caches and reports all see the backend actually used.
    @field_validator("embedder_backend", "rerank_backend")
    @classmethod
    def _resolve_auto_backend(cls, value: str, info: ValidationInfo) -> str:
        if value != "auto":
            return value
        return host_embedder_backend() if info.field_name == "embedder_backend" else host_rerank_backend()

    @field_validator("eval_holdout_fold")
    @classmethod
    def _fold_within_the_range(cls, fold: int, info: ValidationInfo) -> int:
        share = info.data.get("eval_holdout")
        if share is not None and fold * share >= 1:
            raise ValueError(f"fold {fold} of {share:g}-wide held-out slices starts past the last query; use 0..{math.ceil(1 / share) - 1}")
        return fold

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'citeloop.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def model_cache_dir(self) -> Path:
        if self.cache_dir:
            return self.cache_dir
        import os

        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "citeloop"


@lru_cache
def get_settings() -> Settings:
    return Settings()
