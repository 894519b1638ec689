"""Evaluation commands: `eval qa` (answer quality), `eval retrieval` (ranking quality per stage) and `eval
feedback-loop` (the replay harness: what feedback buys the reranker)."""

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


def _write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


@eval_app.command("qa")
@reports_errors(ValueError)
def eval_qa(
    questions: Annotated[Path, typer.Argument(help="JSONL rows {id, user_input, reference?, reference_answers?, reference_doc_ids?}.")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Answer from this collection.")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Or a BEIR directory, ingested once into an eval collection.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="N questions only.")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first N questions (e.g. tune on 0-99, report on 100-199).")] = 0,
    split: Annotated[Optional[str], typer.Option("--split", help="Only rows whose \"split\" field is this (e.g. dev, heldout).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and per-question rows here.")] = None,
) -> None:
    """Answer quality overall and per question shape: token F1, citation precision/recall, context recall, the
    decline rate on answerable and the refusal rate on unanswerable questions, latency."""
    from citeloop.progress import progress_bar
    from eval.qa import evaluate_qa, load_questions
    from eval.retrieval import ensure_eval_collection
    from generation.pipeline import AnswerPipeline

    if (collection is None) == (corpus is None):
        fail("give exactly one of --collection or --corpus")
    rows = load_questions(questions, limit, offset, split)
    name = collection or ensure_eval_collection(corpus, show_progress=True)
    pipeline = AnswerPipeline(name)
    with progress_bar("answering", len(rows), enabled=True) as advance:
        report = evaluate_qa(rows, pipeline.answer, on_row=lambda _: advance(1))
    columns = {"all": report["metrics"]} | report["by_shape"]
    table = Table("metric", *columns, title=f"{questions} on {name}")
    for metric in report["metrics"]:
        table.add_row(metric, *("-" if (value := figures[metric]) is None else str(value) for figures in columns.values()))
    console.print(table)
    if json_out:
        _write_json(json_out, report)


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
    table = Table("stage", "nDCG@10", "Recall@100", "MRR@10", "queries", title=f"{directory} ({split})")
    for stage, m in metrics.items():
        table.add_row(stage, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}", str(m["queries"]))
    console.print(table)
    if json_out:
        _write_json(json_out, metrics)


@eval_app.command("feedback-loop")
@reports_errors(ValueError, RuntimeError)
def eval_feedback_loop(
    beir: Annotated[Path, typer.Option("--beir", help="BEIR directory whose training queries a simulated curator judges.")],
    train_split: Annotated[str, typer.Option("--train-split", help="Qrels split of the queries the curator judges.")],
    test_split: Annotated[str, typer.Option("--test-split", help="Qrels split evaluated before and after (the training split: its held-out share).")],
    test_beir: Annotated[Optional[Path], typer.Option("--test-beir", help="Test queries and qrels in another folder over the same corpus.")] = None,
    noise: Annotated[float, typer.Option("--noise", min=0.0, max=1.0, help="Share of the curator's judgements flipped.")] = 0.0,
    curve: Annotated[str, typer.Option("--curve", help="Comma-separated query counts for the learning curve, e.g. 50,100,250.")] = "",
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Results the curator judges per query.")] = 10,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="The harness's own data directory (default: a new temporary one).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = RerankerTrainingArgs.epochs,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps per training (-1: none).")] = RerankerTrainingArgs.max_steps,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    base: Annotated[str, typer.Option("--base", help="Warm start: a base trained on bundled data (scifact, covidqa) that never saw --beir's, or none.")] = "none",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """What feedback buys: a simulated curator judges search results through a real server, a training job trains
    a reranker from that feedback alone, and the test queries are evaluated before and after."""
    from dataclasses import replace

    from eval.feedback_loop import run_feedback_loop

    try:
        points = [int(c) for c in curve.split(",") if c.strip()]
    except ValueError:
        fail(f"--curve must be comma-separated query counts, not '{curve}'")
    args = replace(RerankerTrainingArgs(), epochs=epochs, max_steps=max_steps)
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
