"""The served API over real HTTP: `citeloop serve` subprocesses on free loopback ports, the small real
generator, real databases. Role matrix, tenant isolation, streaming, bad input, erasure, durability under
kill -9, and two servers sharing one PostgreSQL database. (Over 300 lines: one server fixture serves every
scenario here, and a server start costs seconds; in-process scenarios live in test_api_in_process.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from api.client import CiteloopError, Client
from eval.feedback_loop import free_port
from tests.conftest import PG_URL, REPO, _pg_database

pytestmark = pytest.mark.slow
TUTORIAL = REPO / "corpora" / "python-docs" / "sources" / "tutorial"
SMALL_MODEL = {"CITELOOP_GENERATOR": "smollm2-135m", "CITELOOP_MAX_NEW_TOKENS": "32"}


ABSTAIN_REASONS = {"no_contexts", "weak_evidence", "model_declined", "unsupported"}


def assert_grounded(answer: dict) -> None:
    """An answer is either verified, with citations that each quote a span of the context they number, or an
    abstention with a known reason and no citations."""
    if answer["abstained"]:
        assert answer["abstain_reason"] in ABSTAIN_REASONS and answer["citations"] == []
    else:
        assert answer["abstain_reason"] is None and answer["citations"]
    for citation in answer["citations"]:
        source = answer["contexts"][citation["n"] - 1]
        assert (citation["chunk_id"], citation["doc_id"]) == (source["chunk_id"], source["doc_id"])
        assert citation["quote"] and source["text"][citation["start"] : citation["end"]] == citation["quote"]


def server_env(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ, CITELOOP_DATA_DIR=str(data_dir), **SMALL_MODEL)
    if database_url:
        env["CITELOOP_DATABASE_URL"] = database_url
    return env


def wait_until_ready(url: str, gone: Callable[[], str | None], timeout_s: float = 180) -> None:
    """Polls `url` until it answers 200; `gone()` says why the server stopped, or None while it runs."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert gone() is None, gone()
        assert time.time() < deadline, "server did not become ready"
        time.sleep(0.3)


@contextmanager
def serve(env: dict[str, str], ready: str = "/readyz"):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base + ready, lambda: None if proc.poll() is None else proc.stderr.read().decode())
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def make_keys(env: dict[str, str]) -> dict[str, str]:
    """reader/curator/admin of team-a, a reader of team-b; created through the CLI as an operator would."""
    keys = {}
    for name, role, collections in [
        ("alice", "reader", "team-a"),
        ("carol", "curator", "team-a"),
        ("root", "admin", "*"),
        ("bob", "reader", "team-b"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "cli", "keys", "create", "--name", name, "--role", role, "--collections", collections],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True,
        )
        keys[name] = out.stdout.strip()
    return keys


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = tmp_path_factory.mktemp("api") / "var"
    env = server_env(data)
    keys = make_keys(env)
    with serve(env) as (base, _proc):
        root = Client(base, keys["root"])
        root.create_collection("team-a")
        root.create_collection("team-b")
        root.upload("team-a", [TUTORIAL / "inputoutput.rst.txt", TUTORIAL / "datastructures.rst.txt"])
        root.add_documents("team-b", [{"id": "kettle", "title": "Kettle", "text": "Descale the kettle with vinegar once a month."}])
        yield base, keys, env


def client(site, who: str) -> Client:
    base, keys, _ = site
    return Client(base, keys[who])


def test_openapi_health_and_metrics_need_no_key(site):
    base, _, _ = site
    assert httpx.get(base + "/healthz").json()["status"] == "ok"
    spec = httpx.get(base + "/openapi.json").json()
    assert {"/v1/ask", "/v1/search", "/v1/feedback/export", "/v1/review-queue"} <= spec["paths"].keys()
    assert "citeloop_request_seconds" in httpx.get(base + "/metrics").text


def test_ask_answers_with_contexts_citations_and_models_then_feedback_is_exported(site):
    alice, carol, root = client(site, "alice"), client(site, "carol"), client(site, "root")
    answer = alice.ask("team-a", "How do I read a file line by line?")
    assert answer["contexts"] and all(c["doc_id"].endswith(".rst.txt") for c in answer["contexts"])
    assert answer["models"]["generator"].startswith("smollm2-135m@")
    assert_grounded(answer)

    alice.vote(answer["answer_id"], "down", "too vague")
    alice.vote(answer["answer_id"], "up")  # the latest vote wins, the first stays in the history
    chunk = answer["contexts"][0]["chunk_id"]
    carol.judge(chunk, True, answer_id=answer["answer_id"])
    carol.correct(answer["answer_id"], "Loop over the file object: for line in f: ...")
    expected = ["thumbs_down", "thumbs_up", "relevant", "correction"]
    if answer["citations"]:
        carol.flag(answer["answer_id"], answer["citations"][0]["n"], "quote does not say this")
        expected.append("citation_flag")
    else:  # an abstention has no citation to flag
        with pytest.raises(CiteloopError) as caught:
            carol.flag(answer["answer_id"], 1, "quote does not say this")
        assert caught.value.status == 404

    rows = [json.loads(line) for line in root.export("team-a").decode().splitlines()]
    mine = [r for r in rows if r["answer_id"] == answer["answer_id"]]
    assert [r["kind"] for r in mine] == expected
    assert [r["superseded"] for r in mine[:2]] == [True, False]
    first = mine[0]
    assert first["query"] == "How do I read a file line by line?" and first["reason"] == "too vague"
    assert [c["chunk_id"] for c in first["contexts"]] == [c["chunk_id"] for c in answer["contexts"]]
    assert first["contexts"][0]["text"] == answer["contexts"][0]["text"]
    assert first["models"]["generator"] == answer["models"]["generator"]

    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(root.export("team-a", format="parquet")))
    assert table.num_rows == len(rows) and "query" in table.column_names


def test_role_matrix(site):
    alice, carol = client(site, "alice"), client(site, "carol")
    answer_id = alice.ask("team-a", "How do I sort a list?")["answer_id"]
    search = alice.search("team-a", "list comprehension", k=3)
    assert len(search["results"]) == 3

    def status(call) -> int:
        try:
            call()
            return 200
        except CiteloopError as exc:
            return exc.status

    assert status(lambda: alice.judge(search["results"][0]["chunk_id"], True, search_id=search["search_id"])) == 403
    assert status(lambda: alice.correct(answer_id, "x")) == 403
    assert status(lambda: alice.review_queue("team-a")) == 403
    assert status(lambda: carol.judge(search["results"][0]["chunk_id"], False, search_id=search["search_id"])) == 200
    assert status(lambda: carol.review_queue("team-a")) == 200
    assert status(lambda: carol.export("team-a")) == 403
    assert status(lambda: carol.add_documents("team-a", [{"id": "x", "text": "y"}])) == 403
    assert status(lambda: carol.erase("alice")) == 403
    assert status(lambda: Client(site[0]).ask("team-a", "hi")) == 401
    assert status(lambda: Client(site[0], "cl_not-a-key").ask("team-a", "hi")) == 401


def test_a_key_never_sees_another_collection(site):
    alice, bob = client(site, "alice"), client(site, "bob")
    b_answer = bob.ask("team-b", "How often should I descale the kettle?")
    assert [c["name"] for c in alice.collections()] == ["team-a"]
    for call in (
        lambda: alice.ask("team-b", "How often should I descale the kettle?"),
        lambda: alice.search("team-b", "kettle"),
        lambda: alice.vote(b_answer["answer_id"], "down"),
        lambda: client(site, "carol").flag(b_answer["answer_id"], 1, "x"),
        lambda: client(site, "carol").review_queue("team-b"),
    ):
        with pytest.raises(CiteloopError) as caught:
            call()
        assert caught.value.status == 404 and "kettle" not in caught.value.message.lower()


def test_streaming_sends_contexts_tokens_citations_done(site):
    events = list(client(site, "alice").ask_stream("team-a", "How do I read a file line by line?"))
    names = [e for e, _ in events]
    assert names[0] == "contexts" and names[-2:] == ["citations", "done"]
    assert set(names[1:-2]) <= {"token"} and "token" in names
    done = events[-1][1]
    assert_grounded(done)
    assert events[-2][1] == {"answer_id": done["answer_id"], "citations": done["citations"]}
    assert [c["chunk_id"] for c in done["contexts"]] == [c["chunk_id"] for c in events[0][1]]


def test_rate_limit_per_key_answers_429_with_retry_after(site, tmp_path):
    base, _, env = site
    burst = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--name", "burst", "--role", "reader", "--collections", "team-a"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {burst}"}) as http:
        statuses = [http.get("/v1/collections") for _ in range(700)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(r.status_code == 200 for r in statuses[:500])
    assert limited[0].json()["error"]["code"] == "rate_limited" and int(limited[0].headers["Retry-After"]) >= 1
    assert httpx.get(base + "/v1/collections", headers={"Authorization": f"Bearer {site[1]['alice']}"}).status_code == 200


def test_cli_remote_mode_asks_the_server(site):
    base, keys, _ = site
    env = dict(os.environ, CITELOOP_API_KEY=keys["alice"])
    out = subprocess.run(
        [sys.executable, "-m", "cli", "ask", "How do I read a file line by line?", "-c", "team-a", "--remote", base, "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["answer_id"]
    denied = subprocess.run(
        [sys.executable, "-m", "cli", "ask", "kettle?", "-c", "team-b", "--remote", base],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert denied.returncode == 1 and "no collection named 'team-b'" in denied.stderr


def test_bad_input_is_a_json_4xx_never_a_500(site):
    base, keys, _ = site
    auth = {"Authorization": f"Bearer {keys['alice']}"}
    cases = [
        ("POST", "/v1/ask", {"content": b"{not json", "headers": auth | {"Content-Type": "application/json"}}, 422),
        ("POST", "/v1/ask", {"json": {"collection": "team-a"}, "headers": auth}, 422),
        ("POST", "/v1/ask", {"json": {"collection": "team-a", "question": "   "}, "headers": auth}, 400),
        ("POST", "/v1/ask", {"json": {"collection": "team-a", "question": "why " * 600}, "headers": auth}, 400),
        ("POST", "/v1/answers/nope/feedback", {"json": {"rating": "meh"}, "headers": auth}, 422),
        ("POST", "/v1/answers/nope/feedback", {"json": {"rating": "up"}, "headers": auth}, 404),
        ("GET", "/v1/nowhere", {"headers": auth}, 404),
    ]
    for method, path, kwargs, expected in cases:
        response = httpx.request(method, base + path, timeout=60, **kwargs)
        assert response.status_code == expected, (path, response.text)
        assert set(response.json()["error"]) == {"code", "message"}


def test_ingest_reports_skipped_files_and_delete_removes_the_document(site, tmp_path):
    root = client(site, "root")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "notes.md").write_text("# Notes\n\nThe staging server restarts every Sunday at 02:00.\n")
    report = root.upload("team-a", [tmp_path / "empty.md", tmp_path / "notes.md"])
    assert report["ingested"] == 1 and report["skipped"][0]["name"].endswith("empty.md")
    again = root.upload("team-a", [tmp_path / "notes.md"])
    assert again["ingested"] == 0 and again["unchanged"] == 1
    assert "notes.md" in {r["doc_id"] for r in root.search("team-a", "staging server restart")["results"]}
    root.delete_document("team-a", "notes.md")
    assert "notes.md" not in {r["doc_id"] for r in root.search("team-a", "staging server restart")["results"]}
    with pytest.raises(CiteloopError) as caught:
        root.delete_document("team-a", "notes.md")
    assert caught.value.status == 404


def test_erasure_removes_a_persons_events_and_answers(site):
    bob, root = client(site, "bob"), client(site, "root")
    answer = bob.ask("team-b", "How often should I descale the kettle?")
    bob.vote(answer["answer_id"], "up")
    root.vote(answer["answer_id"], "down")  # someone else's event about bob's question goes too
    assert any(json.loads(l)["actor"] == "bob" for l in root.export("team-b").decode().splitlines())
    erased = root.erase("bob")
    assert erased["events"] >= 2 and erased["answers"] >= 1
    assert [c["collection"] for c in erased["collections"]] == ["team-b"]  # bob asked nowhere else
    assert erased["events"] == erased["collections"][0]["events"]
    rows = [json.loads(l) for l in root.export("team-b").decode().splitlines()]
    assert not any(r["actor"] == "bob" or r["answer_id"] == answer["answer_id"] for r in rows)
    with pytest.raises(CiteloopError) as caught:
        bob.vote(answer["answer_id"], "down")
    assert caught.value.status == 404


def test_kill_dash_9_loses_no_acknowledged_feedback(tmp_path):
    """Votes are sent until the server is killed mid-stream; every acknowledged one is there after restart."""
    env = server_env(tmp_path / "var") | {"CITELOOP_RATE_LIMIT_PER_MINUTE": "100000"}
    keys = make_keys(env)
    with serve(env) as (base, proc):
        root = Client(base, keys["root"])
        root.create_collection("team-a")
        root.add_documents("team-a", [{"id": "kettle", "title": "Kettle", "text": "Descale the kettle with vinegar once a month."}])
        search = root.search("team-a", "kettle")
        search_id, chunk = search["search_id"], search["results"][0]["chunk_id"]
        acknowledged: list[str] = []
        killer_at = 150
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['root']}"}, timeout=10) as http:
            for i in range(400):
                if i == killer_at:
                    os.kill(proc.pid, signal.SIGKILL)
                try:
                    r = http.post("/v1/judgements", json={"search_id": search_id, "chunk_id": chunk, "relevant": i % 2 == 0})
                except httpx.TransportError:
                    break
                if r.status_code == 201:
                    acknowledged.append(r.json()["event_id"])
        proc.wait(timeout=30)
    assert len(acknowledged) >= killer_at
    with serve(env) as (base, _):
        exported = {json.loads(l)["event_id"] for l in Client(base, keys["root"]).export("team-a").decode().splitlines()}
    assert set(acknowledged) <= exported


@pytest.mark.skipif(not PG_URL, reason="CITELOOP_TEST_PG_URL is not set (CI sets it)")
def test_two_servers_share_one_postgresql_database(tmp_path):
    with _pg_database() as url:
        env = server_env(tmp_path / "var", url)
        keys = make_keys(env)
        with serve(env) as (base_1, _), serve(env) as (base_2, _):
            one, two = Client(base_1, keys["root"]), Client(base_2, keys["root"])
            one.create_collection("team-a")
            one.add_documents("team-a", [{"id": "kettle", "title": "Kettle", "text": "Descale the kettle with vinegar once a month."}])
            answer = one.ask("team-a", "How often should I descale the kettle?")
            two.vote(answer["answer_id"], "down")  # an answer from server 1, a vote through server 2
            assert two.search("team-a", "descale kettle")["results"][0]["doc_id"] == "kettle"  # server 2 sees the new index
            kinds = [json.loads(l)["kind"] for l in one.export("team-a").decode().splitlines()]
            assert kinds == ["thumbs_down"]
