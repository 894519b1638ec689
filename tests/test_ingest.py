"""Ingestion against real storage (SQLite and PostgreSQL), real embeddings, FAISS and BM25."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from citeloop.db import Chunk, Collection, Document, IndexBuild, get_engine, session_scope
from retrieval.ingest import delete_collection, delete_documents, ingest
from retrieval.readers import read_paths
from citeloop.errors import UnknownCollectionError
from retrieval.retriever import CollectionRetriever
from tests.conftest import REPO, scifact_sample


def assert_consistent(settings, collection: str) -> list[str]:
    """The active build indexes exactly the chunks the database holds; returns the indexed doc ids."""
    with session_scope(settings) as session:
        cid = session.scalar(select(Collection.id).where(Collection.name == collection))
        build = session.scalar(select(IndexBuild).where(IndexBuild.collection_id == cid, IndexBuild.status == "active"))
        db_chunks = set(session.scalars(select(Chunk.id).join(Document).where(Document.collection_id == cid)))
        doc_ids = sorted(set(session.scalars(select(Document.doc_id).where(Document.collection_id == cid))))
    indexed = json.loads((Path(build.path) / "chunk_ids.json").read_text())
    assert set(indexed) == db_chunks and len(indexed) == len(db_chunks)
    retriever = CollectionRetriever(collection, settings)
    assert len(retriever) == len(db_chunks)
    return doc_ids


def test_schema_is_created_by_migrations(settings):
    tables = set(inspect(get_engine(settings)).get_table_names())
    assert {"collections", "documents", "chunks", "index_builds", "alembic_version"} <= tables
    if settings.sqlalchemy_url.startswith("sqlite"):
        with get_engine(settings).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_the_migrated_schema_is_the_models_schema(settings):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from citeloop.db import Base

    # Types left out: SQLite reflects a Float column as FLOAT where the model says Double; tables, columns,
    # nullability, indexes and constraints are compared.
    with get_engine(settings).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata) == []


def test_ingest_reingest_change_and_delete(settings, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fox.md").write_text("# Foxes\n\nFoxes are omnivores that eat berries and small rodents.\n")
    (docs / "lists.txt").write_text("Python lists are mutable sequences; tuples are immutable.\n")
    (docs / "bad.txt").write_bytes(b"\x00\x01binary")

    report = ingest(read_paths([docs]), "kb", settings)
    assert report.ingested == ["fox.md", "lists.txt"]
    assert [s.reason for s in report.skipped] == ["binary file, not text"]
    first_build = report.build_id
    assert assert_consistent(settings, "kb") == ["fox.md", "lists.txt"]

    # Unchanged files: a no-op that keeps the same build.
    again = ingest(read_paths([docs]), "kb", settings)
    assert again.ingested == [] and again.unchanged == 2 and again.build_id == first_build

    # A changed file replaces its chunks, and search finds the new text, not the old.
    with session_scope(settings) as session:
        old_chunks = set(session.scalars(select(Chunk.id).join(Document).where(Document.doc_id == "fox.md")))
    (docs / "fox.md").write_text("# Foxes\n\nFoxes dig burrows called dens.\n")
    changed = ingest(read_paths([docs]), "kb", settings)
    assert changed.ingested == ["fox.md"] and changed.unchanged == 1 and changed.chunks_embedded == 1
    with session_scope(settings) as session:
        new_chunks = set(session.scalars(select(Chunk.id).join(Document).where(Document.doc_id == "fox.md")))
    assert new_chunks and not (new_chunks & old_chunks)
    retriever = CollectionRetriever("kb", settings)
    for mode in ("bm25", "dense", "hybrid"):
        top = retriever.search("where do foxes live? dens burrows", k=1, mode=mode)[0]
        assert top.doc_id == "fox.md" and "dens" in top.text
        assert settings.data_dir.as_posix() not in top.text
    assert_consistent(settings, "kb")

    # Chunks point at exact spans of the stored source text.
    with session_scope(settings) as session:
        for doc in session.scalars(select(Document)):
            for chunk in doc.chunks:
                assert doc.text[chunk.char_start : chunk.char_end] == chunk.text

    # Deleting a document removes it from the database and from both indexes.
    delete_documents("kb", ["fox.md"], settings)
    assert assert_consistent(settings, "kb") == ["lists.txt"]
    retriever.refresh()  # a long-lived retriever picks up the new build
    for mode in ("bm25", "dense"):
        assert all(r.doc_id != "fox.md" for r in retriever.search("foxes dens", k=5, mode=mode))

    assert delete_collection("kb", settings)
    with pytest.raises(UnknownCollectionError):
        CollectionRetriever("kb", settings)
    assert not delete_collection("kb", settings)
    # Deleting documents of a collection that does not exist names it, and creates no collection.
    with pytest.raises(UnknownCollectionError, match="no collection named 'kb'"):
        delete_documents("kb", ["fox.md"], settings)
    with session_scope(settings) as session:
        assert session.scalars(select(Collection.name)).all() == []
    assert list(settings.index_dir.iterdir()) == []  # the collection's build directories are gone


def test_long_document_is_chunked_with_overlap_within_the_token_budget(sqlite_settings, tmp_path):
    from retrieval.embedder import load_embedder

    text = "\n\n".join(f"Paragraph {i}. " + " ".join(f"word{i}x{j}" for j in range(60)) for i in range(30))
    (tmp_path / "long.txt").write_text(text)
    settings = sqlite_settings.model_copy(update={"chunk_size": 128, "chunk_overlap": 16})
    ingest(read_paths([tmp_path / "long.txt"]), "long", settings)
    tokenizer = load_embedder(settings).tokenizer
    with session_scope(settings) as session:
        chunks = session.scalars(select(Chunk).order_by(Chunk.ordinal)).all()
    assert len(chunks) > 10
    assert all(len(tokenizer.encode(c.text, add_special_tokens=False)) <= 128 for c in chunks)
    assert all(a.char_end > b.char_start for a, b in zip(chunks, chunks[1:]))  # consecutive chunks overlap
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)


def test_metadata_filters_and_stage_scores(sqlite_settings, tmp_path):
    rows = [
        {"id": "a", "title": "Kettle", "text": "Descale the kettle with vinegar.", "metadata": {"lang": "en", "team": "home"}},
        {"id": "b", "title": "Wasserkocher", "text": "Den Wasserkocher mit Essig entkalken. kettle", "metadata": {"lang": "de", "team": "home"}},
        {"id": "c", "title": "Router", "text": "Restart the router to fix the kettle of wifi.", "metadata": {"lang": "en", "team": "it"}},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest(read_paths([tmp_path / "rows.jsonl"]), "kb", sqlite_settings)
    retriever = CollectionRetriever("kb", sqlite_settings)
    results = retriever.search("kettle", k=10, mode="hybrid")
    assert {r.doc_id for r in results} == {"a", "b", "c"}
    for r in results:
        assert "hybrid" in r.stages and r.stages["hybrid"].rank == r.rank
        assert "dense" in r.stages and -1.0 <= r.stages["dense"].score <= 1.0
    assert {r.doc_id for r in retriever.search("kettle", mode="hybrid", filters={"lang": "en"})} == {"a", "c"}
    assert {r.doc_id for r in retriever.search("kettle", mode="bm25", filters={"team": ["it"]})} == {"c"}
    assert retriever.search("kettle", filters={"lang": "fr"}) == []


def test_hnsw_index_above_the_configured_size(sqlite_settings, tmp_path):
    rows = scifact_sample(300)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = sqlite_settings.model_copy(update={"hnsw_min_chunks": 100})
    report = ingest(read_paths([tmp_path / "corpus.jsonl"]), "sci", settings)
    with session_scope(settings) as session:
        assert session.get(IndexBuild, report.build_id).dense_index == "hnsw"
    retriever = CollectionRetriever("sci", settings)
    hits = retriever.search(rows[42]["title"], k=5, mode="dense")
    assert hits[0].doc_id == rows[42]["_id"]
    filtered = retriever.search(rows[42]["title"], k=5, mode="dense", filters={"nope": 1})
    assert filtered == []


CRASH_SCRIPT = """
import sys
from citeloop.config import Settings
from retrieval.embedder import load_embedder
from retrieval.ingest import ingest
from retrieval.readers import read_paths
settings = Settings(data_dir=sys.argv[1], database_url=sys.argv[2] or None)
embedder = load_embedder(settings)  # the instance ingest() gets
if sys.argv[4] == "embedding":
    embed = embedder.embed

    def embed_then_wait(texts, show_progress=False):
        vectors = embed(texts, show_progress)
        print("embedded a batch", flush=True)
        sys.stdin.readline()  # killed here: the new chunks and vectors exist only in this process
        return vectors

    embedder.embed = embed_then_wait
print("ready", flush=True)
ingest(read_paths([sys.argv[3]]), "kb", settings)
"""


@pytest.mark.parametrize("moment", ["embedding", "writing-index"])
def test_ingest_killed_midway_keeps_previous_state(settings, tmp_path, moment):
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"id": f"old{i}", "text": f"Old document number {i} about ferns."}) + "\n" for i in range(5)))
    ingest(read_paths([first]), "kb", settings)
    before = assert_consistent(settings, "kb")

    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps(r) + "\n" for r in scifact_sample(120)))
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(settings.data_dir), settings.database_url or "", str(big), moment],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()[-2000:]
    index_dir = settings.index_dir
    deadline = time.time() + 300
    if moment == "embedding":
        assert proc.stdout.readline().strip() == b"embedded a batch", proc.stderr.read().decode()[-2000:]
    else:
        while time.time() < deadline and not any(index_dir.rglob("*.staging-*")):
            time.sleep(0.02)
    assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert assert_consistent(settings, "kb") == before
    # The next ingest completes and clears what the killed one left behind.
    report = ingest(read_paths([big]), "kb", settings)
    assert len(report.ingested) == 120
    assert len(assert_consistent(settings, "kb")) == 125
    assert list(index_dir.rglob("*.staging-*")) == []
