"""Contrastive training of the cross-encoder reranker with sentence-transformers' CrossEncoderTrainer.

examples -> (query, positive, hard negatives mined by `mine_hard_negatives` over the collection's own chunk
embeddings, random negatives) -> CrossEncoderTrainer with validation-based best-checkpoint selection ->
a score combiner fitted on the validation candidates -> an artifact directory for the registry.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

import citeloop  # noqa: F401  (offline switches first)
from citeloop.config import Settings, get_settings
from citeloop.modelpkg import MINILM
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
class RerankerTrainingArgs:
    loss: Literal["mnrl", "cached-mnrl", "bce"] = "mnrl"
    epochs: int = 4
    learning_rate: float = 1e-4
    head_learning_rate: float | None = 1e-3  # the fresh classification head may learn faster than the encoder
    # Frozen parameters get no gradients or optimiser state: the 11.7M-parameter embedding table is half the model,
    # and freezing it made a CPU step 3.6x faster (bench/README.md) without touching what a reranker must learn.
    freeze_embeddings: bool = True
    frozen_layers: int = 0  # bottom transformer layers also kept fixed
    bf16: bool = False  # bfloat16 autocast: faster on GPUs and AMX CPUs, slower on AVX512-BF16 alone
    # Training truncation of query + chunk; serving scores at `rerank_max_tokens` (256). At 192 a 2-core step took
    # ~11 s vs ~13 s at 256 (bench/README.md); what is cut is the chunk's tail (query and title come first).
    max_tokens: int = 192
    batch_size: int = 16
    hard_negatives: int = 4  # mined from the collection, nearest first, near-duplicates of the positive removed
    random_negatives: int = 1
    # MNRL: other queries' passages scored per query (None: all). Hard and random negatives are already in each
    # row; 4 in-batch negatives made a CPU step 4x slower than 1 (memory-bound batches of 160 pairs).
    in_batch_negatives: int | None = 1
    near_duplicate_cosine: float = 0.95  # a candidate this close to the positive is not a negative
    bce_pos_weight: float | None = None  # default: negatives per positive
    validation_fraction: float = 0.15
    max_steps: int = -1  # > 0 caps training (smoke runs)
    seed: int = 12


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
    while len(chosen) < args.hard_negatives + args.random_negatives:
        row = rng.randrange(len(rows))
        if usable(row) and row not in chosen:
            chosen.append(row)
    return chosen


def build_training_rows(
    examples: list[TrainingExample], retriever: CollectionRetriever, args: RerankerTrainingArgs, cache_dir: Path
) -> list[dict]:
    """One row per (query, positive): query, positive, negative_1..n (explicit negatives first, then mined)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    rows = retriever.chunks()
    row_of = {r.chunk_id: i for i, r in enumerate(rows)}
    texts = [index_text(r.title, r.text) for r in rows]
    vectors = retriever.vectors()
    embedder = load_embedder(retriever.settings)
    pairs = [(e, row_of[p.chunk_id]) for e in examples for p in e.positives if p.chunk_id in row_of]
    if not pairs:
        raise TrainingDataError("none of the examples' positive chunks is in the collection's index")
    # The collection's vectors are exactly what the embedder gives these texts: hand them to the miner's
    # cache instead of embedding the corpus a second time (a different cache key just means a recompute).
    _seed_miner_cache(cache_dir, embedder.model, texts, vectors)
    depth = 4 * args.hard_negatives + 8
    mined = mine_hard_negatives(
        Dataset.from_dict({"query": [e.query for e, _ in pairs], "positive": [texts[p] for _, p in pairs]}),
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
        negatives = negatives[: args.hard_negatives + args.random_negatives]
        out.append({"query": example.query, "positive": texts[positive_row]} | {f"negative_{i + 1}": texts[r] for i, r in enumerate(negatives)})
    return out


def _seed_miner_cache(cache_dir: Path, model, texts: list[str], vectors: np.ndarray) -> None:
    import hashlib

    cache_dir.mkdir(parents=True, exist_ok=True)
    name = model.model_card_data.base_model or ""
    key = hashlib.sha256(repr((name, None, None, texts)).encode(), usedforsecurity=False).hexdigest()
    np.save(cache_dir / f"corpus_embeddings_{key}.npy", vectors)


def _freeze(model, embeddings: bool, layers: int) -> None:
    patterns = ([r"\.embeddings\."] if embeddings else []) + [rf"\.encoder\.layer\.{i}\." for i in range(layers)]
    if not patterns:
        return
    frozen = re.compile("|".join(patterns))
    for name, parameter in model.named_parameters():
        if frozen.search(name):
            parameter.requires_grad = False


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
) -> TrainedReranker:
    args = args or RerankerTrainingArgs()
    settings = settings or get_settings()
    if len(examples) < MIN_EXAMPLES:
        raise TrainingDataError(f"{len(examples)} training examples; at least {MIN_EXAMPLES} are needed")
    snapshot = ExampleSnapshot(tuple(sorted(examples, key=lambda e: e.query_id)))
    retriever = retriever if retriever is not None else CollectionRetriever(collection, settings)
    if len(retriever) < args.hard_negatives + args.random_negatives + 2:
        raise TrainingDataError(f"collection '{collection}' has {len(retriever)} chunks: too few to draw negatives from")
    train_examples, val_examples = split_examples(list(snapshot.examples), args.validation_fraction, args.seed)
    work = Path(tempfile.mkdtemp(prefix="citeloop-train-"))
    try:
        return _train(snapshot, train_examples, val_examples, retriever, output_dir, work, args, settings, show_progress)
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
) -> TrainedReranker:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import (
        BinaryCrossEntropyLoss,
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import set_seed

    train_rows = build_training_rows(train_examples, retriever, args, work / "miner-cache")
    samples = validation_samples(val_examples, retriever, settings.rerank_top_n)

    set_seed(args.seed)
    model = CrossEncoder(str(MINILM.verified_path()), num_labels=1, max_length=args.max_tokens, device=None)
    _freeze(model, args.freeze_embeddings, args.frozen_layers)
    n_neg = args.hard_negatives + args.random_negatives
    if args.loss == "bce":
        pairs = {"query": [], "passage": [], "label": []}
        for row in train_rows:
            for key, label in [("positive", 1.0)] + [(f"negative_{i + 1}", 0.0) for i in range(n_neg)]:
                if key in row:
                    pairs["query"].append(row["query"])
                    pairs["passage"].append(row[key])
                    pairs["label"].append(label)
        train_dataset = Dataset.from_dict(pairs)
        import torch

        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(args.bce_pos_weight or float(n_neg)))
    else:
        columns = ["query", "positive"] + [f"negative_{i + 1}" for i in range(n_neg)]
        train_dataset = Dataset.from_dict({c: [row[c] for row in train_rows] for c in columns})
        loss_class = CachedMultipleNegativesRankingLoss if args.loss == "cached-mnrl" else MultipleNegativesRankingLoss
        loss = loss_class(model, num_negatives=args.in_batch_negatives)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="val", batch_size=32, show_progress_bar=False)
    training_args = CrossEncoderTrainingArguments(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        seed=args.seed,
        data_seed=args.seed,
        eval_strategy="epoch",
        # Evaluations from epoch 2 on (a ~1 min pass each on 2 cores): after one epoch the fresh head is never the best.
        eval_delay=min(2, args.epochs),
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_val_ndcg@10",
        greater_is_better=True,
        logging_steps=10,
        bf16=args.bf16,
        learning_rate_mapping={r".*classifier\..*": args.head_learning_rate} if args.head_learning_rate else {},
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
    )
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss, evaluator=evaluator)
    result = trainer.train()
    best = trainer.state.best_metric if trainer.state.best_metric is not None else evaluator(trainer.model)["val_ndcg@10"]

    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(output_dir / CROSS_ENCODER_DIR))
    # A provisional combiner (cross-encoder only) so the saved model can be loaded to fit the real one.
    ScoreCombiner((1.0, 0.0, 0.0, 0.0)).save(output_dir / COMBINER_FILE)
    reranker = CrossEncoderReranker(output_dir, settings)
    combiner = fit_combiner(reranker, val_examples, retriever, settings.rerank_top_n, args.seed)
    combiner.save(output_dir / COMBINER_FILE)
    snapshot.save(output_dir / SNAPSHOT_FILE)
    metrics = {
        "train_examples": len(train_examples),
        "train_rows": len(train_rows),
        "validation_queries": len(samples),
        "steps": result.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1),
        "val_ndcg@10": round(float(best), 4),  # the cross-encoder alone, best checkpoint
        "combiner": dict(zip(FEATURES, combiner.weights)),
    }
    (output_dir / TRAINING_FILE).write_text(json.dumps({"args": asdict(args), "snapshot_id": snapshot.sha256, "metrics": metrics}, indent=2))
    return TrainedReranker(output_dir, snapshot, metrics)
