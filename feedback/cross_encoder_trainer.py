"""The cross-encoder fit itself: training rows + validation samples -> the best checkpoint of a
`CrossEncoderTrainer` run. Kept free of citeloop's storage and retrieval imports (only the CPU-flag reader of
citeloop.hardware, standard library alone) so the same code runs wherever sentence-transformers does (the GPU
check in bench/gpu_check.py imports it alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from citeloop.hardware import NATIVE_BF16, cpu_flags


@dataclass
class RerankerTrainingArgs:
    loss: Literal["mnrl", "cached-mnrl", "bce"] = "mnrl"
    epochs: int = 4
    # Best held-out nDCG@10 of 5e-5..4e-4 at equal steps, +0.017 over 1e-4 (GPU sweep, bench/README.md).
    learning_rate: float = 3e-4
    head_learning_rate: float | None = 1e-3  # the fresh classification head may learn faster than the encoder
    # Frozen parameters get no gradients or optimiser state: the 11.7M-parameter embedding table is half the model,
    # and freezing it made a CPU step 3.6x faster (bench/README.md) without touching what a reranker must learn.
    freeze_embeddings: bool = True
    frozen_layers: int = 0  # bottom transformer layers also kept fixed
    # bfloat16 autocast; None: on with a bf16-capable CUDA GPU, and on a CPU with native bf16 where a probe step runs
    # faster in bf16 than in fp32 (1.45x on Zen 4; an Intel AVX512-BF16 Xeon without AMX was slower).
    bf16: bool | None = None
    # Training truncation of query + chunk; serving scores at `rerank_max_tokens` (160). At 192 a 2-core step took
    # ~11 s vs ~13 s at 256 (bench/README.md); what is cut is the chunk's tail (query and title come first). Training
    # at 160 too was slower to converge and scored 0.7142 held-out vs 0.7279 at 192 (bench/README.md).
    max_tokens: int = 192
    batch_size: int = 16
    # Training rows per query, its heaviest positives first: a judge often marks several chunks of one document,
    # each a row as costly as another query's, for little that is new (COVID-QA: 5.3 of a question's top 10).
    max_positives_per_query: int | None = 2
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

    @property
    def negatives_per_row(self) -> int:
        return self.hard_negatives + self.random_negatives


@dataclass
class FittedCrossEncoder:
    model: object  # sentence_transformers.CrossEncoder, the best validation checkpoint
    steps: int
    train_loss: float
    train_seconds: float
    val_ndcg: float  # nDCG@10 of the cross-encoder alone on the validation samples
    device: str
    bf16: bool  # trained under bfloat16 autocast


def freeze(model, embeddings: bool, layers: int) -> None:
    patterns = ([r"\.embeddings\."] if embeddings else []) + [rf"\.encoder\.layer\.{i}\." for i in range(layers)]
    if not patterns:
        return
    frozen = re.compile("|".join(patterns))
    for name, parameter in model.named_parameters():
        if frozen.search(name):
            parameter.requires_grad = False


def cpu_bf16_is_faster(model, loss, batch) -> bool:
    """Time one forward + backward of `loss` on a training batch in fp32 and under bf16 autocast (after a warm-up
    of each): CPUs differ too much (native bf16 units or emulation) for their flags to say which is faster."""
    import time

    import torch

    columns = batch.column_names
    inputs = [batch[c] for c in columns if c != "label"]
    labels = torch.tensor(batch["label"]) if "label" in columns else None

    def step() -> float:
        start = time.perf_counter()
        value = loss(inputs, labels)
        value.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    model.train()
    timings = {}
    for use_bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            step()
            timings[use_bf16] = step()
    return timings[True] < 0.8 * timings[False]  # a marginal gain is not worth bf16's rounding


def _rows_repeat(train_rows: list[dict]) -> bool:
    return len({(r["query"], r["positive"]) for r in train_rows}) < len(train_rows)


def fit_cross_encoder(
    train_rows: list[dict],
    samples: list[dict],
    args: RerankerTrainingArgs,
    base_model: Path,
    work: Path,
    show_progress: bool = False,
    callbacks: list | None = None,
) -> FittedCrossEncoder:
    """`train_rows`: {query, positive, negative_1..n}; `samples`: CrossEncoderRerankingEvaluator samples
    ({query, positive: [...], documents: [...]}). A fresh one-logit head on `base_model`; CUDA when present.
    `callbacks`: transformers TrainerCallbacks (progress, cancellation)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import (
        BinaryCrossEntropyLoss,
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from transformers import set_seed

    set_seed(args.seed)
    model = CrossEncoder(str(base_model), num_labels=1, max_length=args.max_tokens, device=None)
    freeze(model, args.freeze_embeddings, args.frozen_layers)
    n_neg = args.negatives_per_row
    if args.loss == "bce":
        pairs = {"query": [], "passage": [], "label": []}
        for row in train_rows:
            for key, label in [("positive", 1.0)] + [(f"negative_{i + 1}", 0.0) for i in range(n_neg)]:
                if key in row:
                    pairs["query"].append(row["query"])
                    pairs["passage"].append(row[key])
                    pairs["label"].append(label)
        train_dataset = Dataset.from_dict(pairs)
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(args.bce_pos_weight or float(n_neg)))
    else:
        columns = ["query", "positive"] + [f"negative_{i + 1}" for i in range(n_neg)]
        train_dataset = Dataset.from_dict({c: [row[c] for row in train_rows] for c in columns})
        loss_class = CachedMultipleNegativesRankingLoss if args.loss == "cached-mnrl" else MultipleNegativesRankingLoss
        loss = loss_class(model, num_negatives=args.in_batch_negatives)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="val", batch_size=32, show_progress_bar=False)
    if args.bf16 is not None:
        bf16 = args.bf16
    elif torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
    else:
        # Without native bf16 instructions autocast emulates it (many times slower): only probe where they exist.
        bf16 = bool(cpu_flags() & NATIVE_BF16) and cpu_bf16_is_faster(model, loss, train_dataset.select(range(min(4, len(train_dataset)))))
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
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told it runs on the CPU
        learning_rate_mapping={r".*classifier\..*": args.head_learning_rate} if args.head_learning_rate else {},
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        # A weighted positive repeats its row: a batch must not hold both copies, or one is the other's in-batch negative.
        batch_sampler=BatchSamplers.NO_DUPLICATES if _rows_repeat(train_rows) else BatchSamplers.BATCH_SAMPLER,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=training_args, train_dataset=train_dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    )
    result = trainer.train()
    best = trainer.state.best_metric if trainer.state.best_metric is not None else evaluator(trainer.model)["val_ndcg@10"]
    return FittedCrossEncoder(
        trainer.model,
        result.global_step,
        float(result.training_loss),
        float(result.metrics.get("train_runtime", 0.0)),
        float(best),
        str(trainer.model.device),
        bf16,
    )
