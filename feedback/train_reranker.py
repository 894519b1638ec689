"""Contrastive training of the cross-encoder reranker with sentence-transformers' CrossEncoderTrainer.

examples -> (query, positive, hard negatives mined by `mine_hard_negatives` over the collection's own chunk
embeddings, random negatives) -> CrossEncoderTrainer with validation-based best-checkpoint selection ->
a score combiner fitted on the validation candidates -> an artifact directory for the registry.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from citeloop.modelpkg import MINILM
from feedback.cross_encoder_trainer import RerankerTrainingArgs, fit_cross_encoder
from feedback.examples import ExampleSnapshot, TrainingExample
from retrieval.embedder import load_embedder
from retrieval.ingest import index_text
from retrieval.rerank import COMBINER_FILE, CROSS_ENCODER_DIR, FEATURES, CrossEncoderReranker, ScoreCombiner, stage_features
from retrieval.retriever import CollectionRetriever

SNAPSHOT_FILE = "examples.jsonl"
TRAINING_FILE = "training.json"
MIN_EXAMPLES = 20  # below this a validation split and a gate are noise


class TrainingDataError(ValueError):
    pass


@dataclass
class TrainedReranker:
    path: Path  # artifact directory: cross-encoder/, combiner.json, examples.jsonl, training.json
    snapshot: ExampleSnapshot
    metrics: dict


def split_examples(examples: list[TrainingExample], fraction: float, seed: int) -> tuple[list[TrainingExample], list[TrainingExample]]:
    shuffled = sorted(examples, key=lambda e: e.query_id)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * fraction))
    return shuffled[n_val:], shuffled[:n_val]


def _negatives(
    example: TrainingExample,
    positive_row: int,
    mined_rows: list[int],
    rows,
    vectors: np.ndarray,
    args: RerankerTrainingArgs,
    rng: random.Random,
    positive_rows: set[int],
) -> list[int]:
    excluded_docs = set(example.exclude_doc_ids)

    def usable(row: int) -> bool:
        return (
            row not in positive_rows
            and rows[row].doc_id not in excluded_docs
            and float(vectors[row] @ vectors[positive_row]) < args.near_duplicate_cosine
        )

    chosen: list[int] = []
    for row in mined_rows:
        if len(chosen) == args.hard_negatives:
            break
        if usable(row) and row not in chosen:
            chosen.append(row)
    while len(chosen) < args.negatives_per_row:
        row = rng.randrange(len(rows))
        if usable(row) and row not in chosen:
            chosen.append(row)
    return chosen


MAX_REPEATS = 3


def positive_repeats(weight: float, lightest: float) -> int:
    """How many training rows a positive gets: its weight relative to the set's lightest positive, capped (a
    curator's mark counts about three times a reliable voter's; a set of equal weights gets one row each)."""
    return max(1, min(MAX_REPEATS, round(weight / lightest)))


def build_training_rows(
    examples: list[TrainingExample], retriever: CollectionRetriever, args: RerankerTrainingArgs, cache_dir: Path
) -> list[dict]:
    """Rows of query, positive, negative_1..n (explicit negatives first, heaviest first, then mined): one per
    (query, positive) for its `max_positives_per_query` heaviest positives, repeated by the positive's weight
    (`positive_repeats`)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    rows = retriever.chunks()
    row_of = {r.chunk_id: i for i, r in enumerate(rows)}
    texts = [index_text(r.title, r.text) for r in rows]
    vectors = retriever.vectors()
    embedder = load_embedder(retriever.settings)
    trained = [
        (e, sorted((p for p in e.positives if p.chunk_id in row_of), key=lambda p: -p.weight)[: args.max_positives_per_query])
        for e in examples
    ]
    # Repeats are relative to the lightest positive that is trained, not to one the cap left out.
    lightest = min((p.weight for _, kept in trained for p in kept), default=1.0)
    pairs = [(e, row_of[p.chunk_id]) for e, kept in trained for p in kept for _ in range(positive_repeats(p.weight, lightest))]
    if not pairs:
        raise TrainingDataError("none of the examples' positive chunks is in the collection's index")
    # The collection's vectors are exactly what the embedder gives these texts: hand them to the miner's
    # cache instead of embedding the corpus a second time (a different cache key just means a recompute).
    _seed_miner_cache(cache_dir, embedder.model, texts, vectors)
    depth = 4 * args.hard_negatives + 8
    unique = list(dict.fromkeys(pairs))
    mined = mine_hard_negatives(
        Dataset.from_dict({"query": [e.query for e, _ in unique], "positive": [texts[p] for _, p in unique]}),
        embedder.model,
        corpus=texts,
        range_max=depth,
        num_negatives=depth,
        sampling_strategy="top",
        output_format="labeled-list",
        use_faiss=True,
        cache_folder=str(cache_dir),
        verbose=False,
    )
    text_rows: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        text_rows.setdefault(t, []).append(i)
    mined_by_query: dict[str, list[int]] = {}
    query_col, docs_col, labels_col = mined.column_names[:3]  # labeled-list: (anchor, [documents], [labels])
    for item in mined:
        candidates = [text_rows[t][0] for t, label in zip(item[docs_col], item[labels_col]) if label == 0 and t in text_rows]
        mined_by_query.setdefault(item[query_col], candidates)
    rng = random.Random(args.seed)
    out = []
    for example, positive_row in pairs:
        positive_rows = {row_of[p.chunk_id] for p in example.positives if p.chunk_id in row_of}
        explicit = [row_of[n.chunk_id] for n in example.negatives if n.chunk_id in row_of]
        negatives = (explicit + _negatives(example, positive_row, mined_by_query.get(example.query, []), rows, vectors, args, rng, positive_rows))
        negatives = negatives[: args.negatives_per_row]
        out.append({"query": example.query, "positive": texts[positive_row]} | {f"negative_{i + 1}": texts[r] for i, r in enumerate(negatives)})
    return out


def _seed_miner_cache(cache_dir: Path, model, texts: list[str], vectors: np.ndarray) -> None:
    import hashlib

    cache_dir.mkdir(parents=True, exist_ok=True)
    name = model.model_card_data.base_model or ""
    key = hashlib.sha256(repr((name, None, None, texts)).encode(), usedforsecurity=False).hexdigest()
    np.save(cache_dir / f"corpus_embeddings_{key}.npy", vectors)


def validation_samples(examples: list[TrainingExample], retriever: CollectionRetriever, top_n: int) -> list[dict]:
    """Reranking samples as served: the hybrid top-N of each validation query, positives wherever they rank."""
    rows = {r.chunk_id: r for r in retriever.chunks()}
    samples = []
    for e in examples:
        hits = retriever.search(e.query, k=top_n, mode="hybrid")
        positives = [index_text(rows[p.chunk_id].title, rows[p.chunk_id].text) for p in e.positives if p.chunk_id in rows]
        if positives:
            samples.append({"query": e.query, "positive": positives, "documents": [index_text(h.title, h.text) for h in hits]})
    return samples


def fit_combiner(
    reranker: CrossEncoderReranker, examples: list[TrainingExample], retriever: CollectionRetriever, top_n: int, seed: int
) -> ScoreCombiner:
    """Logistic regression of relevance on `stage_features` of each validation query's hybrid top-N. Of feedback,
    an unjudged candidate counts as irrelevant: fitted on the judged chunks alone, the combiner leaned on a young
    cross-encoder and scored 0.666 against 0.688 at 100 SciFact questions (bench/README.md)."""
    features, labels = [], []
    for e in examples:
        hits = retriever.search(e.query, k=top_n, mode="hybrid")
        relevant = {p.chunk_id for p in e.positives}
        features.append(stage_features(hits, reranker.logits(e.query, hits), retriever.settings.rrf_k))
        labels.extend(int(h.chunk_id in relevant or h.doc_id in e.exclude_doc_ids) for h in hits)
    labels_array = np.array(labels)
    if labels_array.min(initial=1) == labels_array.max(initial=0):
        raise TrainingDataError("validation candidates are all relevant or all irrelevant: cannot fit the score combiner")
    return ScoreCombiner.fit(np.vstack(features), labels_array, seed)


def train_reranker(
    collection: str,
    examples: list[TrainingExample],
    output_dir: Path,
    args: RerankerTrainingArgs | None = None,
    settings: Settings | None = None,
    show_progress: bool = False,
    retriever: CollectionRetriever | None = None,  # the caller's, when it already loaded the collection
    callbacks: list | None = None,  # transformers TrainerCallbacks: a job's progress and cancellation
    base_model: Path | None = None,  # a warm-start cross-encoder (feedback/bases.py); default the bare MiniLM
) -> TrainedReranker:
    args = args or RerankerTrainingArgs()
    settings = settings or get_settings()
    if len(examples) < MIN_EXAMPLES:
        raise TrainingDataError(f"{len(examples)} training examples; at least {MIN_EXAMPLES} are needed")
    snapshot = ExampleSnapshot(tuple(sorted(examples, key=lambda e: e.query_id)))
    retriever = retriever if retriever is not None else CollectionRetriever(collection, settings)
    if len(retriever) < args.negatives_per_row + 2:
        raise TrainingDataError(f"collection '{collection}' has {len(retriever)} chunks: too few to draw negatives from")
    train_examples, val_examples = split_examples(list(snapshot.examples), args.validation_fraction, args.seed)
    work = Path(tempfile.mkdtemp(prefix="citeloop-train-"))
    try:
        base = base_model or MINILM.verified_path()
        return _train(snapshot, train_examples, val_examples, retriever, output_dir, work, args, settings, show_progress, callbacks, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # checkpoints: the best one is saved into the artifact


def _train(
    snapshot: ExampleSnapshot,
    train_examples: list[TrainingExample],
    val_examples: list[TrainingExample],
    retriever: CollectionRetriever,
    output_dir: Path,
    work: Path,
    args: RerankerTrainingArgs,
    settings: Settings,
    show_progress: bool,
    callbacks: list | None,
    base_model: Path,
) -> TrainedReranker:
    train_rows = build_training_rows(train_examples, retriever, args, work / "miner-cache")
    samples = validation_samples(val_examples, retriever, settings.rerank_top_n)
    fitted = fit_cross_encoder(train_rows, samples, args, base_model, work, show_progress, callbacks)

    output_dir.mkdir(parents=True, exist_ok=True)
    fitted.model.save_pretrained(str(output_dir / CROSS_ENCODER_DIR))
    # A provisional combiner (cross-encoder only) so the saved model can be loaded to fit the real one.
    ScoreCombiner.only("cross_encoder_z").save(output_dir / COMBINER_FILE)
    reranker = CrossEncoderReranker(output_dir, settings)
    combiner = fit_combiner(reranker, val_examples, retriever, settings.rerank_top_n, args.seed)
    combiner.save(output_dir / COMBINER_FILE)
    snapshot.save(output_dir / SNAPSHOT_FILE)
    metrics = {
        "train_examples": len(train_examples),
        "train_rows": len(train_rows),
        "validation_queries": len(samples),
        "steps": fitted.steps,
        "train_loss": round(fitted.train_loss, 4),
        "train_seconds": round(fitted.train_seconds, 1),
        "train_device": fitted.device,
        "train_bf16": fitted.bf16,
        "val_ndcg@10": round(fitted.val_ndcg, 4),  # the cross-encoder alone, best checkpoint
        "combiner": dict(zip(FEATURES, combiner.weights)),
    }
    (output_dir / TRAINING_FILE).write_text(json.dumps({"args": asdict(args), "snapshot_id": snapshot.sha256, "metrics": metrics}, indent=2))
    return TrainedReranker(output_dir, snapshot, metrics)
