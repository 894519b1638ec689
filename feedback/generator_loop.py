"""Train a collection's generator from its stored feedback: preference pairs (a snapshot), DPO of a LoRA adapter on
the configured generator, conversion for llama.cpp, a registry version of kind `generator`, and the gate that
decides whether it serves.

The gate answers the collection's QA evaluation questions twice through the collection's own pipeline (same
retrieval, same prompts), with the candidate's adapter and with what serves now (the active adapter, or the base
generator), and compares `eval qa` metrics. The questions are those of the collection's latest uploaded evaluation
set with reference answers (`citeloop evalsets add --rows`; its unanswerable questions too), else the held-out
share of the pairs' questions; neither is trained on. Of held-out pairs, a chosen answer that is not a refusal is a
reference answer (the documents it cites its gold), a chosen refusal makes the question unanswerable. The
candidate passes when its answer-F1 gain's paired bootstrap interval lies above CITELOOP_GATE_MIN_CI_LOWER (with CITELOOP_GATE_REQUIRE_CI) and the gain reaches
CITELOOP_GATE_MIN_ANSWER_F1_GAIN, unless its decline rate on answerable questions rose by more than
CITELOOP_GATE_MAX_ABSTAIN_RISE, it refuses fewer of the unanswerable ones, or one of ragas' judge-free metrics of the
answer against the reference (RAGAS_GATE_METRICS) fell: its paired bootstrap interval wholly below zero. Both sides'
ragas scores (the context metrics too) are kept in the decision.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime

from sqlalchemy import select

from citeloop.config import Settings, get_settings
from citeloop.db import AnswerRecord, session_scope
from citeloop.registry import GateDecision, VersionInfo, active_version, paired_bootstrap, register_candidate, staging_dir, verified_path
from eval.qa import QuestionRow, evaluate_qa
from feedback.reranker_loop import LoopReport, settle
from feedback.trainset import PairRow, TrainingSetError, prompt_key
from generation.citations import Source, split_cited_sentences
from generation.engines import ADAPTER_GGUF, SamplingParams
from generation.prompt import PROMPT_FORMAT, REFUSAL, build_messages

# ragas' judge-free metrics of the answer against the reference: a candidate may not make any of them fall.
RAGAS_GATE_METRICS = ("rouge_score", "non_llm_string_similarity", "string_present")
# The metrics a generator's gate record keeps of each side (eval qa and ragas names).
GATE_METRICS = (
    "answerable", "unanswerable", "errors", "answer_f1", "answer_contains_reference", "citation_precision", "citation_recall",
    "decline_rate_answerable", "extractive_rate_answerable", "refusal_rate_unanswerable", *RAGAS_GATE_METRICS,
    "non_llm_context_recall", "non_llm_context_precision_with_reference", "id_based_context_recall", "id_based_context_precision",
)


def gate_questions(eval_pairs: list[PairRow], doc_ids_of: dict[str, list[str]]) -> list[QuestionRow]:
    """The held-out pairs' questions as `eval qa` rows. `doc_ids_of`: answer id -> the document id of each source
    its prompt showed, in order (the chosen answer's citations name them)."""
    rows: dict[str, QuestionRow] = {}
    refused: set[str] = set()
    for pair in eval_pairs:
        row = rows.setdefault(pair.query_id, QuestionRow(pair.query_id, pair.query))
        if pair.chosen == REFUSAL:
            refused.add(pair.query_id)
            continue
        sentences = split_cited_sentences(pair.chosen, len(doc_ids_of.get(pair.answer_id, ())))
        reference = " ".join(s.text for s in sentences).strip()
        if reference and reference not in row.references:
            row.references.append(reference)
        docs = doc_ids_of.get(pair.answer_id, [])
        for n in sorted({n for s in sentences for n in s.cited}):
            if docs[n - 1] not in row.doc_ids:
                row.doc_ids.append(docs[n - 1])
    # A question some pair answers is answerable whatever another pair chose for it.
    return [row for row in rows.values() if row.references or row.id in refused]


def question_events(eval_pairs: list[PairRow], questions: list[QuestionRow]) -> dict[str, list[str]]:
    """Per gate question, the feedback events its held-out pairs came from (erasure drops the question)."""
    events: dict[str, set[str]] = {q.id: set() for q in questions}
    for pair in eval_pairs:
        if pair.query_id in events:
            events[pair.query_id].update(pair.event_ids)
    return {q: sorted(e) for q, e in events.items()}


def evaluation_questions(session, collection: str, eval_pairs: list[PairRow]) -> tuple[list[QuestionRow], dict]:
    """The questions a generator of the collection is gated on, and where they came from (kept in the version's
    `params.eval`): the latest uploaded evaluation set with reference answers (and its unanswerable questions),
    else the held-out pairs' questions (with the feedback events each came from, which erasure follows)."""
    from feedback.evalsets import list_evalsets

    qa_sets = [s for s in list_evalsets(session, collection, uploaded_only=True) if any(r["references"] for r in s.qa_rows)]
    if qa_sets:
        evalset = qa_sets[-1]
        return evalset.questions(), {"evalset": evalset.id, "evalset_name": evalset.name, "question_events": {}}
    held_out = session.scalars(select(AnswerRecord).where(AnswerRecord.id.in_({p.answer_id for p in eval_pairs})))
    contexts = {record.id: [c.get("doc_id", "") for c in record.contexts] for record in held_out}
    questions = gate_questions(eval_pairs, contexts)
    if not questions:
        raise TrainingSetError(
            f"no preference pair of collection '{collection}' fell in the evaluation share: the gate has no question to "
            "compare answers on; give more feedback, or upload an evaluation set with reference answers (citeloop evalsets add --rows)"
        )
    return questions, {"question_events": question_events(eval_pairs, questions)}


def described(questions: int, source: dict) -> str:
    """"N questions of evaluation set 'NAME'" or "N held-out pairs' questions", for a gate's `evaluation_questions`."""
    if "evalset" in source:
        return f"{questions} questions of evaluation set '{source['evalset_name']}'"
    return f"{questions} held-out pairs' questions"


def qa_gate_decision(candidate: dict, baseline: dict, baseline_name: str, settings: Settings) -> GateDecision:
    """Candidate and baseline are `evaluate_qa` results on the same questions (with ragas' judge-free metrics on
    their rows where `add_ragas_metrics` scored them)."""
    mine, theirs = candidate["metrics"], baseline["metrics"]
    per_row = lambda result, name: {r["id"]: r[name] for r in result["rows"] if r.get(name) is not None}  # noqa: E731
    f1 = lambda result: {r["id"]: r["answer_f1"] for r in result["rows"] if r["answerable"] and r["answer_f1"] is not None}  # noqa: E731
    kept = lambda metrics: {k: metrics.get(k) for k in GATE_METRICS}  # noqa: E731
    if not f1(candidate):
        return GateDecision(False, "no answerable evaluation question was answered by both: nothing to compare", kept(mine), kept(theirs), baseline_name)
    gain, low, high = paired_bootstrap(f1(candidate), f1(baseline), settings.gate_confidence)
    interval = {"gain": round(gain, 4), "ci_low": round(low, 4), "ci_high": round(high, 4), "confidence": settings.gate_confidence}

    def decided(passed: bool, why: str) -> GateDecision:
        head = (
            f"answer F1 {mine['answer_f1']:.4f} vs {baseline_name} {theirs['answer_f1']:.4f}: gain {gain:+.4f} "
            f"({settings.gate_confidence:.0%} CI {low:+.4f} .. {high:+.4f})"
        )
        return GateDecision(passed, f"{head}{why}", kept(mine), kept(theirs), baseline_name, **interval)

    rise = (mine["decline_rate_answerable"] or 0.0) - (theirs["decline_rate_answerable"] or 0.0)
    if rise > settings.gate_max_abstain_rise:
        return decided(False, f"; decline rate on answerable questions rose by {rise:.4f} > {settings.gate_max_abstain_rise:.4f}")
    if theirs["refusal_rate_unanswerable"] is not None and mine["refusal_rate_unanswerable"] < theirs["refusal_rate_unanswerable"]:
        return decided(
            False, f"; refusal of unanswerable questions fell: {mine['refusal_rate_unanswerable']:.4f} vs {theirs['refusal_rate_unanswerable']:.4f}"
        )
    for name in RAGAS_GATE_METRICS:
        ours, base = per_row(candidate, name), per_row(baseline, name)
        if set(ours) & set(base):
            change, _, upper = paired_bootstrap(ours, base, settings.gate_confidence)
            if upper < 0:
                return decided(False, f"; ragas {name} fell by {-change:.4f} ({settings.gate_confidence:.0%} CI upper bound {upper:+.4f})")
    if gain < settings.gate_min_answer_f1_gain:
        return decided(False, f" < required {settings.gate_min_answer_f1_gain:+.4f}")
    if settings.gate_require_ci and not low > settings.gate_min_ci_lower:  # a NaN bound fails too
        return decided(False, f": the interval's lower bound is not above {settings.gate_min_ci_lower:+.4f}")
    return decided(True, "")


def run_qa_gate(version: VersionInfo, pipeline, settings: Settings, on_row=None) -> GateDecision:
    """The candidate against what serves the collection now, on the version's evaluation questions; both
    evaluations are stored as eval runs (`eval compare`, `eval report` read them), and the decision names them."""
    from citeloop.db import session_scope
    from eval.ragas_suite import add_ragas_metrics, with_reference_contexts
    from eval.runs import save_run, track_run

    record = version.params["eval"]
    rows = with_reference_contexts([QuestionRow(**row) for row in record["questions"]], version.collection, settings)
    # What serves now: the active adapter, or the base where there is none or it cannot serve (ActiveGenerator).
    serving = pipeline.generators.run().version_id
    baseline_name = f"active generator {serving}" if serving else "the base generator"
    baseline = add_ragas_metrics(evaluate_qa(rows, pipeline.answer, on_row))
    candidate = add_ragas_metrics(evaluate_qa(rows, lambda q, filters: pipeline.answer(q, generator=version, filters=filters), on_row))
    decision = qa_gate_decision(candidate, baseline, baseline_name, settings)
    questions = f"gate questions of {version.id}"
    with session_scope(settings) as session:
        saved = {
            name: save_run(session, version.collection, questions, rows, report, {"gate": version.id, "answered_by": who}, f"gate:{version.id}")
            for name, report, who in (("baseline", baseline, baseline_name), ("candidate", candidate, version.id))
        }
    for run in saved.values():
        track_run(run, settings)
    runs = {name: run.id for name, run in saved.items()}
    reason = f"{described(len(rows), record)} (eval compare {runs['baseline']} {runs['candidate']}): {decision.reason}"
    return replace(decision, reason=reason, runs=runs)


def run_generator_gate(version: VersionInfo, settings: Settings | None = None, show_progress: bool = False) -> GateDecision:
    """`run_qa_gate` through a new pipeline of the version's collection (a promotion asked for later)."""
    from citeloop.progress import progress_bar
    from generation.pipeline import AnswerPipeline

    settings = settings or get_settings()
    questions = len(version.params.get("eval", {}).get("questions", ()))
    if not questions:
        raise ValueError(f"model version '{version.id}' records no evaluation questions to gate it on")
    pipeline = AnswerPipeline(version.collection, settings)
    with progress_bar("gating", 2 * questions, enabled=show_progress) as advance:
        return run_qa_gate(version, pipeline, settings, on_row=lambda _: advance(1))


def regenerator(pipeline, settings: Settings):
    """Answers a question from given sources with the collection's serving engine (for flagged citations)."""
    params = SamplingParams.from_settings(settings)

    def regenerate(question: str, sources: list[Source]) -> str:
        engine = pipeline.generators.run().engine
        return "".join(engine.stream(build_messages(question, sources), params)).strip()

    return regenerate


def sampler(pipeline, settings: Settings, temperature: float):
    """Samples an answer from chat messages with the collection's serving engine (for reward-ranked pairs)."""
    params = SamplingParams.from_settings(settings)

    def sample(messages: list[dict[str, str]], seed: int) -> str:
        engine = pipeline.generators.run().engine
        return "".join(engine.stream(messages, replace(params, temperature=temperature, seed=seed)))

    return sample


def add_sampled_pairs(
    session, collection: str, pairs, scrub, verify, pipeline, args, settings: Settings, evaluation_queries: set[str],
    on_prompt=lambda sampled: None, until: datetime | None = None,
) -> None:
    """`pairs` (a PairSet) with the pairs `sampled_pairs` makes from the collection's logged prompts, ranked by its
    active reward model; raises TrainingSetError without one, or when the pairs are still too few. `on_prompt`:
    progress (and a job's cancellation), called with the prompts sampled so far."""
    from feedback.pairs import sampled_pairs
    from feedback.reward import RewardModel

    reward = active_version(collection, "reward", settings)
    if reward is None:
        raise TrainingSetError(f"collection '{collection}' has no active reward model to rank sampled answers: train one (citeloop train reward)")
    sampled, dropped = sampled_pairs(
        session, collection, scrub, sampler(pipeline, settings, args.sample_temperature), RewardModel(verified_path(reward)).score, verify,
        args.samples, settings.eval_holdout, {prompt_key(p.prompt) for p in pairs.rows + pairs.eval_rows}, evaluation_queries,
        settings.training_max_sampled_prompts, on_prompt, until,
    )
    pairs.rows.extend(sampled)
    pairs.counts |= {"pairs_reward_samples": len(sampled), "rows": len(pairs.rows), "queries": len({r.query_id for r in pairs.rows})}
    for reason, n in dropped.items():
        pairs.dropped[reason] = pairs.dropped.get(reason, 0) + n
    if len(pairs.rows) < settings.training_min_pairs:
        raise TrainingSetError(
            f"collection '{collection}' has {len(pairs.rows)} preference pairs to train on, {len(sampled)} of them sampled; "
            f"at least {settings.training_min_pairs} are needed (CITELOOP_TRAINING_MIN_PAIRS); dropped: {pairs.dropped or 'none'}"
        )


def train_generator_from_feedback(
    collection: str,
    args=None,
    settings: Settings | None = None,
    promote_if_better: bool = False,
    actor: str = "cli",
    reporter=None,
    until: datetime | None = None,
) -> LoopReport:
    """Pairs from the collection's stored feedback (saved as a snapshot), a LoRA adapter trained on them, registered
    with the active generator version (if any) as parent, gated; `promote_if_better`: promoted (as `actor`) when
    the gate passed. `reporter`: a job's `JobReporter`; `until`: only events created up to then."""
    from feedback.evalsets import uploaded_query_keys
    from feedback.pairs import build_pair_set, citation_verifier
    from feedback.pii import feedback_scrubber
    from feedback.train_generator import GeneratorTrainingArgs, adapter_to_gguf, train_adapter
    from feedback.trainset import save_snapshot
    from generation.models import resolve_generator, safetensors_cache
    from generation.pipeline import AnswerPipeline

    stage = reporter.stage if reporter else (lambda message, progress: None)
    settings = settings or get_settings()
    args = args or GeneratorTrainingArgs()
    stage("building preference pairs from stored feedback", 0.02)
    pipeline = AnswerPipeline(collection, settings)
    scrub = feedback_scrubber(pipeline.search.retriever)
    verify = citation_verifier(settings)
    with session_scope(settings) as session:
        evaluation_queries = uploaded_query_keys(session, collection)
        pairs = build_pair_set(
            session, collection, scrub, verify, regenerator(pipeline, settings), settings.eval_holdout,
            0 if args.samples else settings.training_min_pairs, evaluation_queries, until,
        )
        questions, gate_source = evaluation_questions(session, collection, pairs.eval_rows)
        if args.samples:
            stage(f"sampling {args.samples} answers a logged prompt, ranked by the reward model", 0.03)
            progress = lambda sampled: stage(f"sampled answers for {sampled} logged prompts", 0.03) if sampled % 10 == 0 else None  # noqa: E731
            add_sampled_pairs(session, collection, pairs, scrub, verify, pipeline, args, settings, evaluation_queries, progress, until)
        snapshot = save_snapshot(session, collection, "generator", pairs)
    weights = resolve_generator(settings.generator, settings)
    gate_on = described(len(questions), gate_source)
    stage(f"snapshot {snapshot.id}: {snapshot.counts['rows']} pairs, {gate_on} to gate on", 0.05)
    stage(f"DPO of a LoRA adapter on {weights.name}", 0.06)
    base = safetensors_cache(weights, settings)
    parent = active_version(collection, "generator", settings)
    with staging_dir(settings) as scratch:
        artifact = scratch / "artifact"
        callbacks = [reporter.training_callback(0.08, 0.7)] if reporter else []
        figures = train_adapter(pairs.rows, base, artifact / "peft", args, callbacks)
        stage("converting the adapter for llama.cpp", 0.72)
        adapter_to_gguf(artifact / "peft", base, artifact / ADAPTER_GGUF)
        version = register_candidate(
            artifact, collection, "generator", snapshot.id,
            params=args.as_params() | {
                "base": {"name": weights.name, "digest": weights.digest},
                "prompt_format": PROMPT_FORMAT,
                "eval": {
                    "questions": [asdict(q) for q in questions], **gate_source,
                    "snapshot": snapshot.id, "counts": snapshot.counts, "dropped": snapshot.dropped,
                },
            },
            metrics=figures, parent_id=parent.id if parent else None, settings=settings,
        )
    stage(f"candidate {version.id} registered; gating it on {gate_on}", 0.75)
    return settle(version, run_qa_gate(version, pipeline, settings), settings, promote_if_better, actor)
