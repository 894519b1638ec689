"""The reward model: a cross-encoder scoring how well an answer serves its question, as the collection's users and
curators judged answers (feedback/pairs.py: `build_rating_set`). sentence-transformers' CrossEncoderTrainer fits a
fresh one-logit head on the bundled MiniLM weights with binary cross-entropy (positives weighted by the
not-preferred/preferred ratio; each rating once: the weights it records are not trained on); a registry version of
kind `reward` holds it.

Its gate: accuracy on the held-out questions' feedback, each item scored right (1), wrong (0) or tied (0.5): a
pair is right when the chosen answer scores above the rejected one, a rating when the score is above 0.5 exactly for
preferred answers. The candidate must beat what serves (the active reward model on the same items, or chance: 0.5
an item) with the gain's paired bootstrap interval above CITELOOP_GATE_MIN_CI_LOWER (with CITELOOP_GATE_REQUIRE_CI),
on at least MIN_GATE_ITEMS items.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from citeloop.config import Settings, get_settings
from citeloop.modelpkg import MINILM
from citeloop.registry import GateDecision, VersionInfo, active_version, paired_bootstrap, register_candidate, staging_dir, verified_path
from feedback.trainset import RatedAnswer, TrainingSetError

CROSS_ENCODER_DIR = "cross-encoder"
TRAINING_FILE = "training.json"
CHANCE = 0.5
# Fewer held-out items do not promote: a handful scored right would pass against chance with an interval of zero width.
MIN_GATE_ITEMS = 10


@dataclass(frozen=True)
class RewardTrainingArgs:
    epochs: int = 3
    max_steps: int = -1  # > 0 caps training
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_tokens: int = 256  # question + answer; the answer's tail is cut
    seed: int = 0

    def as_params(self) -> dict:
        return asdict(self)


class RewardModel:
    """A trained reward model's cross-encoder: `score` is the probability that an answer is preferred."""

    def __init__(self, path: Path):
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model = CrossEncoder(str(path / CROSS_ENCODER_DIR), local_files_only=True, device="cpu")

    def score(self, question_answers: Sequence[tuple[str, str]]) -> list[float]:
        import torch

        if not question_answers:
            return []
        scores = self.model.predict(list(question_answers), activation_fn=torch.nn.Sigmoid(), batch_size=32, show_progress_bar=False)
        return [float(s) for s in scores]


def train_reward_model(rows: Sequence[RatedAnswer], out_dir: Path, args: RewardTrainingArgs = RewardTrainingArgs(), callbacks: Sequence = ()) -> dict:
    """Fit the cross-encoder on the ratings; writes it to `out_dir`/cross-encoder and returns the trainer's figures."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    preferred = sum(r.label for r in rows)
    if not 0 < preferred < len(rows):
        raise TrainingSetError(f"{len(rows)} ratings, {preferred} of them preferred: a reward model needs answers of both kinds")
    started = time.perf_counter()
    set_seed(args.seed)
    model = CrossEncoder(str(MINILM.verified_path()), num_labels=1, max_length=args.max_tokens, device=None)
    dataset = Dataset.from_dict({"question": [r.query for r in rows], "answer": [r.answer for r in rows], "label": [float(r.label) for r in rows]})
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(rows) - preferred) / preferred))
    with tempfile.TemporaryDirectory(prefix="citeloop-reward-") as scratch:
        training_args = CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_ratio=0.1,
            seed=args.seed,
            data_seed=args.seed,
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=list(callbacks))
        result = trainer.train()
    trainer.model.save_pretrained(str(out_dir / CROSS_ENCODER_DIR))
    return {
        "ratings": len(rows),
        "preferred": preferred,
        "steps": result.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


def item_scores(score, ratings: Sequence[RatedAnswer], pairs: Sequence[tuple]) -> dict[str, float]:
    """Per held-out item, 1 when `score` (question-answer pairs -> scores) judges it right, 0 when wrong, 0.5 on a tie.
    `pairs`: (question, chosen, rejected, ...)."""
    out = {}
    if pairs:
        flat = score([(p[0], answer) for p in pairs for answer in (p[1], p[2])])
        for i in range(len(pairs)):
            better, worse = flat[2 * i], flat[2 * i + 1]
            out[f"pair-{i}"] = 1.0 if better > worse else 0.5 if better == worse else 0.0
    for i, (rating, s) in enumerate(zip(ratings, score([(r.query, r.answer) for r in ratings]))):
        out[f"rating-{i}"] = 0.5 if s == CHANCE else float((s > CHANCE) == bool(rating.label))
    return out


def accuracy_report(items: dict[str, float], ratings: Sequence[RatedAnswer]) -> dict:
    """Accuracy overall, on pairs, on ratings and on the ratings that are votes (None where there are none): the
    gate record of each side."""

    def mean(keys: list[str]) -> float | None:
        return round(sum(items[k] for k in keys) / len(keys), 4) if keys else None

    pair_keys = [k for k in items if k.startswith("pair-")]
    rating_keys = [f"rating-{i}" for i in range(len(ratings))]
    vote_keys = [f"rating-{i}" for i, r in enumerate(ratings) if r.signal == "vote"]
    return {
        "accuracy": mean(list(items)), "items": len(items),
        "pair_accuracy": mean(pair_keys), "pairs": len(pair_keys),
        "rating_accuracy": mean(rating_keys), "ratings": len(rating_keys),
        "vote_accuracy": mean(vote_keys), "votes": len(vote_keys),
    }


def reward_gate_decision(
    candidate: dict[str, float], baseline: dict[str, float], ratings: Sequence[RatedAnswer], baseline_name: str, settings: Settings
) -> GateDecision:
    """Candidate and baseline: `item_scores` of the same held-out items (`ratings` the rated ones among them)."""
    mine, theirs = accuracy_report(candidate, ratings), accuracy_report(baseline, ratings)
    if len(candidate) < MIN_GATE_ITEMS:
        why = f"{len(candidate)} held-out items (pairs and ratings) to score the reward model on; at least {MIN_GATE_ITEMS} are needed"
        return GateDecision(False, why, mine, theirs, baseline_name)
    gain, low, high = paired_bootstrap(candidate, baseline, settings.gate_confidence)
    head = (
        f"accuracy {mine['accuracy']:.4f} vs {baseline_name} {theirs['accuracy']:.4f} on {len(candidate)} held-out items: "
        f"gain {gain:+.4f} ({settings.gate_confidence:.0%} CI {low:+.4f} .. {high:+.4f})"
    )
    passed = gain > 0 and (not settings.gate_require_ci or low > settings.gate_min_ci_lower)  # a NaN bound fails
    why = "" if passed else (" is not a gain" if gain <= 0 else f": the interval's lower bound is not above {settings.gate_min_ci_lower:+.4f}")
    return GateDecision(
        passed, head + why, mine, theirs, baseline_name, gain=round(gain, 4), ci_low=round(low, 4), ci_high=round(high, 4), confidence=settings.gate_confidence
    )


def held_out_items(version: VersionInfo) -> tuple[list[RatedAnswer], list[tuple]]:
    """The ratings and pairs (question, chosen, rejected, event ids) a version's gate scores."""
    held = version.params.get("eval") or {}
    ratings = [RatedAnswer(**(r | {"event_ids": tuple(r["event_ids"])})) for r in held.get("ratings", ())]
    return ratings, [(q, chosen, rejected, tuple(ids)) for q, chosen, rejected, ids in held.get("pairs", ())]


def run_reward_gate(version: VersionInfo, settings: Settings | None = None, show_progress: bool = False) -> GateDecision:
    """The candidate against the collection's active reward model (or chance) on the version's held-out items."""
    settings = settings or get_settings()
    ratings, pairs = held_out_items(version)
    candidate = item_scores(RewardModel(verified_path(version)).score, ratings, pairs)
    serving = active_version(version.collection, "reward", settings)
    if serving is None or serving.id == version.id:
        return reward_gate_decision(candidate, {k: CHANCE for k in candidate}, ratings, "chance", settings)
    baseline = item_scores(RewardModel(verified_path(serving)).score, ratings, pairs)
    return reward_gate_decision(candidate, baseline, ratings, f"active reward model {serving.id}", settings)


def train_reward_from_feedback(
    collection: str,
    args: RewardTrainingArgs | None = None,
    settings: Settings | None = None,
    promote_if_better: bool = False,
    actor: str = "cli",
    reporter=None,
    until: datetime | None = None,
):
    """Ratings from the collection's stored feedback (a snapshot), a reward model trained on them, registered with
    the active reward model (if any) as parent, gated; `promote_if_better`: promoted when the gate passed."""
    from citeloop.db import session_scope
    from feedback.evalsets import uploaded_query_keys
    from feedback.pairs import build_rating_set
    from feedback.pii import feedback_scrubber
    from feedback.reranker_loop import settle
    from feedback.trainset import save_snapshot
    from retrieval.retriever import CollectionRetriever

    stage = reporter.stage if reporter else (lambda message, progress: None)
    settings = settings or get_settings()
    args = args or RewardTrainingArgs()
    stage("rating answers from stored feedback", 0.02)
    scrub = feedback_scrubber(CollectionRetriever(collection, settings))
    with session_scope(settings) as session:
        ratings = build_rating_set(session, collection, scrub, settings.eval_holdout, settings.training_min_pairs, uploaded_query_keys(session, collection), until)
        if not (ratings.eval_rows or ratings.eval_pairs):
            raise TrainingSetError(f"no rated answer of collection '{collection}' fell in the evaluation share: the gate has nothing to score; give more feedback")
        snapshot = save_snapshot(session, collection, "reward", ratings)
    stage(f"snapshot {snapshot.id}: {snapshot.counts['rows']} ratings; {len(ratings.eval_rows)} held-out ratings, {len(ratings.eval_pairs)} pairs", 0.05)
    parent = active_version(collection, "reward", settings)
    with staging_dir(settings) as scratch:
        artifact = scratch / "artifact"
        figures = train_reward_model(snapshot.rows, artifact, args, [reporter.training_callback(0.08, 0.85)] if reporter else [])
        held = {"ratings": [json.loads(json.dumps(asdict(r))) for r in ratings.eval_rows], "pairs": [[*p[:3], list(p[3])] for p in ratings.eval_pairs]}
        (artifact / TRAINING_FILE).write_text(json.dumps({"args": args.as_params(), "snapshot_id": snapshot.id, "metrics": figures}, indent=2))
        version = register_candidate(
            artifact, collection, "reward", snapshot.id,
            params=args.as_params() | {"eval": held | {"snapshot": snapshot.id, "counts": snapshot.counts, "dropped": snapshot.dropped}},
            metrics=figures, parent_id=parent.id if parent else None, settings=settings,
        )
    stage(f"candidate {version.id} registered; gating it on its held-out feedback", 0.9)
    return settle(version, run_reward_gate(version, settings), settings, promote_if_better, actor)
