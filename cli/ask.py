"""`search` (first-stage retrieval) and `ask` (a cited answer, here or from a citeloop server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cli.errors import fail, reports_errors
from cli.output import console

AnswerEvents = Iterator[tuple[str, Any]]  # the API's server-sent events: ("token", {"text"}) ... ("done", answer)


@reports_errors()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Results to show.")] = 10,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, dense or bm25.")] = "hybrid",
    filter_: Annotated[Optional[str], typer.Option("--filter", help='Metadata equality filter as JSON, e.g. {"lang": "en"}.')] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """First-stage retrieval: the best chunks with their per-stage scores and ranks."""
    from dataclasses import asdict

    from retrieval.retriever import MODES, CollectionRetriever

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    filters = _parse_filter(filter_) if filter_ else None
    results = CollectionRetriever(collection).search(query, k=k, mode=mode, filters=filters)  # type: ignore[arg-type]
    if as_json:
        console.print_json(json.dumps([asdict(r) for r in results]))
        return
    table = Table("#", "score", "stages", "document", "text")
    for r in results:
        stages = " ".join(f"{name}:{s.rank}" for name, s in r.stages.items())
        snippet = " ".join(r.text.split())[:160]
        table.add_row(str(r.rank), f"{r.score:.4f}", stages, r.doc_id, snippet)
    console.print(table)


def _parse_filter(text: str) -> dict:
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--filter is not valid JSON: {exc.msg}")
    if not isinstance(filters, dict):
        fail("--filter must be a JSON object")
    return filters


@reports_errors()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, max=50, help="Sources given to the generator.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, citations and contexts as JSON.")] = False,
    remote: Annotated[Optional[str], typer.Option("--remote", help="Ask a citeloop server (URL) instead of answering here (default: CITELOOP_REMOTE_URL).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="API key for --remote (default: CITELOOP_API_KEY).")] = None,
) -> None:
    """Answer from the collection's documents, with verified [n] citations (or an explicit abstention)."""
    from citeloop.config import get_settings

    settings = get_settings()
    url = remote or settings.remote_url
    if url:
        key = key or (settings.api_key.get_secret_value() if settings.api_key else None)
        if not key:
            fail("--remote needs --key (or CITELOOP_API_KEY)")
        events = _remote_answer_events(url, key, collection, question, top_k)
    else:
        events = _local_answer_events(collection, question, top_k)
    show_tokens = stream and not as_json
    try:
        answer = _final_answer(events, show_tokens)
    finally:
        if show_tokens:
            console.print()  # ends the streamed line, before an error message too
    if as_json:
        console.print_json(json.dumps(answer))
        return
    _print_answer(answer, streamed=show_tokens)


def _final_answer(events: AnswerEvents, show_tokens: bool) -> dict:
    """The done event's answer, printing tokens as they come when asked; an error event raises CiteloopError."""
    from api.client import CiteloopError

    for name, data in events:
        if name == "token" and show_tokens:
            console.print(data["text"], end="", markup=False, highlight=False, soft_wrap=True)
        elif name == "error":
            raise CiteloopError(502, data["error"]["code"], data["error"]["message"])
        elif name == "done":
            return data
    raise CiteloopError(502, "incomplete_stream", "the answer stream ended without an answer")


def _print_answer(answer: dict, streamed: bool) -> None:
    if streamed and answer["abstained"]:
        console.print("[yellow](withdrawn: this draft is not an answer)[/]")
    if answer["abstained"] or not streamed:
        console.print(answer["answer"], markup=False, highlight=False)
    if answer["abstained"]:
        from generation.pipeline import ABSTAIN_REASONS

        console.print(f"[yellow]abstained:[/] {ABSTAIN_REASONS[answer['abstain_reason']]}")
    else:
        table = Table("n", "supported", "document", "quote")
        for c in answer["citations"]:
            table.add_row(str(c["n"]), "yes" if c["supported"] else "[red]no[/]", c["title"] or c["doc_id"], " ".join(c["quote"].split())[:200])
        console.print(table)
        if answer["unsupported_sentences"]:
            console.print(f"[yellow]{len(answer['unsupported_sentences'])} sentence(s) have no supported citation[/]")
    timings = " ".join(f"{k}={v:.0f}ms" for k, v in answer["timings_ms"].items())
    console.print(f"[dim]{answer['models']['generator']} reranker={answer['models']['reranker'] or '-'} {timings}[/]")


def _local_answer_events(collection: str, question: str, top_k: int | None) -> AnswerEvents:
    """The local pipeline's events in the shape the server streams them."""
    from generation.pipeline import AnswerPipeline, DoneEvent, TokenEvent

    for event in AnswerPipeline(collection).stream(question, top_k):
        if isinstance(event, TokenEvent):
            yield "token", {"text": event.text}
        elif isinstance(event, DoneEvent):
            yield "done", event.answer.to_dict()


def _remote_answer_events(url: str, key: str, collection: str, question: str, top_k: int | None) -> AnswerEvents:
    import httpx

    from api.client import CiteloopError, Client

    try:
        with Client(url, key) as client:
            yield from client.ask_stream(collection, question, top_k)
    except httpx.TransportError as exc:
        raise CiteloopError(0, "unreachable", f"cannot reach {url}: {exc}") from None
