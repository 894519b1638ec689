"""Train a collection's reranker (from BEIR qrels, or from its stored feedback), gate the candidate on evaluation
queries it never trained on, promote it when it is better.

BEIR: the held-out queries (`is_holdout`, CITELOOP_EVAL_HOLDOUT of them) never reach training. Feedback: the
collection's uploaded evaluation sets, or the held-out share of its judged questions. The gate compares the
candidate with hybrid retrieval and with the active reranker, if any, on the queries neither trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from citeloop.config import Settings, get_settings
from citeloop.registry import (
    GateDecision,
    VersionInfo,
    active_version,
    gate_decision,
    get_version,
    promote,
    record_metrics,
    register_candidate,
    staging_dir,
)
from eval.beir import load_split
from eval.retrieval import ensure_eval_collection, evaluate_collection
from feedback.examples import TrainingExample, examples_from_qrels, is_holdout, query_key
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


@dataclass(frozen=True)
class GateQueries:
    """Labelled queries a version is gated on: on which collection, at which level, and described how."""

    collection: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    level: str
    name: str


def gate_queries(version: VersionInfo, settings: Settings) -> GateQueries:
    """The evaluation queries a version was registered with: a BEIR split's held-out share, or an evaluation
    set of its collection."""
    source = version.params.get("eval") or {}
    if "evalset" in source:
        from citeloop.db import session_scope
        from feedback.evalsets import get_evalset

        with session_scope(settings) as session:
            evalset = get_evalset(session, source["evalset"])
        return GateQueries(evalset.collection, evalset.queries, evalset.qrels, evalset.level, f"evaluation set '{evalset.name}'")
    held_out = version_held_out(version)
    data = load_split(held_out.directory, held_out.split)
    queries = {q: t for q, t in data.queries.items() if q in held_out.queries}
    collection = ensure_eval_collection(held_out.directory, settings)
    return GateQueries(collection, queries, data.qrels, "doc", f"held-out '{held_out.split}' queries")


def trained_queries(version: VersionInfo, settings: Settings) -> set[str]:
    """`query_key`s of the questions a version trained on."""
    source = version.params.get("eval") or {}
    if "evalset" in source:
        from citeloop.db import session_scope
        from feedback.trainset import load_snapshot

        with session_scope(settings) as session:
            return {r.query_id for r in load_snapshot(session, version.snapshot_id).rows}
    held_out = version_held_out(version)
    data = load_split(held_out.directory, held_out.split)
    return {query_key(t) for q, t in data.queries.items() if q not in held_out.queries}


def run_gate(version: VersionInfo, settings: Settings | None = None, show_progress: bool = False) -> GateDecision:
    """The candidate against hybrid retrieval and, when another reranker is active, against it too, on the
    candidate's evaluation queries (for the active one: those of them it never trained on). nDCG@10 gains come
    with their paired bootstrap interval (CITELOOP_GATE_MIN_CI_LOWER). Each ranking compared is stored as an eval
    run (`eval compare`, `eval report` read them), and the decision names them."""
    settings = settings or get_settings()
    target = gate_queries(version, settings)

    def decide(
        candidate: dict, baseline: dict, name: str, baseline_model: VersionInfo | None, queries: str, candidate_run: str | None = None
    ) -> GateDecision:
        """`candidate_run`: the candidate's ranking of these queries, already stored."""
        decision = gate_decision(
            candidate, baseline, name, settings.gate_min_ndcg_gain, settings.gate_max_recall_drop,
            settings.gate_min_ci_lower if settings.gate_require_ci else None, settings.gate_confidence,
        )
        rankings = {"baseline": (name, baseline_model, baseline)} | ({} if candidate_run else {"candidate": (version.id, version, candidate)})
        saved = save_gate_rankings(version, target, queries, rankings, settings) | ({"candidate": candidate_run} if candidate_run else {})
        return replace(
            decision, runs=saved,
            reason=f"{target.name}, {len(candidate.get('per_query', ()))} queries (eval compare {saved['baseline']} {saved['candidate']}): {decision.reason}",
        )

    def evaluate(stages: list[str], model: VersionInfo, queries: dict[str, str]) -> dict:
        return evaluate_collection(
            target.collection, queries, target.qrels, stages, settings, target.level, show_progress, reranker=model, per_query=True
        )

    active = active_version(version.collection, "reranker", settings)
    if active is not None and active.id != version.id:
        name = f"active reranker {active.id}"
        seen = trained_queries(active, settings)
        unseen = {q: t for q, t in target.queries.items() if query_key(t) not in seen}
        if not unseen:
            reason = f"no evaluation query is unseen by both the candidate and {name}: nothing fair to compare on"
            return GateDecision(False, reason, {}, {}, name)
    scores = evaluate(["hybrid", "rerank"], version, target.queries)
    asked = f"gate queries of {version.id}: {target.name}"
    versus_hybrid = decide(scores["rerank"], scores["hybrid"], "hybrid retrieval", None, asked)
    if active is None or active.id == version.id or not versus_hybrid.passed:
        return versus_hybrid
    if len(unseen) == len(target.queries):
        versus_active = decide(scores["rerank"], evaluate(["rerank"], active, unseen)["rerank"], name, active, asked, versus_hybrid.runs["candidate"])
    else:
        candidate = evaluate(["rerank"], version, unseen)["rerank"]
        versus_active = decide(candidate, evaluate(["rerank"], active, unseen)["rerank"], name, active, f"{asked}, those {name} never trained on")
    # Both comparisons' runs stay named: the one against hybrid retrieval passed on the way.
    return replace(versus_active, runs={"hybrid": versus_hybrid.runs["baseline"], "candidate_versus_hybrid": versus_hybrid.runs["candidate"]} | versus_active.runs)


def save_gate_rankings(
    version: VersionInfo, target: GateQueries, questions: str, rankings: dict[str, tuple[str, VersionInfo | None, dict]], settings: Settings
) -> dict[str, str]:
    """The gate's rankings (role -> (what ranked, its reranker or None for hybrid retrieval, its scores)) stored as
    eval runs of the evaluation collection, and logged to MLflow when configured; returns role -> run id."""
    from citeloop.db import session_scope
    from eval.runs import save_ranking_run, track_run
    from retrieval.embedder import EMBEDDER_ID

    with session_scope(settings) as session:
        saved = {
            role: save_ranking_run(
                session, target.collection, questions, target.queries, target.qrels, target.level,
                scores, {"embedder": EMBEDDER_ID, "reranker": model.id if model else None},
                {"gate": version.id, "ranked_by": who}, f"gate:{version.id}",
            )
            for role, (who, model, scores) in rankings.items()
        }
    for run in saved.values():
        track_run(run, settings)
    return {role: run.id for role, run in saved.items()}


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
    source = {"beir": str(directory), "split": split, "holdout": settings.eval_holdout, "fold": settings.eval_holdout_fold}
    return _train_gate_promote(beir.collection, beir.examples, None, source, args, settings, promote_if_better, show_progress, actor, beir.retriever)


def train_from_feedback(
    collection: str,
    args: RerankerTrainingArgs | None = None,
    settings: Settings | None = None,
    promote_if_better: bool = False,
    show_progress: bool = False,
    actor: str = "cli",
    reporter=None,
    until: datetime | None = None,
) -> LoopReport:
    """Train a candidate on the collection's stored feedback (a snapshot of its training set), gate it on the
    collection's latest uploaded evaluation set, else on the held-out share of the judged questions (saved as an
    evaluation set of the collection); `promote_if_better` as for `train_from_beir`. `reporter`: a job's
    `JobReporter` (progress, log, cancellation); `until`: only events created up to then."""
    stage = reporter.stage if reporter else (lambda message, progress: None)
    from citeloop.db import session_scope
    from feedback.evalsets import TRAINING_AUTHOR, add_evalset, list_evalsets, uploaded_query_keys
    from feedback.pii import feedback_scrubber
    from feedback.trainset import TrainingSetError, build_training_set, examples_from_rows, held_out_evalset, save_snapshot

    settings = settings or get_settings()
    args = args or RerankerTrainingArgs()
    stage("building the training set from stored feedback", 0.02)
    retriever = CollectionRetriever(collection, settings)
    scrub = feedback_scrubber(retriever)
    with session_scope(settings) as session:
        uploaded = list_evalsets(session, collection, uploaded_only=True)
        training_set = build_training_set(
            session, collection, scrub, settings.eval_holdout, settings.training_min_queries, uploaded_query_keys(session, collection), until
        )
        snapshot = save_snapshot(session, collection, "reranker", training_set)
        if uploaded:
            evalset = uploaded[-1]
        else:
            queries, qrels = held_out_evalset(training_set)
            if not queries:
                raise TrainingSetError(
                    f"no judged question of collection '{collection}' fell in the evaluation share: judge more questions, "
                    "or upload an evaluation set (citeloop evalsets add)"
                )
            evalset = add_evalset(session, collection, f"held-out {snapshot.id}", queries, qrels, "judged", f"{TRAINING_AUTHOR}{snapshot.id}")
    source = {"evalset": evalset.id, "snapshot": snapshot.id, "counts": snapshot.counts, "dropped": snapshot.dropped}
    base = None
    if settings.reranker_base != "none":
        from feedback.bases import build_base, parse_sources, warm_start_args

        sources = parse_sources(settings.reranker_base)
        stage(f"warm start from the base trained on {'+'.join(sources)} (built once)", 0.03)
        base = build_base(sources, settings, show_progress, log=lambda message: stage(message, 0.03))
        args = warm_start_args(args)
        source["base"] = "+".join(sources)
    stage(f"snapshot {snapshot.id}: {snapshot.counts['rows']} rows, {snapshot.counts['labelled_queries']} questions; gate on '{evalset.name}'", 0.05)
    examples = examples_from_rows(snapshot.rows)
    callbacks = [reporter.training_callback(0.1, 0.85)] if reporter else None
    return _train_gate_promote(
        collection, examples, snapshot.id, source, args, settings, promote_if_better, show_progress, actor, retriever, callbacks, stage, base
    )


def _train_gate_promote(
    collection: str,
    examples: list[TrainingExample],
    snapshot_id: str | None,
    eval_source: dict,
    args: RerankerTrainingArgs,
    settings: Settings,
    promote_if_better: bool,
    show_progress: bool,
    actor: str,
    retriever: CollectionRetriever | None = None,
    callbacks: list | None = None,
    stage=lambda message, progress: None,
    base_model: Path | None = None,
) -> LoopReport:
    """Train, register the candidate (recording its training data and evaluation queries), gate, maybe promote.
    `snapshot_id`: the stored training snapshot; None: the examples' own sha256 identifies them."""
    parent = active_version(collection, "reranker", settings)
    with staging_dir(settings) as scratch:
        trained = train_reranker(collection, examples, scratch / "artifact", args, settings, show_progress, retriever, callbacks, base_model)
        version = register_candidate(
            trained.path,
            collection,
            "reranker",
            snapshot_id or trained.snapshot.sha256,
            params=asdict(args) | {"eval": eval_source},
            metrics=trained.metrics,
            parent_id=parent.id if parent else None,
            settings=settings,
        )
    stage(f"candidate {version.id} registered; gating it", 0.88)
    return settle(version, run_gate(version, settings, show_progress), settings, promote_if_better, actor)


def settle(version: VersionInfo, decision: GateDecision, settings: Settings, promote_if_better: bool, actor: str) -> LoopReport:
    """Record a candidate's gate and, when asked and the gate passed, promote it (as `actor`)."""
    record_metrics(version.id, {"gate": gate_record(decision)}, settings)
    promoted = promote_if_better and decision.passed
    if promoted:
        promote(version.id, settings, actor=actor)
    return LoopReport(get_version(version.id, settings), decision, promoted)


def gate_record(decision: GateDecision) -> dict:
    return asdict(decision)
