"""Feedback commands: `feedback preview` (what the next training run would read)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.errors import reports_errors
from cli.output import console

feedback_app = typer.Typer(help="Stored feedback as training data.", no_args_is_help=True)


@feedback_app.command("preview")
@reports_errors()
def feedback_preview(
    collection: Annotated[str, typer.Argument(help="The collection whose feedback would train its reranker.")],
    examples: Annotated[int, typer.Option("--examples", min=0, help="Rows to show.")] = 5,
) -> None:
    """What the next reranker training run would train on: counts per signal, example rows, what the gates dropped.
    Nothing is stored."""
    from citeloop.config import get_settings
    from citeloop.db import session_scope
    from feedback.evalsets import list_evalsets, uploaded_query_keys
    from feedback.pii import feedback_scrubber
    from feedback.trainset import build_training_set
    from retrieval.retriever import CollectionRetriever

    settings = get_settings()
    scrub = feedback_scrubber(CollectionRetriever(collection, settings))
    with session_scope(settings) as session:
        uploaded = list_evalsets(session, collection, uploaded_only=True)
        training_set = build_training_set(session, collection, scrub, settings.eval_holdout, 0, uploaded_query_keys(session, collection))
        session.rollback()  # a preview stores nothing
    table = Table("signal", "count")
    for name, count in sorted(training_set.counts.items()):
        table.add_row(name, str(count))
    console.print(table)
    if training_set.dropped:
        dropped = Table("dropped by", "count")
        for name, count in sorted(training_set.dropped.items()):
            dropped.add_row(name, str(count))
        console.print(dropped)
    for line in training_set.examples[:examples]:
        console.print(line, markup=False, highlight=False)
    gate = f"evaluation set '{uploaded[-1].name}'" if uploaded else f"the held-out share ({training_set.counts['held_out_queries']} questions)"
    needed = settings.training_min_queries
    verdict = "enough to train" if training_set.labelled_queries >= needed else f"too few to train (at least {needed} needed)"
    console.print(f"{training_set.labelled_queries} judged questions with a relevant chunk: {verdict}; gated on {gate}")
