"""The replay harness: what feedback buys the reranker, measured on queries the feedback never touched.

In a data directory of its own, the harness ingests a BEIR corpus, starts a real `citeloop serve` and `citeloop
worker`, and plays a curator: every training query is sent to `POST /v1/search`, and each of its top-k results is
judged against the qrels (`POST /v1/judgements`, relevant / not relevant; a share `noise` of the judgements
flipped, as careless judges would). A training job (`POST /v1/training/jobs`) then trains a reranker from the
stored feedback alone, gates it and promotes it if it passes; the test queries are evaluated before and after.
The learning curve trains (in this process, same code, not promoted) on the feedback of the first N training
queries only.

Splits: the test queries are those of `test_split` (of `test_beir`, another folder of the same corpus, when given);
when that is the training split itself, its held-out share (`is_holdout`) is the test set and the rest trains.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import httpx

from citeloop.config import Settings
from eval.beir import load_split
from eval.retrieval import ensure_eval_collection, evaluate_retrieval
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.examples import is_holdout, query_key

STAGES = ["bm25", "dense", "hybrid"]
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def harness_settings(data_dir: Path, **overrides) -> Settings:
    """A harness's settings: everything in its own data directory (SQLite, huey's SQLite queue) and no MLflow,
    whatever database, queue or tracking server the environment names, so a replay never writes into the service's
    data or history, nor takes its workers' jobs."""
    return Settings(data_dir=data_dir, database_url=None, queue_url=None, mlflow_uri=None, **overrides)


def service_environment(settings: Settings, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a harness's `citeloop serve` and `citeloop worker`: the settings' data directory, empty
    database, queue and MLflow URLs (harness_settings), `environment` on top."""
    # The simulated curator sends thousands of requests a minute from one key.
    return dict(
        os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), CITELOOP_RATE_LIMIT_PER_MINUTE="10000000",
        CITELOOP_RERANKER_BASE=settings.reranker_base, CITELOOP_DATABASE_URL="", CITELOOP_QUEUE_URL="", CITELOOP_MLFLOW_URI="",
        **(environment or {}),
    )


@contextmanager
def running_service(settings: Settings, log_path: Path, environment: dict[str, str] | None = None):
    """`citeloop serve` and `citeloop worker` on the settings' data directory (`environment`: more CITELOOP_*
    variables for both); yields the server's base URL."""
    port = free_port()
    env = service_environment(settings, environment)
    log = open(log_path, "ab")
    cli = [sys.executable, "-m", "cli"]
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([*cli, "worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            for name, process in (("server", server), ("worker", worker)):
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} stopped (exit {process.returncode}); see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in 300 s; see {log_path}")
            time.sleep(0.5)
        yield base
    finally:
        for process in (server, worker):
            process.terminate()
        for process in (server, worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def simulate_curator(client, collection: str, queries: dict[str, str], qrels: dict[str, dict[str, int]], k: int, noise: float, seed: int):
    """Search each query through the API and judge its top k against the qrels, `noise` of them flipped.
    Returns, per query in order, the time of its last judgement and the judgements sent so far; and the counts."""
    rng = random.Random(seed)
    marks: list[tuple[datetime, int]] = []
    counts = {"searches": 0, "judgements": 0, "flipped": 0, "relevant": 0}
    for qid in queries:
        found = client.search(collection, queries[qid], k=k)
        counts["searches"] += 1
        last = None
        for hit in found["results"]:
            relevant = hit["doc_id"] in qrels.get(qid, {})
            if rng.random() < noise:
                relevant = not relevant
                counts["flipped"] += 1
            ack = client.judge(hit["chunk_id"], relevant, search_id=found["search_id"])
            counts["judgements"] += 1
            counts["relevant"] += relevant
            last = datetime.fromisoformat(ack["created_at"])
        if last is not None:
            marks.append((last, counts["judgements"]))
    return marks, counts


def succeeded(client, job: dict, poll_s: float = 5.0) -> dict:
    """The submitted job once it finished; a RuntimeError with its error unless it succeeded."""
    while job["status"] in ("queued", "running"):
        time.sleep(poll_s)
        job = client.job(job["id"])
    if job["status"] != "succeeded":
        raise RuntimeError(f"the {job['kind']} job {job['id']} {job['status']}: {job['error']}")
    return job


def job_seconds(job: dict) -> float:
    """A finished job's wall time, from the worker's start to its end (snapshot, training, gate)."""
    return round((datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds(), 1)


def run_feedback_loop(
    beir: Path,
    train_split: str,
    test_split: str,
    test_beir: Path | None = None,
    noise: float = 0.0,
    curve: list[int] | None = None,
    k: int = 10,
    data_dir: Path | None = None,
    args: RerankerTrainingArgs | None = None,
    seed: int = 0,
    base: str = "none",
    progress=print,
) -> dict:
    """The report `citeloop eval feedback-loop --json` writes: before / after metrics per stage on the test queries,
    the feedback events sent, the job's training seconds, the learning curve. `base`: the warm start of every
    training (CITELOOP_RERANKER_BASE); it must not have learnt from this data set."""
    from api.client import Client
    from citeloop.keys import create_key
    from citeloop.registry import active_version, get_version
    from feedback.jobs import JOB_OPTIONS
    from feedback.reranker_loop import train_from_feedback

    args = args or RerankerTrainingArgs()
    beir, test_beir = Path(beir).resolve(), Path(test_beir or beir).resolve()
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="citeloop-feedback-loop-")).resolve()
    settings = harness_settings(data_dir, reranker_base=base)
    holdout = settings.eval_holdout
    train_data = load_split(beir, train_split)
    same_split = test_beir == beir and test_split == train_split
    train_queries = {q: t for q, t in sorted(train_data.queries.items()) if not (same_split and is_holdout(q, holdout))}
    test_data = load_split(test_beir, test_split)
    test_ids = {q for q in test_data.qrels if (is_holdout(q, holdout) if same_split else True)}
    trained_texts = {query_key(t) for t in train_queries.values()}
    test_ids = {q for q in test_ids if query_key(test_data.queries[q]) not in trained_texts}
    order = list(train_queries)
    random.Random(seed).shuffle(order)
    train_queries = {q: train_queries[q] for q in order}

    progress(f"ingesting {beir.name} into {data_dir}")
    collection = ensure_eval_collection(beir, settings, show_progress=False)
    if ensure_eval_collection(test_beir, settings) != collection:
        raise ValueError(f"{test_beir} holds another corpus than {beir}: --test-beir must be the same corpus")
    keys = {role: create_key(f"harness-{role}-{os.getpid()}", role, ["*"], settings) for role in ("curator", "admin")}

    def evaluate(stages: list[str], reranker=None) -> dict:
        return evaluate_retrieval(test_beir, test_split, stages, settings, reranker=reranker, query_ids=test_ids)

    result: dict = {
        "collection": collection, "train_queries": len(train_queries), "test_queries": len(test_ids), "noise": noise, "k": k,
        "args": asdict(args), "base": base, "data_dir": str(data_dir),
    }
    progress(f"before: {len(test_ids)} test queries")
    result["before"] = evaluate(STAGES)
    if base != "none":
        from feedback.bases import build_base, parse_sources

        progress(f"building the base reranker on {base} (once; cached)")
        build_base(parse_sources(base), settings)
    with running_service(settings, data_dir / "service.log") as url:
        curator, admin = Client(url, keys["curator"]), Client(url, keys["admin"], timeout=600)
        progress(f"curator judging the top {k} of {len(train_queries)} training queries (noise {noise:g})")
        started = time.monotonic()
        marks, counts = simulate_curator(curator, collection, train_queries, train_data.qrels, k, noise, seed)
        result["feedback_events"], result["curator"] = counts["judgements"], counts | {"seconds": round(time.monotonic() - started, 1)}
        result["curve"] = []
        for n in sorted(c for c in (curve or []) if c < len(marks)):
            progress(f"curve: training on the feedback of the first {n} queries")
            started = time.monotonic()
            until, events = marks[n - 1]
            report = train_from_feedback(collection, args, settings, until=until)
            seconds = round(time.monotonic() - started, 1)  # snapshot, training and gate, as a job spends them
            result["curve"].append(
                {"queries": n, "feedback_events": events, "train_seconds": seconds, "rerank": evaluate(["rerank"], report.version)["rerank"],
                 "gate": _gate(report.version.metrics["gate"])}
            )
        progress("training job on all the feedback")
        defaults = RerankerTrainingArgs()
        options = {name: getattr(args, name) for name in JOB_OPTIONS["reranker"] if getattr(args, name) != getattr(defaults, name)}
        job = succeeded(admin, admin.submit_job(collection, options=options))
    version = get_version(job["version_id"], settings)
    result["job"] = {"id": job["id"], "version": version.id, "promoted": job["result"]["promoted"], "gate": _gate(job["result"]["gate"])}
    result["train_seconds"] = job_seconds(job)
    active = active_version(collection, "reranker", settings)
    result["after"] = evaluate(["hybrid", "rerank"], active or version)
    result["after_serves"] = active.id if active else "hybrid (the candidate was not promoted; its rerank row is shown)"
    result["curve"].append(
        {"queries": len(marks), "feedback_events": counts["judgements"], "train_seconds": result["train_seconds"], "rerank": result["after"]["rerank"], "gate": result["job"]["gate"]}
    )
    return result


def _gate(gate: dict) -> dict:
    return {k: gate.get(k) for k in ("passed", "gain", "ci_low", "ci_high", "reason")}
