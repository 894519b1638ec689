"""Evaluation commands: `eval qa` (answer quality) and `eval retrieval` (ranking quality per stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console

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
