"""Shared fixtures. Real parts throughout: the bundled MiniLM, SQLite files or the local PostgreSQL, FAISS, bm25s."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import citeloop  # noqa: F401
from citeloop.config import Settings
from citeloop.db import dispose_engine

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO / "corpora" / "scifact"
PG_URL = os.environ.get("CITELOOP_TEST_PG_URL")


@contextmanager
def _pg_database() -> Iterator[str]:
    """A fresh database on the test server, so runs never see each other's rows; dropped afterwards."""
    name = f"citeloop_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(Settings(database_url=PG_URL).sqlalchemy_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        dispose_engine(Settings(database_url=url))
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Iterator[Settings]:
    """Settings on a fresh database of each kind. PostgreSQL runs when CITELOOP_TEST_PG_URL is set and
    then must be reachable: an unreachable server fails the test instead of skipping it."""
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("CITELOOP_TEST_PG_URL is not set (CI sets it)")
        with _pg_database() as url:
            yield Settings(data_dir=tmp_path / "var", database_url=url)
        return
    yield Settings(data_dir=tmp_path / "var")


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "var")


def scifact_sample(n_docs: int) -> list[dict]:
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n_docs), fh)]


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    """A BEIR directory: the SciFact documents cited by 40 train claims plus 160 others."""
    qrels: dict[str, list[str]] = {}
    for line in (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, []).append(did)
    chosen = dict(list(qrels.items())[:40])
    wanted = {d for docs in chosen.values() for d in docs}
    rows, others = [], 0
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in wanted:
                rows.append(row)
            elif others < 160:
                rows.append(row)
                others += 1
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    with open(root / "corpus.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    queries = {json.loads(l)["_id"]: json.loads(l) for l in (SCIFACT / "queries.jsonl").read_text().splitlines()}
    with open(root / "queries.jsonl", "w") as fh:
        fh.writelines(json.dumps(queries[q]) + "\n" for q in chosen)
    with open(root / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q}\t{d}\t1\n" for q, docs in chosen.items() for d in docs)
    return root


def judge_against_qrels(settings: Settings, beir: Path, split: str = "test", k: int = 5) -> str:
    """The BEIR directory's evaluation collection, with each query's top-k hybrid results judged against its
    qrels by a curator key (stored events, as the API stores them). Returns the collection's name."""
    from citeloop.db import session_scope
    from citeloop.keys import Principal
    from eval.beir import load_split
    from eval.retrieval import ensure_eval_collection
    from feedback.store import record_event, save_search
    from retrieval.retriever import CollectionRetriever

    curator = Principal("curator", "curator", ("*",))
    collection = ensure_eval_collection(beir, settings)
    data = load_split(beir, split)
    retriever = CollectionRetriever(collection, settings)
    with session_scope(settings) as session:
        for qid, text in data.queries.items():
            hits = retriever.search(text, k=k, mode="hybrid")
            search = save_search(session, collection, text, hits, {"reranker": "none"}, curator.name)
            session.flush()
            for hit in hits:
                kind = "relevant" if hit.doc_id in data.qrels[qid] else "not_relevant"
                record_event(session, kind, curator, search_id=search.id, chunk_id=hit.chunk_id)
    return collection
