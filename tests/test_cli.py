"""The CLI as a user runs it: bad input gets a message naming the file or field, and a non-zero exit."""

import os
import subprocess
import sys

from tests.conftest import REPO


def run_cli(*args, data_dir, env=None):
    env = dict(os.environ, CITELOOP_DATA_DIR=str(data_dir), **(env or {}))
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_domain_error_is_one_error_line_and_exit_code_1(tmp_path):
    data = tmp_path / "var"
    no_key = run_cli("keys", "revoke", "nobody", data_dir=data)
    assert (no_key.returncode, no_key.stdout, no_key.stderr) == (1, "", "error: no key named 'nobody'\n")

    not_beir = tmp_path / "not-beir"
    not_beir.mkdir()
    no_corpus = run_cli("eval", "retrieval", str(not_beir), data_dir=data)
    assert no_corpus.returncode == 1 and no_corpus.stdout == ""
    assert no_corpus.stderr.startswith("error: ") and "corpus.jsonl" in no_corpus.stderr and "Traceback" not in no_corpus.stderr


def test_ask_reads_the_remote_server_and_key_from_the_environment(tmp_path):
    data = tmp_path / "var"
    remote = {"CITELOOP_REMOTE_URL": "http://127.0.0.1:9", "CITELOOP_API_KEY": "cl_from_the_environment"}
    unreachable = run_cli("ask", "why?", "--collection", "home", data_dir=data, env=remote)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: cannot reach http://127.0.0.1:9: ")

    overridden = run_cli("ask", "why?", "--collection", "home", "--remote", "http://127.0.0.1:1", data_dir=data, env=remote)
    assert overridden.returncode == 1 and overridden.stderr.startswith("error: cannot reach http://127.0.0.1:1: ")

    keyless = run_cli("ask", "why?", "--collection", "home", data_dir=data, env=remote | {"CITELOOP_API_KEY": ""})
    assert keyless.returncode == 1 and keyless.stderr == "error: --remote needs --key (or CITELOOP_API_KEY)\n"


def test_ingest_search_and_errors_from_the_command_line(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettle.md").write_text("# Kettle\n\nDescale the kettle with vinegar once a month.\n")
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    data = tmp_path / "var"

    out = run_cli("ingest", str(docs), "--collection", "home", "--quiet", data_dir=data)
    assert out.returncode == 0, out.stderr
    assert "latin1.txt" in out.stderr and "UTF-8" in out.stderr
    assert "1 ingested" in out.stdout

    found = run_cli("search", "how to descale", "--collection", "home", "--json", data_dir=data)
    assert found.returncode == 0, found.stderr
    assert '"doc_id": "kettle.md"' in found.stdout

    missing = run_cli("search", "x", "--collection", "nope", data_dir=data)
    assert missing.returncode == 1 and "no collection named 'nope'" in missing.stderr

    bad_filter = run_cli("search", "x", "--collection", "home", "--filter", "{oops", data_dir=data)
    assert bad_filter.returncode == 1 and "--filter" in bad_filter.stderr

    no_qrels = run_cli("eval", "retrieval", str(docs), "--split", "test", data_dir=data)
    assert no_qrels.returncode == 1 and "corpus.jsonl" in no_qrels.stderr


def test_reranker_and_registry_commands_report_bad_input(tmp_path, tiny_beir):
    data = tmp_path / "var"
    bad_loss = run_cli("train", "reranker", "--beir", str(tiny_beir), "--split", "test", "--loss", "hinge", data_dir=data)
    assert bad_loss.returncode == 1 and "--loss" in bad_loss.stderr

    no_reranker = run_cli("eval", "retrieval", str(tiny_beir), "--split", "test", "--stages", "hybrid,rerank", data_dir=data)
    assert no_reranker.returncode == 1 and "has no active one" in no_reranker.stderr

    unknown = run_cli("models", "promote", "rer-000000000000", data_dir=data)
    assert unknown.returncode == 1 and "no model version 'rer-000000000000'" in unknown.stderr

    no_active = run_cli("models", "rollback", "reranker", "--collection", "nope", data_dir=data)
    assert no_active.returncode == 1 and "no collection named 'nope'" in no_active.stderr

    no_history = run_cli("models", "history", "reranker", "--collection", "nope", data_dir=data)
    assert no_history.returncode == 1 and "no collection named 'nope'" in no_history.stderr

    listed = run_cli("models", "list", data_dir=data)
    assert listed.returncode == 0 and "no model versions registered" in listed.stdout


def test_ask_and_eval_qa_from_the_command_line(tmp_path):
    import json

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettle.md").write_text("# Kettle\n\nDescale the kettle with white vinegar once a month. Rinse it twice afterwards.\n")
    data = tmp_path / "var"
    small = {"CITELOOP_GENERATOR": "smollm2-135m", "CITELOOP_MAX_NEW_TOKENS": "48"}
    assert run_cli("ingest", str(docs), "--collection", "home", "--quiet", data_dir=data, env=small).returncode == 0

    asked = run_cli("ask", "How often should I descale the kettle?", "--collection", "home", "--json", data_dir=data, env=small)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert {"answer", "abstained", "citations", "contexts", "models", "timings_ms"} <= answer.keys()
    assert answer["contexts"][0]["doc_id"] == "kettle.md"

    empty = run_cli("ask", "  ", "--collection", "home", data_dir=data, env=small)
    assert empty.returncode == 1 and "question is empty" in empty.stderr
    unknown = run_cli("ask", "why?", "--collection", "nope", data_dir=data, env=small)
    assert unknown.returncode == 1 and "no collection named 'nope'" in unknown.stderr

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"id": "a", "user_input": "How often should I descale the kettle?", "reference": "once a month", "reference_doc_ids": ["kettle.md"]})
        + "\n"
        + json.dumps({"id": "u", "user_input": "Who won the 1966 World Cup final?"})
        + "\n"
    )
    report_path = tmp_path / "qa.json"
    evaluated = run_cli("eval", "qa", str(questions), "--collection", "home", "--json", str(report_path), data_dir=data, env=small)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(report_path.read_text())
    assert report["metrics"]["n"] == 2 and report["metrics"]["context_recall_at_k"] == 1.0
    assert report["metrics"]["refusal_rate_unanswerable"] == 1.0
    assert [r["id"] for r in report["rows"]] == ["a", "u"]

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_input": "fine"}\n{"oops\n')
    bad = run_cli("eval", "qa", str(broken), "--collection", "home", data_dir=data, env=small)
    assert bad.returncode == 1 and f"{broken}:2" in bad.stderr
    both = run_cli("eval", "qa", str(questions), "--collection", "home", "--corpus", str(docs), data_dir=data, env=small)
    assert both.returncode == 1 and "exactly one of --collection or --corpus" in both.stderr


def test_key_commands(tmp_path):
    data = tmp_path / "var"
    first = run_cli("keys", "bootstrap", data_dir=data)
    assert first.returncode == 0 and "created admin key 'admin'" in first.stdout and "cl_" in first.stdout
    again = run_cli("keys", "bootstrap", data_dir=data)
    assert again.returncode == 0 and "an admin key exists already" in again.stdout

    made = run_cli("keys", "create", "--name", "alice", "--role", "reader", "--collections", "a,b", data_dir=data)
    assert made.returncode == 0 and made.stdout.startswith("cl_")
    twice = run_cli("keys", "create", "--name", "alice", "--role", "reader", "--collections", "a", data_dir=data)
    assert twice.returncode == 1 and "a key named 'alice' exists" in twice.stderr
    bad_role = run_cli("keys", "create", "--name", "bob", "--role", "owner", "--collections", "a", data_dir=data)
    assert bad_role.returncode == 1 and "unknown role 'owner'" in bad_role.stderr

    assert run_cli("keys", "revoke", "admin", data_dir=data).returncode == 0
    listed = run_cli("keys", "list", data_dir=data)
    assert "alice" in listed.stdout and "a,b" in listed.stdout and made.stdout.strip() not in listed.stdout
    replaced = run_cli("keys", "bootstrap", data_dir=data)
    assert "created admin key 'admin-2'" in replaced.stdout
    unknown = run_cli("keys", "revoke", "nobody", data_dir=data)
    assert unknown.returncode == 1 and "no key named 'nobody'" in unknown.stderr
