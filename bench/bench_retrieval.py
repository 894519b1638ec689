"""Retrieval benchmark on SciFact (a script, not a test): ingest throughput, query latency, BM25 speed, quality.

    python bench/bench_retrieval.py [--backends torch,onnx] [--out bench/results/retrieval.json]

Each measurement has its baseline in the same run on the same machine:
- ingest docs/s (read + chunk + embed + index) per embedder backend vs plain SentenceTransformer.encode;
- nDCG@10 of each backend's collection (the speed-up must not cost quality);
- p50/p95 query latency per stage, query embedding included;
- bm25s queries/s vs rank-bm25 BM25Okapi with the same tokenisation.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from citeloop.config import Settings  # noqa: E402

SCIFACT = REPO / "corpora" / "scifact"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def plain_encode(rows: list[dict]) -> dict:
    from sentence_transformers import SentenceTransformer

    from citeloop.modelpkg import MINILM

    model = SentenceTransformer(str(MINILM.verified_path()), device="cpu")
    texts = [f"{r['title']}\n{r['text']}" for r in rows]
    start = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - start
    return {"docs": len(rows), "seconds": round(seconds, 1), "docs_per_s": round(len(rows) / seconds, 2)}


def ingest_and_score(backend: str, data_dir: Path) -> tuple[Settings, dict]:
    from eval.retrieval import evaluate_retrieval
    from retrieval.ingest import ingest
    from retrieval.readers import read_rows

    settings = Settings(data_dir=data_dir, embedder_backend=backend)
    from retrieval.embedder import load_embedder

    load_embedder(settings)  # model load (and one-off ONNX export) is not ingest work
    start = time.perf_counter()
    report = ingest(read_rows(SCIFACT / "corpus.jsonl.gz"), "scifact-bench", settings)
    seconds = time.perf_counter() - start
    docs = len(report.ingested)
    metrics = evaluate_retrieval(SCIFACT, "train", ["bm25", "dense", "hybrid"], settings)
    return settings, {
        "docs": docs,
        "chunks": report.total_chunks,
        "seconds": round(seconds, 1),
        "docs_per_s": round(docs / seconds, 2),
        "quality": metrics,
    }


def query_latency(settings: Settings, queries: list[str]) -> dict:
    from eval.retrieval import ensure_eval_collection
    from retrieval.embedder import _cached_query_vector
    from retrieval.retriever import CollectionRetriever

    retriever = CollectionRetriever(ensure_eval_collection(SCIFACT, settings), settings)
    retriever.search("warm up", k=10)
    out = {}
    for mode in ("bm25", "dense", "hybrid"):
        _cached_query_vector.cache_clear()  # every query pays for its embedding
        timings = []
        for q in queries:
            start = time.perf_counter()
            retriever.search(q, k=10, mode=mode)
            timings.append((time.perf_counter() - start) * 1000)
        out[mode] = {"p50_ms": round(percentile(timings, 0.5), 2), "p95_ms": round(percentile(timings, 0.95), 2), "queries": len(queries)}
    return out


def bm25_speed(rows: list[dict], queries: list[str]) -> dict:
    from rank_bm25 import BM25Okapi

    from retrieval.sparse import BM25Index, tokenize

    texts = [f"{r['title']}\n{r['text']}" for r in rows]
    ours = BM25Index.build(texts)
    start = time.perf_counter()
    for q in queries:
        ours.search(q, 10)
    ours_qps = len(queries) / (time.perf_counter() - start)
    reference = BM25Okapi(tokenize(texts))
    sample = queries[:100]
    start = time.perf_counter()
    for q in sample:
        scores = reference.get_scores(tokenize([q])[0])
        scores.argsort()[-10:]
    ref_qps = len(sample) / (time.perf_counter() - start)
    return {"bm25s_qps": round(ours_qps, 1), "rank_bm25_qps": round(ref_qps, 1), "speedup": round(ours_qps / ref_qps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval.json")
    args = parser.parse_args()

    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    result: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
    result["plain_encode"] = plain_encode(rows)
    print("plain encode", result["plain_encode"], flush=True)
    result["ingest"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            settings, measured = ingest_and_score(backend, Path(tmp) / backend)
            measured["speedup_vs_plain_encode"] = round(measured["docs_per_s"] / result["plain_encode"]["docs_per_s"], 2)
            result["ingest"][backend] = measured
            print("ingest", backend, measured, flush=True)
        result["query_latency"] = query_latency(settings, queries)
    print("latency", result["query_latency"], flush=True)
    result["bm25"] = bm25_speed(rows, queries)
    print("bm25", result["bm25"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
