"""The API served by uvicorn in a thread of the test process, over real HTTP: the tests can then reach
`app.state.services` (the loaded collections, the generation queue) while clients talk to the server.
Real models (MiniLM, the SmolLM2 test generator) and real databases (SQLite, and PostgreSQL when set)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import update

from api.app import create_app
from api.client import CiteloopError, Client
from citeloop.config import Settings
from citeloop.db import FeedbackRecord, get_collection, session_scope
from citeloop.keys import create_key
from retrieval.ingest import delete_collection
from retrieval.retriever import CollectionRetriever
from tests.conftest import PG_URL, _pg_database
from tests.test_api import SMALL_MODEL, free_port, wait_until_ready

pytestmark = pytest.mark.slow
KETTLE = {"id": "kettle", "title": "Kettle", "text": "Descale the kettle with vinegar once a month."}
FERN = {"id": "fern", "title": "Fern", "text": "Water the fern twice a week and keep it out of direct sun."}
QUEUE_BOUND_S = 60  # an ask must be served within this once the queue is free


@dataclass
class Site:
    base: str
    app: FastAPI
    loop: asyncio.AbstractEventLoop  # the server's event loop
    keys: dict[str, str]

    def client(self, who: str) -> Client:
        return Client(self.base, self.keys[who], timeout=QUEUE_BOUND_S)

    @property
    def queue(self) -> asyncio.Lock:
        return self.app.state.services.generation_queue

    def queued(self) -> int:
        """Asks waiting for the generation queue (asyncio.Lock keeps its waiters in `_waiters`)."""
        return len(self.queue._waiters or ())


@contextmanager
def served(settings: Settings) -> Iterator[tuple[str, FastAPI, asyncio.AbstractEventLoop]]:
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), name="test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    try:
        wait_until_ready(base + "/readyz", lambda: None if thread.is_alive() else "the server thread ended")
        yield base, app, loop
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        loop.close()


@contextmanager
def database(kind: str, tmp_path) -> Iterator[Settings]:
    model = {k.removeprefix("CITELOOP_").lower(): v for k, v in SMALL_MODEL.items()}
    if kind == "sqlite":
        yield Settings(data_dir=tmp_path / "var", **model)
        return
    if not PG_URL:
        pytest.skip("CITELOOP_TEST_PG_URL is not set (CI sets it)")
    with _pg_database() as url:
        yield Settings(data_dir=tmp_path / "var", database_url=url, **model)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory) -> Iterator[Site]:
    """Collections alpha and beta; keys: root (admin, all), alpha-admin (admin of alpha only), cur (curator
    of both), ann (reader of alpha)."""
    with database(request.param, tmp_path_factory.mktemp("in-process")) as settings:
        keys = {
            "root": create_key("root", "admin", ["*"], settings),
            "alpha-admin": create_key("alpha-admin", "admin", ["alpha"], settings),
            "cur": create_key("cur", "curator", ["alpha", "beta"], settings),
            "ann": create_key("ann", "reader", ["alpha"], settings),
        }
        with served(settings) as (base, app, loop):
            root = Client(base, keys["root"])
            for name, doc in (("alpha", KETTLE), ("beta", FERN)):
                root.create_collection(name)
                root.add_documents(name, [doc])
            yield Site(base, app, loop, keys)


def status_of(call) -> int:
    try:
        call()
    except CiteloopError as exc:
        return exc.status
    return 200


def test_erasure_touches_only_the_collections_the_caller_reaches(site):
    cur, root = site.client("cur"), site.client("root")
    for name, query in (("alpha", "descale kettle"), ("beta", "water the fern")):
        found = cur.search(name, query, k=1)
        cur.judge(found["results"][0]["chunk_id"], True, search_id=found["search_id"])

    erased = site.client("alpha-admin").erase("cur")
    assert [r["kind"] for r in _export(root, "beta") if r["actor"] == "cur"] == ["relevant"]
    assert not [r for r in _export(root, "alpha") if r["actor"] == "cur"]
    assert erased["collections"] == [{"collection": "alpha", "events": 1, "answers": 0, "searches": 1, "snapshot_rows": 0}]
    assert (erased["events"], erased["answers"], erased["searches"]) == (1, 0, 1)

    erased = root.erase("cur")
    assert erased["collections"] == [{"collection": "beta", "events": 1, "answers": 0, "searches": 1, "snapshot_rows": 0}]
    assert not [r for r in _export(root, "beta") if r["actor"] == "cur"]


def test_search_and_ask_share_one_loaded_collection_and_a_deleted_one_is_404(site):
    root = site.client("root")
    root.create_collection("gamma")
    root.add_documents("gamma", [KETTLE])
    assert root.search("gamma", "kettle")["results"][0]["doc_id"] == "kettle"
    assert root.ask("gamma", "How often should I descale the kettle?")["contexts"][0]["doc_id"] == "kettle"

    services = site.app.state.services
    assert services.pipeline("gamma").search is services.search("gamma")
    loaded = [o for o in gc.get_objects() if type(o) is CollectionRetriever and o.settings is services.settings and o.collection == "gamma"]
    assert len(loaded) == 1  # one FAISS index and one copy of the chunk texts for both routes

    # A metadata filter scopes both routes to the documents that match, as a question about one product is.
    root.add_documents("gamma", [FERN | {"metadata": {"product": "fern"}}, {**KETTLE, "id": "kettle-2", "metadata": {"product": "kettle"}}])
    scoped = root.search("gamma", "descale the kettle", filters={"product": ["kettle", "toaster"]})
    assert [r["doc_id"] for r in scoped["results"]] == ["kettle-2"]
    assert {c["doc_id"] for c in root.ask("gamma", "How often should I descale the kettle?", filters={"product": "fern"})["contexts"]} == {"fern"}
    with pytest.raises(CiteloopError) as caught:
        root.search("gamma", "kettle", filters={"product": {"nested": 1}})
    assert caught.value.status == 422 and "filters" in caught.value.message

    assert delete_collection("gamma", services.settings)
    for call in (
        lambda: root.search("gamma", "kettle"),
        lambda: root.ask("gamma", "How often should I descale the kettle?"),
        lambda: list(root.ask_stream("gamma", "How often should I descale the kettle?")),
    ):
        with pytest.raises(CiteloopError) as caught:
            call()
        assert (caught.value.status, caught.value.message) == (404, "no collection named 'gamma'")
    assert not site.queue.locked()


def test_a_streamed_ask_refused_before_generation_keeps_its_status(site):
    root = site.client("root")
    root.create_collection("empty")
    with pytest.raises(CiteloopError) as caught:
        list(root.ask_stream("empty", "Is there anything here?"))
    assert (caught.value.status, caught.value.code) == (400, "invalid_question")
    assert "has no documents" in caught.value.message and not site.queue.locked()


def test_a_client_that_hangs_up_while_queued_does_not_hold_the_queue(site):
    """The test holds the queue as a long answer would; a streamed ask waits behind it and hangs up."""
    asyncio.run_coroutine_threadsafe(site.queue.acquire(), site.loop).result(timeout=10)
    try:
        with _raw_ask(site, "How often should I descale the kettle?"):
            _wait_for(lambda: site.queued() == 1, "the streamed ask never queued")
        _wait_for(lambda: site.queued() == 0, "the ask of a client that hung up still waits in the queue")
    finally:
        site.loop.call_soon_threadsafe(site.queue.release)
    started = time.monotonic()
    answer = site.client("ann").ask("alpha", "How often should I descale the kettle?")
    assert answer["contexts"][0]["doc_id"] == "kettle" and time.monotonic() - started < QUEUE_BOUND_S
    _wait_for(lambda: not site.queue.locked(), "the queue stayed held after the ask")


def test_a_client_that_hangs_up_before_the_first_token_does_not_hold_the_queue(site):
    with _raw_ask(site, "How often should I descale the kettle?") as conn:
        received = b""
        while b"event: contexts" not in received:
            chunk = conn.recv(65536)
            assert chunk, "the server closed the stream before the contexts"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
    answer = site.client("ann").ask("alpha", "How often should I descale the kettle?")
    assert answer["contexts"][0]["doc_id"] == "kettle"
    _wait_for(lambda: not site.queue.locked(), "the queue stayed held after the ask")


def test_an_unexpected_error_is_logged_with_a_request_id_and_answered_generically(site, caplog):
    """A stored event whose payload is not an object (a corrupted row) breaks the export."""
    root = site.client("root")
    root.create_collection("broken")
    root.add_documents("broken", [KETTLE])
    found = root.search("broken", "kettle", k=1)
    root.judge(found["results"][0]["chunk_id"], True, search_id=found["search_id"])
    settings = site.app.state.services.settings
    with session_scope(settings) as session:
        cid = get_collection(session, "broken").id
        session.execute(update(FeedbackRecord).where(FeedbackRecord.collection_id == cid).values(payload=[]))

    with caplog.at_level(logging.ERROR, logger="citeloop.api"):
        response = httpx.get(
            site.base + "/v1/feedback/export", params={"collection": "broken"}, headers={"Authorization": f"Bearer {site.keys['root']}"}
        )
    request_id = response.headers["X-Request-ID"]
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal"
    assert request_id in response.json()["error"]["message"]
    assert "mapping" not in response.text and "TypeError" not in response.text  # the exception's own words
    logged = [r for r in caplog.records if r.name == "citeloop.api" and request_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info[0] is TypeError

    delete_collection("broken", settings)  # the other tests export too
    ids = {httpx.get(site.base + "/healthz").headers["X-Request-ID"] for _ in range(2)}
    assert len(ids) == 2


@contextmanager
def _raw_ask(site: Site, question: str) -> Iterator[socket.socket]:
    """A streamed ask over a bare socket, which the caller may read and then hangs up on, as a browser tab closes."""
    body = httpx.Request("POST", "/", json={"collection": "alpha", "question": question, "stream": True}).content
    port = int(site.base.rsplit(":", 1)[1])
    head = (
        f"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {site.keys['ann']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn = socket.create_connection(("127.0.0.1", port), timeout=QUEUE_BOUND_S)
    try:
        conn.sendall(head.encode() + body)
        yield conn
    finally:
        conn.close()


def _wait_for(condition, failure: str, bound_s: float = QUEUE_BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def _export(client: Client, collection: str) -> list[dict]:
    return [json.loads(line) for line in client.export(collection).decode().splitlines()]
