"""Ingest and collection commands: `ingest`, `delete-document`, `collections list|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.errors import reports_errors
from cli.output import console, err

collections_app = typer.Typer(help="List and delete collections; training opt-out.", no_args_is_help=True)


@reports_errors()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (.md .rst .txt .html .pdf, corpus.jsonl[.gz], JSONL rows).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to add the documents to.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Add or update documents; unchanged files are skipped, changed files replace their chunks."""
    from retrieval.ingest import ingest as run_ingest
    from retrieval.readers import read_paths

    report = run_ingest(read_paths(paths), collection, show_progress=not quiet)
    for skipped in report.skipped:
        err.print(f"[yellow]skipped[/] {skipped.name}: {skipped.reason}")
    console.print(
        f"collection [bold]{collection}[/]: {len(report.ingested)} ingested, {report.unchanged} unchanged, "
        f"{len(report.skipped)} skipped; {report.chunks_embedded} chunks embedded, {report.total_chunks} in the index "
        f"({report.seconds:.1f} s)"
    )


@reports_errors()
def delete_document(
    doc_ids: Annotated[list[str], typer.Argument(help="Document ids as `collections list --documents` shows them.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
) -> None:
    """Remove documents from a collection and from both indexes."""
    from retrieval.ingest import delete_documents

    report = delete_documents(collection, doc_ids)
    console.print(f"deleted {len(report.deleted)} document(s); {report.total_chunks} chunks remain in '{collection}'")


@collections_app.command("list")
def collections_list() -> None:
    """Collections with their document and chunk counts."""
    from citeloop.catalog import list_collections

    table = Table("collection", "documents", "chunks", "index build", "dense index", "updated", "training")
    for c in list_collections():
        table.add_row(
            c.name, str(c.documents), str(c.chunks), c.build_id or "-", c.dense_index or "-", c.updated or "-",
            "opted out" if c.training_opt_out else "used",
        )
    console.print(table)


@collections_app.command("training")
@reports_errors()
def collections_training(
    name: Annotated[str, typer.Argument(help="The collection.")],
    opt_out: Annotated[bool, typer.Option("--opt-out/--opt-in", help="Keep the collection's feedback out of training sets, or let it back in.")],
) -> None:
    """Whether a collection's feedback may train models (its events are stored and exported either way)."""
    from citeloop.catalog import set_collection_training_opt_out

    set_collection_training_opt_out(name, opt_out)
    console.print(f"'{name}': feedback {'kept out of' if opt_out else 'used in'} training sets")


@collections_app.command("delete")
@reports_errors()
def collections_delete(
    name: Annotated[str, typer.Argument(help="Collection to delete with all its documents and indexes.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a collection, its documents and its index files."""
    from citeloop.errors import UnknownCollectionError
    from retrieval.ingest import delete_collection

    if not yes and not typer.confirm(f"Delete collection '{name}' and all its documents?"):
        raise typer.Exit(1)
    if not delete_collection(name):
        raise UnknownCollectionError(name)
    console.print(f"deleted collection '{name}'")
