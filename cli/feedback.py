"""Feedback commands: `feedback preview` (what the next training run would read)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console

feedback_app = typer.Typer(help="Stored feedback as training data.", no_args_is_help=True)


@feedback_app.command("preview")
@reports_errors()
def feedback_preview(
    collection: Annotated[str, typer.Argument(help="The collection whose feedback would train its models.")],
    examples: Annotated[int, typer.Option("--examples", min=0, help="Rows to show.")] = 5,
    kind: Annotated[str, typer.Option("--kind", help="reranker (labelled chunks), generator (preference pairs) or reward (rated answers).")] = "reranker",
) -> None:
    """What the next training run of that kind would train on: counts per signal, example rows, what the gates
    dropped. Nothing is stored."""
    from citeloop.config import get_settings
    from citeloop.db import session_scope
    from feedback.evalsets import list_evalsets, uploaded_query_keys
    from feedback.pii import feedback_scrubber
    from feedback.trainset import build_training_set
    from retrieval.retriever import CollectionRetriever

    if kind not in ("reranker", "generator", "reward"):
        fail(f"--kind must be reranker, generator or reward, not '{kind}'")
    settings = get_settings()
    scrub = feedback_scrubber(CollectionRetriever(collection, settings))
    if kind != "reranker":
        _preview_answers(collection, kind, scrub, examples, settings)
        return
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


def _preview_answers(collection: str, kind: str, scrub, examples: int, settings) -> None:
    """Preference pairs (generator) or rated answers (reward)."""
    from citeloop.db import session_scope
    from feedback.evalsets import uploaded_query_keys
    from feedback.pairs import build_pair_set, build_rating_set, citation_verifier

    with session_scope(settings) as session:
        evaluation = uploaded_query_keys(session, collection)
        if kind == "generator":
            # No regeneration in a preview: a flagged answer is counted as `flag_without_regeneration`; the job makes
            # its pair by regenerating the answer without the flagged source.
            built = build_pair_set(session, collection, scrub, citation_verifier(settings), None, settings.eval_holdout, 0, evaluation)
        else:
            built = build_rating_set(session, collection, scrub, settings.eval_holdout, 0, evaluation)
        session.rollback()
    for title, figures in (("signal", built.counts), ("dropped by", built.dropped)):
        if figures:
            table = Table(title, "count")
            for name, count in sorted(figures.items()):
                table.add_row(name, str(count))
            console.print(table)
    for line in built.examples[:examples]:
        console.print(line, markup=False, highlight=False)
    needed = settings.training_min_pairs
    verdict = "enough to train" if len(built.rows) >= needed else f"too few to train (at least {needed} needed)"
    if kind == "generator":
        from feedback.generator_loop import described, evaluation_questions
        from feedback.trainset import TrainingSetError

        with session_scope(settings) as session:
            try:
                questions, source = evaluation_questions(session, collection, built.eval_rows)
                gate = described(len(questions), source)
            except TrainingSetError:
                gate = "no question yet (no pair fell in the held-out share, and no evaluation set has reference answers)"
        console.print(f"{len(built.rows)} preference pairs: {verdict}; gated on {gate}")
    else:
        console.print(f"{len(built.rows)} rated answers: {verdict}; gated on {len(built.eval_rows)} held-out ratings and {len(built.eval_pairs)} pairs")
