"""Evaluation commands: `eval qa` (answer quality), `eval retrieval` (ranking quality per stage), `eval
feedback-loop` (the replay harnesses: what feedback buys the reranker, or the generator), `eval reward` (the
reward model on experts' preferences), `eval dpo` (a DPO adapter trained on experts' preferences), `eval judge`
(a ragas judge against experts' labels), and the history of `eval qa` runs and gates' rankings: `eval runs`, `eval
compare`, `eval label` (curators' labels of a run's answers), `eval calibrate` (judged metrics corrected by those
labels), `eval report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console
from feedback.cross_encoder_trainer import RerankerTrainingArgs

eval_app = typer.Typer(help="Evaluate retrieval and answers.", no_args_is_help=True)
# The answer metrics the generator's replay harness prints before and after (its JSON has them all).
ANSWER_METRICS = ("answer_f1", "citation_precision", "decline_rate_answerable", "refusal_rate_unanswerable", "latency_p50_ms")
# The settings that shape answers, kept with each `eval qa` run.
ANSWER_SETTINGS = {
    "generator", "generator_engine", "context_window", "max_new_tokens", "temperature", "top_p", "seed", "evidence_sentences",
    "answer_contexts", "fusion", "rrf_k", "dense_weight", "bm25_weight", "candidates", "rerank_top_n", "rerank_max_tokens",
    "citation_min_similarity", "citation_min_overlap", "citation_min_relevance", "answer_min_support", "extractive_min_similarity",
    "abstain_min_evidence", "abstain_unknown_terms", "abstain_rare_term_share",
}


def _figure(value) -> str:
    return "-" if value is None else str(value)


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


@eval_app.command("qa")
@reports_errors(ValueError, RuntimeError)
def eval_qa(
    questions: Annotated[Path, typer.Argument(help="Rows {id, user_input, reference?, reference_answers?, reference_doc_ids?, reference_contexts?, filters?}: JSONL (ragas' EvaluationDataset.to_jsonl), Parquet, or a Hugging Face dataset folder (save_to_disk).")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Answer from this collection.")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Or a BEIR directory, ingested once into an eval collection.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="N questions only.")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first N questions (e.g. tune on 0-99, report on 100-199).")] = 0,
    split: Annotated[Optional[str], typer.Option("--split", help="Only rows whose \"split\" field is this (e.g. dev, heldout).")] = None,
    ragas: Annotated[bool, typer.Option("--ragas", help="Also score the rows with ragas' metrics that need no judge (failures counted per metric).")] = False,
    judge: Annotated[Optional[str], typer.Option("--judge", help="Also ragas' LLM-judged metrics (implies --ragas): 'local' (a local GGUF generator in-process) or an OpenAI-compatible server's URL ending in /v1.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="The judge: a local generator's name or GGUF (default: the configured generator), or the server's model name (needed with a URL).")] = None,
    judge_metrics: Annotated[str, typer.Option("--judge-metrics", help="Comma-separated judged metrics (default: all of faithfulness, answer_relevancy, llm_context_precision_with_reference, context_recall, factual_correctness).")] = "",
    stages: Annotated[str, typer.Option("--stages", help="Also rank the questions with reference documents at these retrieval stages (comma-separated: bm25,dense,hybrid,rerank).")] = "",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and per-question rows here.")] = None,
    report_out: Annotated[Optional[Path], typer.Option("--report", help="Write a self-contained HTML report here.")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="A stored run the report compares against.")] = None,
) -> None:
    """Answer quality overall and per question shape: token F1, citation precision/recall, context recall, the
    decline rate on answerable and the refusal rate on unanswerable questions, latency; with --ragas, ragas'
    string- and id-based metrics too (rows without reference contexts take the chunks of their reference documents
    that hold the reference answer); with --stages, nDCG@10, Recall@100 and MRR@10 of each retrieval stage on the
    questions' reference documents. The run is stored (eval runs)."""
    from citeloop.progress import progress_bar
    from eval.qa import evaluate_qa, load_questions
    from eval.retrieval import ensure_eval_collection
    from generation.pipeline import AnswerPipeline

    if (collection is None) == (corpus is None):
        fail("give exactly one of --collection or --corpus")
    stage_names = [s.strip() for s in stages.split(",") if s.strip()]
    if stage_names:
        from eval.retrieval import check_stages

        check_stages(stage_names)
    if baseline and not report_out:
        fail("--baseline is what the report compares against: give --report OUT.html too")
    baseline_run = _stored_run(baseline) if baseline else None
    asked = load_questions(questions, limit, offset, split)
    ragas = ragas or judge is not None
    # A judge that cannot load, or a judge server that does not answer, fails before anything is answered.
    judged, judge_id = _judged_metrics(judge, judge_model, judge_metrics) if judge is not None else ([], None)
    name = collection or ensure_eval_collection(corpus, show_progress=True)
    if stage_names:  # before answering: a stage that cannot run (no active reranker) fails fast
        from eval.retrieval import rank_questions

        ranked_stages = rank_questions(asked, name, stage_names)
    rows = asked
    if ragas:
        from eval.ragas_suite import with_reference_contexts

        rows = with_reference_contexts(asked, name)
    pipeline = AnswerPipeline(name)
    with progress_bar("answering", len(rows), enabled=True) as advance:
        report = evaluate_qa(rows, pipeline.answer, on_row=lambda _: advance(1))
    if ragas:
        from eval.ragas_suite import add_ragas_metrics

        report = add_ragas_metrics(report)
        if judged:
            judged_rows = len(report["rows"]) * len(judged)
            with progress_bar(f"judging ({judge})", judged_rows, enabled=True) as advance:
                report = add_ragas_metrics(report, judged, judge=True, on_row=lambda _: advance(1))
    if stage_names:
        report["metrics"]["retrieval_stages"] = ranked_stages
    columns = {"all": report["metrics"]} | report["by_shape"]
    table = Table("metric", *columns, title=f"{questions} on {name}")
    for metric, value in report["metrics"].items():
        if not isinstance(value, dict):
            table.add_row(metric, *(_figure(figures.get(metric)) for figures in columns.values()))
    console.print(table)
    if stage_names:
        _print_stages(report["metrics"]["retrieval_stages"], f"retrieval stages on {name}")
    if ragas:
        failed = {m: n for m, n in report["failures"].items() if n}
        console.print(f"ragas failures: {failed or 'none'}; not applicable: {report['not_applicable']}", markup=False)
    from citeloop.config import get_settings
    from citeloop.db import session_scope
    from eval.runs import save_run, track_run, unsaved_run

    judge_config = {"judge": judge, "judge_model": judge_id, "judge_metrics": [m.name for m in judged]}
    config = {"limit": limit, "offset": offset, "split": split, "ragas": ragas, **(judge_config if judge is not None else {}), "settings": get_settings().model_dump(include=ANSWER_SETTINGS)}
    from sqlalchemy.exc import SQLAlchemyError

    try:  # the file's rows as read: a --ragas run and a plain one of the same questions share a digest
        with session_scope() as session:
            run = save_run(session, name, str(questions), asked, report, config, "cli")
        report = {"run_id": run.id} | report
        console.print(f"run {run.id} saved (citeloop eval runs; citeloop eval compare {run.id} OTHER)", markup=False)
        if tracked := track_run(run, get_settings()):
            console.print(f"logged to MLflow at {get_settings().mlflow_uri}: run {tracked}", markup=False)
    except SQLAlchemyError as exc:  # the answers are not lost with the history: the JSON and the report are still written
        console.print(f"[yellow]the run was not saved to the history: {exc}[/]")
        run = unsaved_run(name, str(questions), asked, report, config)
    if json_out:
        _write_json(json_out, report)
    if report_out:
        _write_report(report_out, run, baseline_run, report["by_shape"], report.get("not_applicable"))


def _judge_llm(judge: str, model: str | None):
    """(ragas LLM, the judge's id: a local model's name@digest, or model@URL)."""
    from eval.judge import local_judge, remote_judge

    if judge == "local":
        llm = local_judge(model)
        return llm, llm.model_id
    if judge.startswith(("http://", "https://")):
        if not model:
            fail("--judge URL needs --judge-model NAME (the model the server serves)")
        return remote_judge(judge, model), f"{model}@{judge}"
    fail(f"--judge must be 'local' or an http(s) URL of an OpenAI-compatible server, not '{judge}'")


def _judged_metrics(judge: str, model: str | None, names: str) -> tuple[list, str]:
    from eval.judge import check_metric_names, judge_metrics, minilm_embeddings

    chosen = check_metric_names(tuple(dict.fromkeys(n.strip() for n in names.split(",") if n.strip())))
    llm, judge_id = _judge_llm(judge, model)
    return judge_metrics(llm, minilm_embeddings(), chosen), judge_id


def _print_stages(stages: dict[str, dict], title: str) -> None:
    table = Table("stage", "nDCG@10", "Recall@100", "MRR@10", "queries", title=title)
    for stage, m in stages.items():
        table.add_row(stage, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}", str(m["queries"]))
    console.print(table)


def _stored_run(run_id: str):
    from citeloop.db import session_scope
    from eval.runs import get_run

    with session_scope() as session:
        return get_run(session, run_id)


def _write_report(path: Path, run, baseline, by_shape: dict | None = None, not_applicable: dict | None = None) -> None:
    from eval.report import render_report

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run, baseline, by_shape, not_applicable), encoding="utf-8")
    console.print(f"report written to {path}", markup=False)


@eval_app.command("retrieval")
@reports_errors(ValueError)
def eval_retrieval(
    directory: Annotated[Path, typer.Argument(help="BEIR directory: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv.")],
    split: Annotated[str, typer.Option("--split", help="Which qrels file to score.")] = "test",
    stages: Annotated[str, typer.Option("--stages", help="Comma-separated: bm25,dense,hybrid,rerank.")] = "bm25,dense,hybrid",
    reranker: Annotated[str, typer.Option("--reranker", help="Version id for the rerank stage, or 'active'.")] = "active",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 per stage on a BEIR-format data set."""
    from citeloop.registry import get_version
    from eval.retrieval import evaluate_retrieval

    names = [s.strip() for s in stages.split(",") if s.strip()]
    version = get_version(reranker, kind="reranker") if "rerank" in names and reranker != "active" else None
    metrics = evaluate_retrieval(directory, split, names, show_progress=True, reranker=version)
    _print_stages(metrics, f"{directory} ({split})")
    if json_out:
        _write_json(json_out, metrics)


@eval_app.command("feedback-loop")
@reports_errors(ValueError, RuntimeError)
def eval_feedback_loop(
    beir: Annotated[Optional[Path], typer.Option("--beir", help="Reranker: BEIR directory whose training queries a simulated curator judges.")] = None,
    train_split: Annotated[Optional[str], typer.Option("--train-split", help="Reranker: qrels split of the queries the curator judges.")] = None,
    test_split: Annotated[Optional[str], typer.Option("--test-split", help="Reranker: qrels split evaluated before and after (the training split: its held-out share).")] = None,
    test_beir: Annotated[Optional[Path], typer.Option("--test-beir", help="Reranker: test queries and qrels in another folder over the same corpus.")] = None,
    noise: Annotated[float, typer.Option("--noise", min=0.0, max=1.0, help="Reranker: share of the curator's judgements flipped.")] = 0.0,
    curve: Annotated[str, typer.Option("--curve", help="Reranker: comma-separated query counts for the learning curve, e.g. 50,100,250.")] = "",
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Reranker: results the curator judges per query.")] = 10,
    qa: Annotated[Optional[Path], typer.Option("--qa", help="Generator: JSONL question rows (eval qa's format) users ask, vote on and a curator corrects.")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Generator: question rows answered before and after (the --qa file: its held-out share).")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Generator: BEIR directory the questions are about.")] = None,
    collection: Annotated[Optional[str], typer.Option("--collection", help="Generator: or the service's collection they are about (the harness replays on a copy).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Generator: the first N dev and N test questions only.")] = None,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Generator: also pair K answers sampled from each logged prompt, ranked by a reward model trained on the same feedback first.")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="The harness's own data directory (default: a new temporary one).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (default: the trainer's).")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps per training (-1: none).")] = -1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    base: Annotated[str, typer.Option("--base", help="Reranker warm start: a base trained on bundled data (scifact, covidqa) that never saw --beir's, or none.")] = "none",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """What feedback buys. Reranker (--beir): a simulated curator judges search results through a real server, a
    training job trains a reranker from that feedback alone, and the test queries are evaluated before and after.
    Generator (--qa): simulated users ask and vote, a curator flags citations and corrects answers, a generator job
    trains a LoRA adapter by DPO from that feedback alone, and the test questions are answered before and after."""
    from dataclasses import replace

    if qa is not None:
        from eval.answer_feedback_loop import run_answer_feedback_loop
        from feedback.train_generator import GeneratorTrainingArgs

        if test is None or (corpus is None) == (collection is None):
            fail("--qa needs --test TEST.jsonl and one of --corpus DIR or --collection C")
        args = replace(GeneratorTrainingArgs(), max_steps=max_steps, seed=seed, samples=samples, **({"epochs": epochs} if epochs else {}))
        report = run_answer_feedback_loop(
            qa, test, corpus, limit, data_dir, args, progress=lambda m: console.print(f"[dim]{m}[/]"), collection=collection
        )
        table = Table("", *ANSWER_METRICS, title=f"{report['test_questions']} test questions, {report['pairs']} preference pairs")
        for when in ("before", "after"):
            table.add_row(when, *(_figure(report[when][name]) for name in ANSWER_METRICS))
        console.print(table)
        console.print(f"job {report['job']['id']}: {report['train_seconds']} s; promoted: {report['job']['promoted']}; {report['job']['gate']['reason']}", markup=False)
        if json_out:
            _write_json(json_out, report)
        return
    if beir is None or train_split is None or test_split is None:
        fail("give --beir DIR --train-split S --test-split S (the reranker), or --qa DEV.jsonl --test TEST.jsonl --corpus DIR|--collection C (the generator)")
    from eval.feedback_loop import run_feedback_loop

    try:
        points = [int(c) for c in curve.split(",") if c.strip()]
    except ValueError:
        fail(f"--curve must be comma-separated query counts, not '{curve}'")
    args = replace(RerankerTrainingArgs(), max_steps=max_steps, **({"epochs": epochs} if epochs else {}))
    report = run_feedback_loop(
        beir, train_split, test_split, test_beir, noise, points, k, data_dir, args, seed, base, progress=lambda m: console.print(f"[dim]{m}[/]")
    )
    table = Table("", "nDCG@10", "Recall@100", "MRR@10", title=f"{report['test_queries']} test queries, {report['feedback_events']} feedback events")
    for when in ("before", "after"):
        for stage, m in report[when].items():
            table.add_row(f"{when}: {stage}", f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}")
    for point in report["curve"]:
        m = point["rerank"]
        table.add_row(f"rerank, feedback on {point['queries']} queries", f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}")
    console.print(table)
    console.print(f"job {report['job']['id']}: {report['train_seconds']} s; promoted: {report['job']['promoted']}; {report['job']['gate']['reason']}", markup=False)
    if json_out:
        _write_json(json_out, report)


@eval_app.command("reward")
@reports_errors(ValueError)
def eval_reward(
    expertqa: Annotated[Path, typer.Option("--expertqa", help="ExpertQA's lfqa folder (rand_val.jsonl, domain_val.jsonl).")],
    holdout: Annotated[float, typer.Option("--holdout", min=0.01, max=0.99, help="Share of the questions held out for scoring.")] = 0.3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (default: the trainer's).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """The reward model on real human preferences: trained on experts' revisions of answers to part of ExpertQA's
    questions, scored on the rest (does it prefer the revision; does it rank the answers experts found useful first)."""
    from dataclasses import replace

    from eval.expertqa import run_expertqa_reward
    from feedback.reward import RewardTrainingArgs

    args = replace(RewardTrainingArgs(), seed=seed, **({"epochs": epochs} if epochs else {}))
    report = run_expertqa_reward(expertqa, holdout, args)
    low_high = report["pair_accuracy_ci95"]
    console.print(
        f"{report['questions']['train']} questions trained on ({report['train_ratings']} ratings, {report['train_seconds']} s), "
        f"{report['questions']['held_out']} held out: revision preferred in {_figure(report['pair_accuracy'])} of {report['held_out_pairs']} pairs "
        f"(95% CI {low_high[0] if low_high else '-'} .. {low_high[1] if low_high else '-'}); usefulness ROC AUC {_figure(report['usefulness_auc'])} "
        f"({report['useful_originals']} useful, {report['other_originals']} not)"
    )
    if json_out:
        _write_json(json_out, report)


@eval_app.command("dpo")
@reports_errors(ValueError, RuntimeError)
def eval_dpo(
    expertqa: Annotated[Path, typer.Option("--expertqa", help="ExpertQA's lfqa folder (rand_val.jsonl, domain_val.jsonl).")],
    generator: Annotated[str, typer.Option("--generator", help="The generator the adapter is trained on and served over.")] = "smollm2-135m",
    holdout: Annotated[float, typer.Option("--holdout", min=0.01, max=0.99, help="Share of the questions held out for scoring.")] = 0.3,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Answer the first N held-out questions only.")] = None,
    evidence_sentences: Annotated[int, typer.Option("--evidence-sentences", min=0, help="Show each cited passage as its N sentences closest to the question (0: whole).")] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer in tokens.")] = 256,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="DPO epochs (default: the trainer's).")] = None,
    learning_rate: Annotated[Optional[float], typer.Option("--learning-rate", min=0.0, help="DPO learning rate (default: the trainer's).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """DPO on real human preferences: an adapter trained on experts' revisions (chosen) over the original answers
    (rejected) of part of ExpertQA's questions, served by llama.cpp; on the rest, how often its answer beats the
    base generator's, by a reward model trained on the same questions and by token F1 against the revision."""
    from dataclasses import replace

    from eval.expertqa import run_expertqa_dpo
    from feedback.reward import RewardTrainingArgs
    from feedback.train_generator import GeneratorTrainingArgs

    changes = {"epochs": epochs} if epochs else {}
    dpo_args = replace(GeneratorTrainingArgs(), seed=seed, **changes, **({"learning_rate": learning_rate} if learning_rate else {}))
    report = run_expertqa_dpo(
        expertqa, holdout, generator, dpo_args, replace(RewardTrainingArgs(), seed=seed), evidence_sentences, limit,
        max_new_tokens, log=lambda line: console.print(f"[dim]{line}[/]", markup=True),
    )
    table = Table("win rate of the adapter over the base", "rate", "95% CI", "wins / ties / losses")
    for label, key in (("by the reward model", "win_rate_by_reward"), ("by token F1 vs the revised answer", "win_rate_by_f1")):
        w = report[key]
        table.add_row(label, f"{w['rate']:.4f}", f"{w['ci95'][0]:.4f} .. {w['ci95'][1]:.4f}", f"{w['wins']} / {w['ties']} / {w['losses']}")
    console.print(table)
    console.print(
        f"{report['train_pairs']} pairs from {report['questions']['train']} questions, DPO {report['dpo']['train_seconds']} s; "
        f"{report['questions']['answered']} of {report['questions']['held_out']} held-out questions answered; reward model prefers the revision in "
        f"{_figure(report['reward']['pair_accuracy'])} of {report['reward']['held_out_pairs']} held-out pairs; "
        f"mean F1 vs revised {report['mean_f1_vs_revised']['base']} (base) -> {report['mean_f1_vs_revised']['dpo']} (adapter)",
        markup=False,
    )
    if json_out:
        _write_json(json_out, report)


@eval_app.command("judge")
@reports_errors(ValueError, RuntimeError)
def eval_judge(
    expertqa: Annotated[Path, typer.Option("--expertqa", help="ExpertQA's lfqa folder (rand_val.jsonl, domain_val.jsonl).")],
    judge: Annotated[str, typer.Option("--judge", help="'local' (a local GGUF generator in-process) or an OpenAI-compatible server's URL ending in /v1.")] = "local",
    scores: Annotated[Optional[Path], typer.Option("--scores", help="A report this command wrote: its judge scores are analysed again (e.g. another --labelled share) instead of judging anew.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="A local generator's name or GGUF (default: the configured generator), or the server's model name.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=4, help="Judge N claims (a seeded random sample).")] = None,
    labelled: Annotated[float, typer.Option("--labelled", min=0.01, max=0.9, help="Share of the claims whose expert label calibration may use.")] = 0.3,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Samples of labelled and unlabelled claims (with replacement) the coverage is counted over.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """How far the judge can be trusted: its ragas faithfulness of ExpertQA claims by their cited passages against
    the experts' support labels (accuracy, Cohen's kappa, failures), and the support rate calibrated by a share of
    the expert labels (prediction-powered inference), with how often its 95% interval covers the experts' rate."""
    from eval.expertqa import FILES, judge_agreement, run_expertqa_judge

    if scores is not None:
        try:
            report = json.loads(scores.read_text())
            report |= judge_agreement(report["rows"], labelled, repeats, seed)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            fail(f"{scores}: not a report of eval judge ({type(exc).__name__}: {exc})")
    else:
        missing = [name for name in FILES if not (expertqa / name).is_file()]
        if missing:
            fail(f"{expertqa}: no {', '.join(missing)} (an ExpertQA lfqa folder)")
        llm, judge_id = _judge_llm(judge, judge_model)
        report = run_expertqa_judge(expertqa, llm, judge_id, limit, labelled, repeats, seed, log=lambda line: console.print(f"[dim]{line}[/]"))
    a, c, cov = report["agreement"], report["calibrated"], report["coverage"]
    console.print(
        f"{report['scored']} of {report['claims']} claims judged ({report['failures']} failures, {report['judge_seconds']} s); "
        f"accuracy {a['accuracy']:.4f}, Cohen's kappa {_figure(None if a['cohen_kappa'] is None else round(a['cohen_kappa'], 4))}; "
        f"experts' support rate {report['expert_support_rate']}, judge's mean {report['judge_mean_faithfulness']}, "
        f"calibrated {c['estimate']:.4f} (95% CI {c['ci95'][0]:.4f} .. {c['ci95'][1]:.4f}; labels alone {c['classical']['ci95'][0]:.4f} .. {c['classical']['ci95'][1]:.4f}); "
        f"coverage over {cov['repeats']} samples of {cov['labelled']} labelled and {cov['unlabelled']} unlabelled claims: {cov['ppi']} "
        f"(mean width {cov['mean_width_ppi']}; labels alone {cov['classical']}, width {cov['mean_width_classical']})",
        markup=False,
    )
    if json_out:
        _write_json(json_out, report)


@eval_app.command("runs")
def eval_runs(
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Only runs on this collection.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N runs.")] = 20,
) -> None:
    """Stored `eval qa` runs and reranker gates' rankings, newest first: questions, models and headline metrics."""
    from citeloop.db import session_scope
    from eval.runs import RANKING, list_runs

    with session_scope() as session:
        runs = list_runs(session, {collection} if collection else None, limit)
    table = Table("run", "when", "collection", "questions", "generator", "reranker", "answer_f1", "citation_precision", "decline_rate_answerable", "ndcg@10")
    for run in runs:
        m = run.metrics
        table.add_row(
            run.id, run.created_at.strftime("%Y-%m-%d %H:%M"), run.collection,
            f"{run.questions if run.config.get('kind') == RANKING else Path(run.questions).name} ({m.get('n', m.get('queries'))})",
            str(run.models.get("generator", "-")), str(run.models.get("reranker") or "-"), _figure(m.get("answer_f1")),
            _figure(m.get("citation_precision")), _figure(m.get("decline_rate_answerable")), _figure(m.get("ndcg@10")),
        )
    console.print(table)


@eval_app.command("compare")
@reports_errors()
def eval_compare(
    run_a: Annotated[str, typer.Argument(help="The run compared against (e.g. the base model's).")],
    run_b: Annotated[str, typer.Argument(help="The run compared (e.g. the candidate's).")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the comparison here.")] = None,
) -> None:
    """B against A: each metric's difference, with a paired bootstrap 95% interval over the questions both runs
    answered where the metric has a value per question, and the questions whose answer F1 (a ranking's nDCG@10)
    moved most."""
    from citeloop.db import session_scope
    from eval.runs import compare_runs, get_run

    with session_scope() as session:
        comparison = compare_runs(get_run(session, run_a), get_run(session, run_b))
    if not comparison["same_questions"]:
        console.print(f"[yellow]the runs answered different question sets: {comparison['shared_questions']} questions in common[/]")
    if not comparison["same_judge"]:
        console.print(f"[yellow]different judges scored the runs ({run_a}: {_figure(comparison['a']['judge'])}, {run_b}: {_figure(comparison['b']['judge'])}): judged metrics do not compare[/]")
    table = Table("metric", run_a, run_b, "B - A", "paired 95% CI (questions)")
    for name, m in comparison["metrics"].items():
        ci = f"{m['ci95'][0]:+.4f} .. {m['ci95'][1]:+.4f} ({m['paired_questions']})" if "ci95" in m else "-"
        table.add_row(name, _figure(m["a"]), _figure(m["b"]), f"{m['difference']:+.4f}", ci)
    console.print(table)
    by = comparison["changed_by"]
    for q in comparison["changed_most"]:
        console.print(f"{q['id']}: {by} {q[by]['a']} -> {q[by]['b']}: {q['question']}", markup=False)
    if json_out:
        _write_json(json_out, comparison)


@eval_app.command("calibrate")
@reports_errors(ValueError)
def eval_calibrate(
    run_id: Annotated[str, typer.Argument(help="The stored run whose judged metrics are calibrated.")],
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="JSONL rows {id, METRIC: 0|1, ...}: curators' labels of some of the run's answers (default: those stored with the run).")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the calibrated metrics here.")] = None,
) -> None:
    """Each judged metric the curators labelled, corrected by the judge's measured error on their labels
    (prediction-powered inference): the judge's mean, the calibrated estimate with its 95% interval, the interval of
    the labels alone, and the judge's agreement with the curators (accuracy, Cohen's kappa). The labelled answers
    must be a random sample of the run's for the interval to hold."""
    from citeloop.db import session_scope
    from eval.calibration import calibrate_run, read_labels
    from eval.labels import run_labels

    run = _stored_run(run_id)
    if labels is None:
        with session_scope() as session:
            curated = run_labels(session, run_id)
        if not curated:
            fail(f"run {run_id} has no stored labels: add some (citeloop eval label {run_id} FILE, POST /v1/evals/{run_id}/labels) or give --labels FILE")
    else:
        curated = read_labels(labels)
    calibrated = calibrate_run(run.rows, set(run.failures), curated)
    questions = {str(r["id"]) for r in run.rows}
    for metric, by_id in curated.items():
        if unmatched := sorted(set(by_id) - questions):
            console.print(f"{len(unmatched)} {metric} label(s) name no question of {run_id}, e.g. {', '.join(unmatched[:3])}", style="yellow", markup=False)
    source = labels.name if labels else "the stored labels"
    table = Table("metric", "judge", "calibrated", "95% CI", "labels alone", "labelled", "accuracy", "Cohen's kappa", title=f"{run_id}: calibrated by {source}")
    for metric, c in calibrated.items():
        if c is None:
            table.add_row(metric, _figure(run.metrics.get(metric)), "not calibrated: fewer than 2 labelled answers with a judge score, or none unlabelled", "", "", "", "", "")
            continue
        a = c["agreement"]
        table.add_row(
            metric, f"{c['judge_mean']:.4f}", f"{c['estimate']:.4f}", f"{c['ci95'][0]:.4f} .. {c['ci95'][1]:.4f}",
            f"{c['classical']['ci95'][0]:.4f} .. {c['classical']['ci95'][1]:.4f}", str(c["n_labelled"]), f"{a['accuracy']:.4f}",
            _figure(None if a["cohen_kappa"] is None else round(a["cohen_kappa"], 4)),
        )
    console.print(table)
    if json_out:
        _write_json(json_out, {"run_id": run_id, "labels": str(labels) if labels else "stored", "calibrated": calibrated})


@eval_app.command("label")
@reports_errors(ValueError)
def eval_label(
    run_id: Annotated[str, typer.Argument(help="The stored run whose answers were labelled.")],
    labels: Annotated[Path, typer.Argument(help="JSONL rows {id, METRIC: 0|1, ...}: curators' labels of some of its answers.")],
) -> None:
    """Store curators' labels of a run's answers with the run (`eval calibrate RUN` then reads them); a label of a
    question and metric already labelled replaces the earlier one. All are stored, or none."""
    from citeloop.db import session_scope
    from eval.calibration import read_labels
    from eval.labels import add_labels

    curated = read_labels(labels)
    run = _stored_run(run_id)
    with session_scope() as session:
        labelled = add_labels(session, run, curated, "cli")
    console.print(f"run {run_id}: labelled " + ", ".join(f"{metric} {n}" for metric, n in labelled.items()), markup=False)


@eval_app.command("report")
@reports_errors()
def eval_report(
    run_id: Annotated[str, typer.Argument(help="The stored run reported on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file written.")],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="A stored run to compare against (e.g. the base model's).")] = None,
) -> None:
    """A stored run as one self-contained HTML page (opens offline): summary cards, distributions per question,
    retrieval stages, the comparison with --baseline, and the worst-answered questions with their sources."""
    run = _stored_run(run_id)
    _write_report(out, run, _stored_run(baseline) if baseline else None)
