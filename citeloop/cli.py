"""The `citeloop` command line: one command per job."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import citeloop  # noqa: F401  (offline switches first)
from feedback.cross_encoder_trainer import RerankerTrainingArgs

app = typer.Typer(help="citeloop: grounded question answering over your documents.", no_args_is_help=True)
collections_app = typer.Typer(help="List and delete collections.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate retrieval and answers.", no_args_is_help=True)
app.add_typer(collections_app, name="collections")
app.add_typer(eval_app, name="eval")
train_app = typer.Typer(help="Train models from labelled data.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="API keys: create, revoke, list.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

console = Console()
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs and greps
TRAINING_DEFAULTS = RerankerTrainingArgs()  # the CLI's training options default to the trainer's own


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (.md .rst .txt .html .pdf, corpus.jsonl[.gz], JSONL rows).")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to add the documents to.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Add or update documents; unchanged files are skipped, changed files replace their chunks."""
    from retrieval.ingest import IngestError, ingest as run_ingest
    from retrieval.readers import read_paths

    try:
        report = run_ingest(read_paths(paths), collection, show_progress=not quiet)
    except IngestError as exc:
        fail(str(exc))
    for skipped in report.skipped:
        err.print(f"[yellow]skipped[/] {skipped.name}: {skipped.reason}")
    console.print(
        f"collection [bold]{collection}[/]: {len(report.ingested)} ingested, {report.unchanged} unchanged, "
        f"{len(report.skipped)} skipped; {report.chunks_embedded} chunks embedded, {report.total_chunks} in the index "
        f"({report.seconds:.1f} s)"
    )


@app.command("delete-document")
def delete_document(
    doc_ids: Annotated[list[str], typer.Argument(help="Document ids as `collections list --documents` shows them.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
) -> None:
    """Remove documents from a collection and from both indexes."""
    from retrieval.ingest import IngestError, delete_documents

    try:
        report = delete_documents(collection, doc_ids)
    except IngestError as exc:
        fail(str(exc))
    console.print(f"deleted {len(report.deleted)} document(s); {report.total_chunks} chunks remain in '{collection}'")


@collections_app.command("list")
def collections_list() -> None:
    """Collections with their document and chunk counts."""
    from citeloop.catalog import list_collections

    table = Table("collection", "documents", "chunks", "index build", "dense index", "updated")
    for c in list_collections():
        table.add_row(c.name, str(c.documents), str(c.chunks), c.build_id or "-", c.dense_index or "-", c.updated or "-")
    console.print(table)


@collections_app.command("delete")
def collections_delete(
    name: Annotated[str, typer.Argument(help="Collection to delete with all its documents and indexes.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a collection, its documents and its index files."""
    from retrieval.ingest import delete_collection

    if not yes and not typer.confirm(f"Delete collection '{name}' and all its documents?"):
        raise typer.Exit(1)
    if not delete_collection(name):
        fail(f"no collection named '{name}'")
    console.print(f"deleted collection '{name}'")


@app.command()
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

    from citeloop.errors import UnknownCollectionError
    from retrieval.retriever import MODES, CollectionRetriever

    if mode not in MODES:
        fail(f"--mode must be one of {', '.join(MODES)}")
    filters = None
    if filter_:
        try:
            filters = json.loads(filter_)
        except json.JSONDecodeError as exc:
            fail(f"--filter is not valid JSON: {exc.msg}")
        if not isinstance(filters, dict):
            fail("--filter must be a JSON object")
    try:
        results = CollectionRetriever(collection).search(query, k=k, mode=mode, filters=filters)  # type: ignore[arg-type]
    except UnknownCollectionError as exc:
        fail(str(exc))
    if as_json:
        console.print_json(json.dumps([asdict(r) for r in results]))
        return
    table = Table("#", "score", "stages", "document", "text")
    for r in results:
        stages = " ".join(f"{name}:{s.rank}" for name, s in r.stages.items())
        snippet = " ".join(r.text.split())[:160]
        table.add_row(str(r.rank), f"{r.score:.4f}", stages, r.doc_id, snippet)
    console.print(table)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, max=50, help="Sources given to the generator.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, citations and contexts as JSON.")] = False,
    remote: Annotated[Optional[str], typer.Option("--remote", envvar="CITELOOP_REMOTE_URL", help="Ask a citeloop server (URL) instead of answering here.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", envvar="CITELOOP_API_KEY", help="API key for --remote.")] = None,
) -> None:
    """Answer from the collection's documents, with verified [n] citations (or an explicit abstention)."""
    from api.client import CiteloopError

    answer = None
    try:
        events = _remote_answer_events(remote, key, collection, question, top_k) if remote else _answer_events(collection, question, top_k)
        for name, data in events:
            if name == "token" and stream and not as_json:
                console.print(data["text"], end="", markup=False, highlight=False, soft_wrap=True)
            elif name == "error":
                raise CiteloopError(502, data["error"]["code"], data["error"]["message"])
            elif name == "done":
                answer = data
    except CiteloopError as exc:
        if stream:
            console.print()
        fail(exc.message)
    assert answer is not None
    if as_json:
        console.print_json(json.dumps(answer))
        return
    if stream:
        console.print()
        if answer["abstained"]:
            console.print("[yellow](withdrawn: this draft is not an answer)[/]")
    if answer["abstained"] or not stream:
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


def _answer_events(collection: str, question: str, top_k: int | None):
    """The local pipeline's events in the API's shape: ("token", {"text"}) ... ("done", answer dict)."""
    from api.client import CiteloopError
    from citeloop.modelpkg import ModelPackageError
    from generation.engines import GenerationError
    from generation.pipeline import AnswerPipeline, DoneEvent, QuestionError, TokenEvent
    from citeloop.errors import UnknownCollectionError

    try:
        for event in AnswerPipeline(collection).stream(question, top_k):
            if isinstance(event, TokenEvent):
                yield "token", {"text": event.text}
            elif isinstance(event, DoneEvent):
                yield "done", event.answer.to_dict()
    except (QuestionError, UnknownCollectionError, GenerationError, ModelPackageError) as exc:
        raise CiteloopError(1, type(exc).__name__, str(exc)) from None


def _remote_answer_events(url: str, key: str | None, collection: str, question: str, top_k: int | None):
    import httpx

    from api.client import CiteloopError, Client

    if not key:
        fail("--remote needs --key (or CITELOOP_API_KEY)")
    try:
        with Client(url, key) as client:
            yield from client.ask_stream(collection, question, top_k)
    except httpx.TransportError as exc:
        raise CiteloopError(0, "unreachable", f"cannot reach {url}: {exc}") from None


@eval_app.command("qa")
def eval_qa(
    questions: Annotated[Path, typer.Argument(help="JSONL rows {id, user_input, reference?, reference_answers?, reference_doc_ids?}.")],
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Answer from this collection.")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Or a BEIR directory, ingested once into an eval collection.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="N questions only.")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip the first N questions (e.g. tune on 0-99, report on 100-199).")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and per-question rows here.")] = None,
) -> None:
    """Answer quality: token F1, citation precision/recall, context recall, abstention, latency."""
    from eval.beir import BeirFormatError
    from eval.qa import QuestionsFormatError, evaluate_qa, load_questions
    from eval.retrieval import ensure_eval_collection
    from generation.engines import GenerationError
    from citeloop.modelpkg import ModelPackageError
    from generation.pipeline import AnswerPipeline
    from citeloop.progress import progress_bar
    from citeloop.errors import UnknownCollectionError

    if (collection is None) == (corpus is None):
        fail("give exactly one of --collection or --corpus")
    try:
        rows = load_questions(questions, limit, offset)
        name = collection or ensure_eval_collection(corpus, show_progress=True)
        pipeline = AnswerPipeline(name)
        with progress_bar("answering", len(rows), enabled=True) as advance:
            report = evaluate_qa(rows, pipeline.answer, on_row=lambda _: advance(1))
    except (QuestionsFormatError, BeirFormatError, UnknownCollectionError, GenerationError, ModelPackageError, ValueError) as exc:
        fail(str(exc))
    table = Table("metric", "value", title=f"{questions} on {name}")
    for metric, value in report["metrics"].items():
        table.add_row(metric, "-" if value is None else str(value))
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")


@eval_app.command("retrieval")
def eval_retrieval(
    directory: Annotated[Path, typer.Argument(help="BEIR directory: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv.")],
    split: Annotated[str, typer.Option("--split", help="Which qrels file to score.")] = "test",
    stages: Annotated[str, typer.Option("--stages", help="Comma-separated: bm25,dense,hybrid,rerank.")] = "bm25,dense,hybrid",
    reranker: Annotated[str, typer.Option("--reranker", help="Version id for the rerank stage, or 'active'.")] = "active",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 per stage on a BEIR-format data set."""
    from citeloop.registry import RegistryError, get_version
    from eval.beir import BeirFormatError
    from eval.retrieval import evaluate_retrieval

    names = [s.strip() for s in stages.split(",") if s.strip()]
    try:
        version = get_version(reranker, kind="reranker") if "rerank" in names and reranker != "active" else None
        metrics = evaluate_retrieval(directory, split, names, show_progress=True, reranker=version)
    except (BeirFormatError, ValueError, RegistryError) as exc:
        fail(str(exc))
    table = Table("stage", "nDCG@10", "Recall@100", "MRR@10", "queries", title=f"{directory} ({split})")
    for stage, m in metrics.items():
        table.add_row(stage, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}", str(m["queries"]))
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")


@train_app.command("reranker")
def train_reranker_command(
    beir: Annotated[Path, typer.Option("--beir", help="BEIR directory whose qrels label the training queries.")],
    split: Annotated[str, typer.Option("--split", help="Qrels split to train on (part is held out for the gate).")] = "train",
    promote: Annotated[bool, typer.Option("--promote", help="Promote the candidate if it passes the gate.")] = False,
    loss: Annotated[str, typer.Option("--loss", help="mnrl, cached-mnrl or bce.")] = TRAINING_DEFAULTS.loss,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = TRAINING_DEFAULTS.epochs,
    learning_rate: Annotated[float, typer.Option("--lr")] = TRAINING_DEFAULTS.learning_rate,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = TRAINING_DEFAULTS.batch_size,
    head_learning_rate: Annotated[float, typer.Option("--head-lr", help="Learning rate of the fresh head.")] = TRAINING_DEFAULTS.head_learning_rate,
    frozen_layers: Annotated[int, typer.Option("--frozen-layers", min=0, help="Bottom encoder layers kept fixed.")] = TRAINING_DEFAULTS.frozen_layers,
    hard_negatives: Annotated[int, typer.Option("--hard-negatives", min=0)] = TRAINING_DEFAULTS.hard_negatives,
    in_batch_negatives: Annotated[int, typer.Option("--in-batch-negatives", min=1, help="MNRL: other queries' passages per query.")] = TRAINING_DEFAULTS.in_batch_negatives,
    bf16: Annotated[
        Optional[bool], typer.Option("--bf16/--no-bf16", help="bfloat16 autocast (default: on with a bf16 CUDA GPU, or on a CPU with native bf16 where a probe step on 4 training rows runs >= 1.25x faster in bf16).")
    ] = TRAINING_DEFAULTS.bf16,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=16, help="Training truncation of query + chunk (serving keeps rerank_max_tokens).")] = TRAINING_DEFAULTS.max_tokens,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Cap on optimiser steps (-1: none).")] = TRAINING_DEFAULTS.max_steps,
    seed: Annotated[int, typer.Option("--seed")] = TRAINING_DEFAULTS.seed,
) -> None:
    """Train a cross-encoder reranker on a BEIR collection, gate it on held-out queries, optionally promote it."""
    from citeloop.registry import RegistryError
    from eval.beir import BeirFormatError
    from feedback.reranker_loop import train_from_beir
    from feedback.train_reranker import TrainingDataError

    if loss not in ("mnrl", "cached-mnrl", "bce"):
        fail(f"--loss must be mnrl, cached-mnrl or bce, not '{loss}'")
    args = replace(
        TRAINING_DEFAULTS,
        loss=loss, epochs=epochs, learning_rate=learning_rate, head_learning_rate=head_learning_rate, frozen_layers=frozen_layers,
        hard_negatives=hard_negatives, in_batch_negatives=in_batch_negatives, bf16=bf16, batch_size=batch_size, max_tokens=max_tokens, max_steps=max_steps,
        seed=seed,
    )
    try:
        report = train_from_beir(beir, split, args, promote_if_better=promote, show_progress=True)
    except (BeirFormatError, TrainingDataError, RegistryError, ValueError) as exc:
        fail(str(exc))
    verdict = "[green]passed[/]" if report.decision.passed else "[red]failed[/]"
    console.print(f"candidate [bold]{report.version.id}[/] ({report.version.metrics.get('train_seconds')} s training): gate {verdict}: {report.decision.reason}")
    if report.promoted:
        console.print(f"promoted {report.version.id}: collection '{report.version.collection}' now reranks with it")
    elif promote:
        console.print("not promoted: the active model (or hybrid retrieval) keeps serving")


@models_app.command("list")
def models_list(
    collection: Annotated[Optional[str], typer.Option("--collection", "-c")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind")] = None,
) -> None:
    """Registered model versions with their status and key figures."""
    from citeloop.registry import list_versions

    versions = list_versions(collection=collection, kind=kind)
    if not versions:
        console.print("no model versions registered (train one: citeloop train reranker --beir DIR)")
        return
    table = Table("version", "collection", "kind", "status", "parent", "snapshot", "val nDCG@10", "gate", "created")
    for v in versions:
        gate = v.metrics.get("gate", {})
        table.add_row(
            v.id, v.collection, v.kind, v.status, v.parent_id or "-", v.snapshot_id[:12],
            str(v.metrics.get("val_ndcg@10", "-")), "passed" if gate.get("passed") else ("failed" if gate else "-"),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@models_app.command("promote")
def models_promote(version_id: Annotated[str, typer.Argument(help="Version id from `models list`.")]) -> None:
    """Gate a version against the active one on its held-out queries and promote it if it is better."""
    from citeloop.registry import RegistryError, get_version, promote, record_metrics
    from feedback.reranker_loop import gate_record, run_gate

    try:
        version = get_version(version_id)
        if version.status == "active":
            fail(f"model version '{version_id}' is already active")
        decision = run_gate(version, show_progress=True)
        record_metrics(version_id, {"gate": gate_record(decision)})
        if not decision.passed:
            fail(f"gate failed, '{version_id}' not promoted: {decision.reason}")
        promote(version_id)
    except (RegistryError, ValueError) as exc:
        fail(str(exc))
    console.print(f"promoted {version_id}: {decision.reason}")


@models_app.command("rollback")
def models_rollback(
    kind: Annotated[str, typer.Argument(help="reranker or generator.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
) -> None:
    """Retire the active version and re-activate the one before it (or none: the stage below serves)."""
    from citeloop.registry import RegistryError, rollback

    try:
        restored = rollback(collection, kind)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"'{collection}' {kind}: now {restored.id if restored else 'none (the stage below serves)'}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key (erasure and audit go by this name).")],
    role: Annotated[str, typer.Option("--role", help="reader, curator or admin.")],
    collections: Annotated[str, typer.Option("--collections", help="Comma-separated collection names, or '*' for all.")],
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from citeloop.keys import KeyManagementError, create_key

    try:
        key = create_key(name, role, collections.split(","))
    except KeyManagementError as exc:
        fail(str(exc))
    console.print(key, markup=False, highlight=False)


@keys_app.command("bootstrap")
def keys_bootstrap() -> None:
    """Create a first admin key (all collections) when no admin key exists, and print it once."""
    from citeloop.keys import create_key, has_admin_key, list_keys

    if has_admin_key():
        console.print("an admin key exists already (`citeloop keys list`)")
        return
    taken = {k.name for k in list_keys()}
    name, n = "admin", 1
    while name in taken:  # an earlier admin key was revoked; keep its name for the audit trail
        n += 1
        name = f"admin-{n}"
    key = create_key(name, "admin", ["*"])
    console.print(f"created admin key '{name}' (shown only now; keep it):\n{key}", markup=False, highlight=False)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: every later request with it answers 401."""
    from citeloop.keys import KeyManagementError, revoke_key

    try:
        revoke_key(name)
    except KeyManagementError as exc:
        fail(str(exc))
    console.print(f"revoked '{name}'")


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their role, collections and state (never the key itself)."""
    from citeloop.keys import list_keys

    table = Table("name", "role", "collections", "prefix", "created", "revoked")
    for k in list_keys():
        table.add_row(k.name, k.role, ",".join(k.collections), k.prefix + "…", f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-")
    console.print(table)


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default CITELOOP_HOST).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default CITELOOP_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from citeloop.config import get_settings

    settings = get_settings()
    uvicorn.run("api.app:create_app", factory=True, host=host or settings.host, port=port or settings.port, workers=workers)


if __name__ == "__main__":
    app()
