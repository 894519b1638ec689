"""Evaluation set commands: `evalsets add|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console

evalsets_app = typer.Typer(help="Evaluation sets: labelled queries a collection's models are gated on.", no_args_is_help=True)


@evalsets_app.command("add")
@reports_errors()
def evalsets_add(
    collection: Annotated[str, typer.Argument(help="The collection the set's ids name documents or chunks of.")],
    name: Annotated[str, typer.Option("--name", help="Name of the set in the collection.")],
    beir: Annotated[Optional[Path], typer.Option("--beir", help="BEIR directory: queries.jsonl and qrels/SPLIT.tsv (document ids).")] = None,
    split: Annotated[str, typer.Option("--split", help="Qrels split of --beir.")] = "test",
    rows: Annotated[
        Optional[Path],
        typer.Option("--rows", help='JSONL of ragas-style rows: user_input + reference_doc_ids (or reference_chunk_ids), a reference answer for the generator gate; "answerable": false rows name no ids.'),
    ] = None,
) -> None:
    """Store an evaluation set; training from feedback never trains on its questions."""
    from citeloop.db import session_scope
    from eval.beir import load_split
    from eval.jsonl import json_lines
    from feedback.evalsets import EvalSetError, LabelledRows, add_evalset, evalset_from_rows

    if (beir is None) == (rows is None):
        fail("give one of --beir DIR or --rows FILE")
    if beir is not None:
        data = load_split(beir, split)
        labelled = LabelledRows(data.queries, data.qrels, "doc", [])
    else:
        if not rows.is_file():
            fail(f"{rows}: no such file")
        labelled = evalset_from_rows([row for _, row in json_lines(rows, EvalSetError)], f"{rows}: row")
    with session_scope() as session:
        info = add_evalset(session, collection, name, labelled.queries, labelled.qrels, labelled.level, "cli", labelled.qa_rows)
    console.print(
        f"evaluation set [bold]{info.id}[/] '{info.name}' in '{collection}': {len(info.queries)} retrieval queries ({info.level} ids), "
        f"{len(info.qa_rows)} QA questions ({sum(not r['references'] for r in info.qa_rows)} unanswerable)"
    )


@evalsets_app.command("list")
@reports_errors()
def evalsets_list(collection: Annotated[str, typer.Argument(help="The collection.")]) -> None:
    """A collection's evaluation sets, uploaded and saved by training runs."""
    from citeloop.db import session_scope
    from feedback.evalsets import list_evalsets

    with session_scope() as session:
        sets = list_evalsets(session, collection)
    if not sets:
        console.print(f"'{collection}' has no evaluation sets (add one: citeloop evalsets add {collection} --name NAME --rows FILE)")
        return
    table = Table("id", "name", "level", "queries", "QA questions", "by", "created")
    for s in sets:
        table.add_row(s.id, s.name, s.level, str(len(s.queries)), str(len(s.qa_rows)), s.created_by, f"{s.created_at:%Y-%m-%d %H:%M}")
    console.print(table)
