"""ExpertQA (Malaviya et al., 2024) as real human preferences: experts revised the answers systems gave to their
questions (citing numbered web evidence) and rated each answer's usefulness.

Ratings: a revised answer is preferred (1); the original is preferred when the expert left it as it was (whitespace
aside) and not preferred (0) when they changed it. Answers are compared with their whitespace collapsed (revisions
put each claim on its own line: a model must not learn line breaks). Questions are split by `is_holdout`; the
reward model trains on the rest and is scored on the held-out questions: pair accuracy (the revision scored above
the original it revises), with its paired bootstrap interval against chance, and how well its score of the original
answers ranks those the experts found useful above the others (ROC AUC).

DPO: each answer's prompt is the serving prompt over the evidence passages it cited, numbered as it cites them
(each shown as its sentences closest to the question, as serving shows compact evidence), so the [n] of the
revised (chosen) and original (rejected) answers point at the sources shown (a number cited with a URL only, no
passage, is not shown). A LoRA adapter trained on the pairs of
the training questions is converted and served by llama.cpp like a generator job's; base and adapter answer the
held-out questions greedily, and the adapter's win rate over the base is counted per question (a tie: half a win)
by the reward model trained on the same training questions, and by token F1 against the experts' revised answer.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from citeloop.config import Settings, get_settings
from feedback.examples import is_holdout, query_key
from feedback.trainset import PairRow, RatedAnswer

FILES = ("rand_val.jsonl", "domain_val.jsonl")  # the released long-form QA validation splits (overlapping questions)
USEFUL = "Useful"
SUPPORT_LABELS = {"Complete": 1, "Incomplete": 0, "Partial": 0}  # an expert's judgement of a claim by its evidence
# A claim's evidence: "[n] URL", then (for the retrieve-and-read systems) the passage, after a blank line.
EVIDENCE = re.compile(r"\[(\d+)\]\s*(\S+)\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class Evidence:
    n: int  # the number the answer cites it by
    url: str
    passage: str


@dataclass(frozen=True)
class ExpertAnswer:
    question: str
    system: str
    original: str
    revised: str
    usefulness: str  # Useful | Partially useful | Not useful at all
    evidence: tuple[Evidence, ...] = ()  # the cited passages, by number (URL-only evidence left out)

    @property
    def revised_differs(self) -> bool:
        return self.revised != self.original


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def _evidence(claims: list[dict]) -> tuple[Evidence, ...]:
    found: dict[int, Evidence] = {}
    for claim in claims:
        for text in claim.get("evidence") or ():
            match = EVIDENCE.match(text.strip())
            passage = _collapsed(match.group(3)) if match else ""
            if passage:
                found.setdefault(int(match.group(1)), Evidence(int(match.group(1)), match.group(2), passage))
    return tuple(found[n] for n in sorted(found))


def _rows(directory: Path, files: Iterable[str]) -> Iterable[tuple[str, dict]]:
    """(where, row) for each row of the files; a missing file is a ValueError naming it."""
    for name in files:
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path}: no such file (an ExpertQA lfqa split: {', '.join(FILES)})")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not an ExpertQA row ({type(exc).__name__}: {exc})") from None


def read_expertqa(directory: Path, files: Iterable[str] = FILES) -> list[ExpertAnswer]:
    """Every (question, system) answer of the files once; a missing file or a malformed row is a ValueError naming
    the file and line."""
    found: dict[tuple[str, str], ExpertAnswer] = {}
    for where, row in _rows(directory, files):
        try:
            for system, answer in row["answers"].items():
                found.setdefault((row["question"], system), ExpertAnswer(
                    row["question"], system, _collapsed(answer["answer_string"]),
                    _collapsed(answer["revised_answer_string"] or answer["answer_string"]), answer["usefulness"],
                    _evidence(answer.get("claims") or []),
                ))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: not an ExpertQA row ({type(exc).__name__}: {exc})") from None
    return list(found.values())


@dataclass(frozen=True)
class JudgedClaim:
    question: str
    claim: str  # as the answer states it, citation markers stripped
    passages: tuple[str, ...]  # the evidence passages it cites
    supported: int  # the expert's label: 1 when the evidence completely supports the claim


def read_judged_claims(directory: Path, files: Iterable[str] = FILES) -> list[JudgedClaim]:
    """Each distinct claim that cites evidence passages and that an expert judged: support "Complete" is 1,
    "Incomplete" and "Partial" 0; claims judged "N/A", or citing URLs only, are left out."""
    from eval.qa import plain_text

    found: dict[tuple[str, str], JudgedClaim] = {}
    for where, row in _rows(directory, files):
        try:
            for answer in row["answers"].values():
                for claim in answer.get("claims") or ():
                    label = SUPPORT_LABELS.get(claim.get("support"))
                    passages = tuple(e.passage for e in _evidence([claim]))
                    text = plain_text(claim["claim_string"])
                    if label is not None and passages and text:
                        found.setdefault((row["question"], text), JudgedClaim(row["question"], text, passages, label))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}: not an ExpertQA row ({type(exc).__name__}: {exc})") from None
    return list(found.values())


def ratings(answers: Iterable[ExpertAnswer]) -> list[RatedAnswer]:
    out = []
    for a in answers:
        key = query_key(a.question)
        out.append(RatedAnswer(key, a.question, a.revised, 1, 1.0, "curator", f"{a.system}:revised", ()))
        if a.revised_differs:
            out.append(RatedAnswer(key, a.question, a.original, 0, 1.0, "curator", f"{a.system}:original", ()))
    return out


def split_questions(answers: list[ExpertAnswer], holdout: float) -> tuple[list[ExpertAnswer], list[ExpertAnswer]]:
    """(training answers, held-out answers): a question's share decided by its key, as feedback's held-out share."""
    held = [a for a in answers if is_holdout(query_key(a.question), holdout)]
    train = [a for a in answers if not is_holdout(query_key(a.question), holdout)]
    if not held or not train:
        raise ValueError(f"holdout {holdout} leaves {len(train)} questions to train on and {len(held)} to test on: both need some")
    return train, held


def reward_accuracy(model, held: list[ExpertAnswer]) -> dict:
    """The reward model on the held-out answers: how often it scores a revision above the original it revises
    (with its paired bootstrap interval against chance), and how well it ranks useful originals first."""
    from sklearn.metrics import roc_auc_score

    from feedback.reward import CHANCE, item_scores, reward_gate_decision

    pairs = [(a.question, a.revised, a.original) for a in held if a.revised_differs]
    items = item_scores(model.score, [], pairs)
    decision = reward_gate_decision(items, {k: CHANCE for k in items}, [], "chance", get_settings())
    originals = model.score([(a.question, a.original) for a in held])
    useful = [int(a.usefulness == USEFUL) for a in held]
    return {
        "held_out_pairs": len(pairs),
        "pair_accuracy": decision.candidate["pair_accuracy"],
        "pair_accuracy_ci95": [round(CHANCE + decision.ci_low, 4), round(CHANCE + decision.ci_high, 4)] if decision.ci_low is not None else None,
        "usefulness_auc": round(float(roc_auc_score(useful, originals)), 4) if 0 < sum(useful) < len(useful) else None,
        "useful_originals": sum(useful),
        "other_originals": len(useful) - sum(useful),
    }


def run_expertqa_reward(directory: Path, holdout: float = 0.3, args=None, files: Iterable[str] = FILES) -> dict:
    """Train a reward model on the ratings of the questions outside the held-out share; score it on the rest."""
    from feedback.reward import RewardModel, RewardTrainingArgs, train_reward_model

    args = args or RewardTrainingArgs()
    train, held = split_questions(read_expertqa(directory, files), holdout)
    with tempfile.TemporaryDirectory(prefix="citeloop-expertqa-") as out:
        figures = train_reward_model(ratings(train), Path(out), args)
        accuracy = reward_accuracy(RewardModel(Path(out)), held)
    return {
        "data": str(directory),
        "questions": {"train": len({a.question for a in train}), "held_out": len({a.question for a in held})},
        "train_ratings": figures["ratings"],
        "train_seconds": figures["train_seconds"],
        "args": args.as_params(),
    } | accuracy


def answer_messages(answer: ExpertAnswer, closest_sentences, evidence_sentences: int) -> list[dict[str, str]]:
    """The serving prompt over the answer's cited passages, numbered as it cites them; `evidence_sentences` > 0:
    each passage shown as its sentences closest to the question (`closest_sentences`: SpanEncoder's)."""
    from generation.citations import Source
    from generation.prompt import build_messages, with_excerpts

    # A source's id keys SpanEncoder's sentence cache: it must name the passage itself, not its number.
    sources = [Source(e.n, hashlib.sha256(e.passage.encode()).hexdigest()[:16], e.url, "", e.passage) for e in answer.evidence]
    if evidence_sentences:
        sources = with_excerpts(sources, closest_sentences(answer.question, sources, evidence_sentences))
    return build_messages(answer.question, sources)


def preference_pairs(answers: Iterable[ExpertAnswer], messages_of: Callable[[ExpertAnswer], list[dict[str, str]]]) -> list[PairRow]:
    """The revised answer chosen over the original, for each answer the expert changed."""
    from generation.prompt import PROMPT_FORMAT

    return [
        PairRow(
            query_key(a.question), a.question, tuple((m["role"], m["content"]) for m in messages_of(a)), PROMPT_FORMAT,
            a.revised, a.original, "correction", 1.0, f"expertqa:{a.system}", (),
        )
        for a in answers
        if a.revised_differs
    ]


def win_rate(candidate: list[float], baseline: list[float]) -> dict:
    """Per question a win (1), a tie (0.5) or a loss (0) of candidate over baseline; the mean with its paired
    bootstrap 95% interval."""
    from citeloop.registry import paired_bootstrap

    outcomes = {str(i): 1.0 if c > b else 0.5 if c == b else 0.0 for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))}
    gain, low, high = paired_bootstrap(outcomes, {i: 0.5 for i in outcomes})
    return {
        "rate": round(0.5 + gain, 4),
        "ci95": [round(0.5 + low, 4), round(0.5 + high, 4)],
        "wins": sum(o == 1.0 for o in outcomes.values()),
        "ties": sum(o == 0.5 for o in outcomes.values()),
        "losses": sum(o == 0.0 for o in outcomes.values()),
    }


def run_expertqa_dpo(
    directory: Path,
    holdout: float = 0.3,
    generator: str = "smollm2-135m",
    dpo_args=None,
    reward_args=None,
    evidence_sentences: int = 2,
    limit: int | None = None,
    max_new_tokens: int = 256,
    settings: Settings | None = None,
    log: Callable[[str], None] = lambda line: None,
    files: Iterable[str] = FILES,
) -> dict:
    """Train a reward model and a DPO adapter of `generator` on the training questions' answers; answer `limit`
    held-out questions with the base and with the served adapter; the adapter's win rates over the base."""
    from feedback.reward import RewardModel, RewardTrainingArgs, train_reward_model
    from feedback.train_generator import GeneratorTrainingArgs, adapter_to_gguf, train_adapter
    from generation.citations import SpanEncoder
    from generation.engines import ADAPTER_GGUF, LlamaCppGenerator, SamplingParams
    from generation.models import resolve_generator, safetensors_cache
    from generation.prompt import declined
    from eval.qa import strip_markers, token_f1
    from retrieval.embedder import load_embedder

    settings = settings or get_settings()
    dpo_args, reward_args = dpo_args or GeneratorTrainingArgs(), reward_args or RewardTrainingArgs()
    train, held_out = split_questions(read_expertqa(directory, files), holdout)
    held = held_out[:limit] if limit else held_out
    spans = SpanEncoder(load_embedder(settings).embed)
    messages_of = lambda answer: answer_messages(answer, spans.closest_sentences, evidence_sentences)  # noqa: E731
    pairs = preference_pairs(train, messages_of)
    if not pairs:
        raise ValueError(f"{directory}: no training answer was revised by its expert: no preference pair to train on")
    weights = resolve_generator(generator, settings)
    base = safetensors_cache(weights, settings)
    params = SamplingParams(max_new_tokens, 0.0, 1.0, dpo_args.seed, settings.generation_timeout_s)
    held_prompts = [messages_of(a) for a in held]
    with tempfile.TemporaryDirectory(prefix="citeloop-expertqa-dpo-") as scratch:
        out = Path(scratch)
        log(f"reward model on {len(train)} training answers")
        reward_figures = train_reward_model(ratings(train), out / "reward", reward_args)
        reward = RewardModel(out / "reward")
        log(f"DPO of a LoRA adapter on {weights.name}: {len(pairs)} pairs")
        dpo_figures = train_adapter(pairs, base, out / "peft", dpo_args)
        adapter_to_gguf(out / "peft", base, out / ADAPTER_GGUF)
        answers: dict[str, list[str]] = {}
        for label, adapter in (("base", None), ("dpo", out / ADAPTER_GGUF)):
            log(f"{label}: answering {len(held)} held-out questions")
            engine = LlamaCppGenerator(weights, settings, adapter)  # not the loaded-generator cache: the adapter file is temporary
            answers[label] = [_collapsed("".join(engine.stream(messages, params))) for messages in held_prompts]
            del engine
        rewards = {label: reward.score([(a.question, text) for a, text in zip(held, texts)]) for label, texts in answers.items()}
        accuracy = reward_accuracy(reward, held_out)
    f1 = {label: [token_f1(strip_markers(text), strip_markers(a.revised)) for a, text in zip(held, texts)] for label, texts in answers.items()}
    mean = lambda values: round(sum(values) / len(values), 4)  # noqa: E731
    return {
        "data": str(directory),
        "generator": weights.name,
        "questions": {"train": len({a.question for a in train}), "held_out": len({a.question for a in held_out}), "answered": len(held)},
        "train_pairs": len(pairs),
        "evidence_sentences": evidence_sentences,
        "max_new_tokens": max_new_tokens,
        "dpo": {"args": dpo_args.as_params()} | dpo_figures,
        "reward": {"args": reward_args.as_params(), "train_ratings": reward_figures["ratings"], "train_seconds": reward_figures["train_seconds"]} | accuracy,
        "win_rate_by_reward": win_rate(rewards["dpo"], rewards["base"]),
        "win_rate_by_f1": win_rate(f1["dpo"], f1["base"]),
        "mean_f1_vs_revised": {label: mean(values) for label, values in f1.items()},
        "mean_reward": {label: mean(values) for label, values in rewards.items()},
        "declined": {label: sum(map(declined, texts)) for label, texts in answers.items()},
        "identical_answers": sum(a == b for a, b in zip(answers["base"], answers["dpo"])),
        "examples": [
            {"question": a.question, "revised": a.revised, "base": b, "dpo": d}
            for a, b, d in list(zip(held, answers["base"], answers["dpo"]))[:3]
        ],
    }


def run_expertqa_judge(
    directory: Path, judge, judge_id: str, limit: int | None, labelled_share: float, repeats: int, seed: int, log: Callable[[str], None] = print
) -> dict:
    """The judge's ragas `faithfulness` of each expert-judged claim by the passages it cites (a seeded sample of
    `limit` claims), against the experts' support labels: `judge_agreement`."""
    import random
    import time

    from eval.judge import judge_metrics
    from eval.ragas_suite import add_ragas_metrics

    claims = read_judged_claims(directory)
    random.Random(seed).shuffle(claims)
    claims = claims[:limit] if limit else claims
    rows = [
        {"id": str(i), "question": c.question, "answer": c.claim, "retrieved_contexts": list(c.passages), "abstained": False, "expert": c.supported}
        for i, c in enumerate(claims)
    ]
    started = time.monotonic()
    done = 0

    def judged_one(_name: str) -> None:
        nonlocal done
        done += 1
        if done % 10 == 0 or done == len(rows):
            log(f"judged {done} of {len(rows)} claims ({time.monotonic() - started:.0f} s)")

    report = add_ragas_metrics({"metrics": {}, "rows": rows}, judge_metrics(judge, None, ("faithfulness",)), judge=True, on_row=judged_one)
    return {
        "data": str(directory),
        "judge": judge_id,
        "claims": len(rows),
        "failures": report["failures"]["faithfulness"],
        "failure_rate": round(report["failures"]["faithfulness"] / len(rows), 4),
        "failure_example": report["failure_examples"].get("faithfulness"),
        "judge_seconds": round(time.monotonic() - started, 1),
    } | judge_agreement(rows, labelled_share, repeats, seed) | {
        "rows": [{k: r[k] for k in ("id", "question", "answer", "expert", "faithfulness")} for r in rows],
    }


def judge_agreement(rows: list[dict], labelled_share: float, repeats: int, seed: int) -> dict:
    """Rows with the judge's `faithfulness` (None: failed) and the expert's label (`expert`, 0/1), over the claims
    the judge scored: agreement (accuracy, Cohen's kappa; supported by the judge at a score >= 0.5); the support
    rate calibrated by a random `labelled_share` of the expert labels (prediction-powered inference), as a curator
    labelling that share would have it; and coverage: over `repeats` fresh samples of as many labelled and
    unlabelled claims, drawn with replacement from the scored claims (whose experts' support rate is then the
    population's), how often the calibrated 95% interval, and the labels' own, hold that rate, and their mean widths."""
    import random

    import numpy as np

    from eval.calibration import agreement, calibrate_rows, calibrated_mean

    scored = [r for r in rows if r["faithfulness"] is not None]
    if len(scored) < 4:
        raise ValueError(f"the judge scored {len(scored)} of {len(rows)} claims: too few to measure agreement")
    truth = sum(r["expert"] for r in scored) / len(scored)
    labelled = max(2, round(labelled_share * len(scored)))
    if labelled >= len(scored):
        raise ValueError(f"--labelled {labelled_share} leaves no unlabelled claims of {len(scored)}")
    draws = random.Random(seed + 1)
    calibrated = calibrate_rows(scored, "faithfulness", {r["id"]: r["expert"] for r in draws.sample(scored, labelled)})
    covered, covered_classical, widths, widths_classical = 0, 0, [], []
    for _ in range(repeats):
        sample = draws.choices(scored, k=len(scored))
        known, rest = sample[:labelled], sample[labelled:]
        result = calibrated_mean([r["faithfulness"] for r in rest], [r["faithfulness"] for r in known], [r["expert"] for r in known])
        (low, high), (c_low, c_high) = result["ci95"], result["classical"]["ci95"]
        covered += low <= truth <= high
        covered_classical += c_low <= truth <= c_high
        widths.append(high - low)
        widths_classical.append(c_high - c_low)
    return {
        "scored": len(scored),
        "expert_support_rate": round(truth, 4),  # over the scored claims: the rate calibration estimates
        "expert_support_rate_all_claims": round(sum(r["expert"] for r in rows) / len(rows), 4),
        "judge_mean_faithfulness": round(sum(r["faithfulness"] for r in scored) / len(scored), 4),
        "agreement": agreement([r["faithfulness"] for r in scored], [r["expert"] for r in scored]),
        "calibrated": calibrated,
        "coverage": {
            "repeats": repeats, "labelled": labelled, "unlabelled": len(scored) - labelled,
            "ppi": round(covered / repeats, 4), "classical": round(covered_classical / repeats, 4),
            "mean_width_ppi": round(float(np.mean(widths)), 4), "mean_width_classical": round(float(np.mean(widths_classical)), 4),
        },
    }
