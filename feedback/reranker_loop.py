"""Bootstrap a collection's reranker from BEIR qrels, evaluate the candidate on held-out queries, gate, promote.

The held-out queries (`is_holdout`, CITELOOP_EVAL_HOLDOUT of them) never reach training; the gate compares the
candidate with the active reranker on them, or with hybrid retrieval when none is active.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from citeloop.config import Settings, get_settings
from citeloop.registry import (
    GateDecision,
    VersionInfo,
    active_version,
    gate_decision,
    get_version,
    models_dir,
    promote,
    record_metrics,
    register_candidate,
)
from eval.beir import load_split
from eval.retrieval import ensure_eval_collection, evaluate_retrieval
from feedback.examples import TrainingExample, examples_from_qrels, is_holdout
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.train_reranker import train_reranker
from retrieval.retriever import CollectionRetriever


@dataclass
class LoopReport:
    version: VersionInfo
    decision: GateDecision
    promoted: bool


def holdout_queries(directory: Path, split: str, fraction: float, fold: int = 0) -> set[str]:
    return {q for q in load_split(directory, split).qrels if is_holdout(q, fraction, fold)}


@dataclass(frozen=True)
class HeldOut:
    directory: Path
    split: str
    queries: set[str]  # ids of the labelled queries the version never trained on


def version_held_out(version: VersionInfo) -> HeldOut:
    """The evaluation queries a version was registered with (fold 0 for versions from before folds)."""
    source = version.params.get("eval")
    if not source:
        raise ValueError(f"model version '{version.id}' records no evaluation queries to gate it on")
    directory, split = Path(source["beir"]), source["split"]
    return HeldOut(directory, split, holdout_queries(directory, split, float(source["holdout"]), int(source.get("fold", 0))))


def run_gate(version: VersionInfo, settings: Settings | None = None, show_progress: bool = False) -> GateDecision:
    """Candidate vs the active reranker (or hybrid) on held-out queries that neither of them trained on."""
    settings = settings or get_settings()
    held_out = version_held_out(version)

    def evaluate(stages: list[str], model: VersionInfo, queries: set[str]) -> dict:
        return evaluate_retrieval(held_out.directory, held_out.split, stages, settings, show_progress, reranker=model, query_ids=queries)

    active = active_version(version.collection, "reranker", settings)
    if active is None or active.id == version.id:
        candidate = evaluate(["hybrid", "rerank"], version, held_out.queries)
        return gate_decision(candidate["rerank"], candidate["hybrid"], "hybrid retrieval", settings.gate_min_ndcg_gain, settings.gate_max_recall_drop)
    name = f"active reranker {active.id}"
    queries = held_out.queries
    other = version_held_out(active)
    if (other.directory, other.split) == (held_out.directory, held_out.split):
        # Another held-out slice (fold or share): the active model trained on part of the candidate's.
        queries = queries & other.queries
    if not queries:
        reason = f"no held-out query is unseen by both the candidate and {name} (different held-out folds): nothing fair to compare on"
        return GateDecision(False, reason, {}, {}, name)
    candidate, baseline = evaluate(["rerank"], version, queries)["rerank"], evaluate(["rerank"], active, queries)["rerank"]
    return gate_decision(candidate, baseline, name, settings.gate_min_ndcg_gain, settings.gate_max_recall_drop)


@dataclass
class BeirExamples:
    collection: str  # the cached evaluation collection of the BEIR directory
    retriever: CollectionRetriever
    examples: list[TrainingExample]  # the split's labelled queries minus the held-out ones
    held_out: dict[str, str]  # query id -> text: the gate's queries, never trained on


def beir_examples(directory: Path, split: str, settings: Settings, show_progress: bool = False) -> BeirExamples:
    collection = ensure_eval_collection(directory, settings, show_progress)
    data = load_split(directory, split)
    held_out = holdout_queries(directory, split, settings.eval_holdout, settings.eval_holdout_fold)
    retriever = CollectionRetriever(collection, settings)
    chunks_of: dict[str, list[str]] = {}
    for row in retriever.chunks():
        chunks_of.setdefault(row.doc_id, []).append(row.chunk_id)

    @lru_cache(maxsize=1)  # examples_from_qrels asks for each relevant document of a query in turn
    def best_chunk_per_doc(query: str) -> dict[str, str]:
        best: dict[str, str] = {}
        for hit in retriever.search(query, k=settings.candidates, mode="hybrid"):
            best.setdefault(hit.doc_id, hit.chunk_id)
        return best

    def chunk_for(query: str, doc_id: str) -> str | None:
        # The relevant document's chunk the retriever ranks highest for this query; else its first chunk.
        if doc_id not in chunks_of:
            return None
        return best_chunk_per_doc(query).get(doc_id, chunks_of[doc_id][0])

    train_queries = {q: t for q, t in data.queries.items() if q not in held_out}
    examples = examples_from_qrels(train_queries, data.qrels, chunk_for)
    return BeirExamples(collection, retriever, examples, {q: data.queries[q] for q in sorted(held_out) if q in data.queries})


def train_from_beir(
    directory: Path,
    split: str,
    args: RerankerTrainingArgs | None = None,
    settings: Settings | None = None,
    promote_if_better: bool = False,
    show_progress: bool = False,
    actor: str = "cli",
) -> LoopReport:
    """Train a candidate on the split's labelled queries minus the held-out ones, gate it on those, record the gate;
    `promote_if_better`: promote it (as `actor`, recorded as gate-passed) when the gate passed."""
    settings = settings or get_settings()
    args = args or RerankerTrainingArgs()
    directory = Path(directory).resolve()
    beir = beir_examples(directory, split, settings, show_progress)
    collection, examples = beir.collection, beir.examples
    parent = active_version(collection, "reranker", settings)
    staging = models_dir(settings) / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=staging))
    try:
        trained = train_reranker(collection, examples, scratch / "artifact", args, settings, show_progress, beir.retriever)
        version = register_candidate(
            trained.path,
            collection,
            "reranker",
            trained.snapshot.sha256,
            params=asdict(args) | {"eval": {"beir": str(directory), "split": split, "holdout": settings.eval_holdout, "fold": settings.eval_holdout_fold}},
            metrics=trained.metrics,
            parent_id=parent.id if parent else None,
            settings=settings,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    decision = run_gate(version, settings, show_progress)
    record_metrics(version.id, {"gate": gate_record(decision)}, settings)
    promoted = False
    if promote_if_better and decision.passed:
        promote(version.id, settings, actor=actor)
        promoted = True
    return LoopReport(get_version(version.id, settings), decision, promoted)


def gate_record(decision: GateDecision) -> dict:
    return asdict(decision)
