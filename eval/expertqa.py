"""ExpertQA (Malaviya et al., 2024) as real human preferences for the reward model: experts revised the answers
systems gave to their questions and rated each answer's usefulness.

Ratings: a revised answer is preferred (1); the original is preferred when the expert left it as it was (whitespace
aside) and not preferred (0) when they changed it. Answers are compared with their whitespace collapsed (revisions
put each claim on its own line: a model must not learn line breaks). Questions are split by `is_holdout`; the
reward model trains on the rest and is scored on the held-out questions: pair accuracy (the revision scored above
the original it revises), with its paired bootstrap interval against chance, and how well its score of the original
answers ranks those the experts found useful above the others (ROC AUC).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citeloop.config import get_settings
from feedback.examples import is_holdout, query_key
from feedback.trainset import RatedAnswer

FILES = ("rand_val.jsonl", "domain_val.jsonl")  # the released long-form QA validation splits (overlapping questions)
USEFUL = "Useful"


@dataclass(frozen=True)
class ExpertAnswer:
    question: str
    system: str
    original: str
    revised: str
    usefulness: str  # Useful | Partially useful | Not useful at all

    @property
    def revised_differs(self) -> bool:
        return self.revised != self.original


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def read_expertqa(directory: Path, files: Iterable[str] = FILES) -> list[ExpertAnswer]:
    """Every (question, system) answer of the files once; a missing file or a malformed row is a ValueError naming
    the file and line."""
    found: dict[tuple[str, str], ExpertAnswer] = {}
    for name in files:
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path}: no such file (an ExpertQA lfqa split: {', '.join(FILES)})")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for system, answer in row["answers"].items():
                    found.setdefault((row["question"], system), ExpertAnswer(
                        row["question"], system, _collapsed(answer["answer_string"]),
                        _collapsed(answer["revised_answer_string"] or answer["answer_string"]), answer["usefulness"],
                    ))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not an ExpertQA row ({type(exc).__name__}: {exc})") from None
    return list(found.values())


def ratings(answers: Iterable[ExpertAnswer]) -> list[RatedAnswer]:
    out = []
    for a in answers:
        key = query_key(a.question)
        out.append(RatedAnswer(key, a.question, a.revised, 1, 1.0, "curator", f"{a.system}:revised", ()))
        if a.revised_differs:
            out.append(RatedAnswer(key, a.question, a.original, 0, 1.0, "curator", f"{a.system}:original", ()))
    return out


def run_expertqa_reward(directory: Path, holdout: float = 0.3, args=None, files: Iterable[str] = FILES) -> dict:
    """Train a reward model on the ratings of the questions outside the held-out share; score it on the rest."""
    import tempfile

    from sklearn.metrics import roc_auc_score

    from feedback.reward import CHANCE, RewardModel, RewardTrainingArgs, item_scores, reward_gate_decision, train_reward_model

    args = args or RewardTrainingArgs()
    answers = read_expertqa(directory, files)
    held = [a for a in answers if is_holdout(query_key(a.question), holdout)]
    train = [a for a in answers if not is_holdout(query_key(a.question), holdout)]
    if not held or not train:
        raise ValueError(f"holdout {holdout} leaves {len(train)} questions to train on and {len(held)} to test on: both need some")
    with tempfile.TemporaryDirectory(prefix="citeloop-expertqa-") as out:
        figures = train_reward_model(ratings(train), Path(out), args)
        model = RewardModel(Path(out))
        pairs = [(a.question, a.revised, a.original) for a in held if a.revised_differs]
        items = item_scores(model.score, [], pairs)
        decision = reward_gate_decision(items, {k: CHANCE for k in items}, [], "chance", get_settings())
        originals = model.score([(a.question, a.original) for a in held])
    useful = [int(a.usefulness == USEFUL) for a in held]
    return {
        "data": str(directory),
        "questions": {"train": len({a.question for a in train}), "held_out": len({a.question for a in held})},
        "train_ratings": figures["ratings"],
        "train_seconds": figures["train_seconds"],
        "args": args.as_params(),
        "held_out_pairs": len(pairs),
        "pair_accuracy": decision.candidate["pair_accuracy"],
        "pair_accuracy_ci95": [round(CHANCE + decision.ci_low, 4), round(CHANCE + decision.ci_high, 4)] if items else None,
        "usefulness_auc": round(float(roc_auc_score(useful, originals)), 4) if 0 < sum(useful) < len(useful) else None,
        "useful_originals": sum(useful),
        "other_originals": len(useful) - sum(useful),
    }
