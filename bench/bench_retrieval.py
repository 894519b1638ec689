"""Retrieval benchmark on SciFact (a script, not a test): ingest throughput, query latency, BM25 speed, quality.

    python bench/bench_retrieval.py [--backends openvino-int8,openvino-bf16,onnx-int8,torch] [--out bench/results/retrieval.json]
    python bench/bench_retrieval.py --render    # rewrite the table in bench/README.md from the JSON

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
from bench.readme_tables import write_table  # noqa: E402
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
    from eval.retrieval import eval_collection_name, evaluate_retrieval
    from retrieval.embedder import load_embedder
    from retrieval.ingest import ingest
    from retrieval.readers import read_rows

    settings = Settings(data_dir=data_dir, embedder_backend=backend)
    load_embedder(settings)  # model load (and one-off ONNX export) is not ingest work
    corpus = SCIFACT / "corpus.jsonl.gz"
    start = time.perf_counter()
    # Under the evaluation's own collection name, so the quality run below re-uses this ingest.
    report = ingest(read_rows(corpus), eval_collection_name(corpus, settings), settings)
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


STAGES = ("ingest", "latency", "bm25")


def render_table(result: dict) -> str:
    plain = result["plain_encode"]
    lines = [
        f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}); SciFact, {plain['docs']} abstracts, 809 train claims.",
        "",
        "| ingest | docs/s | vs plain encode | chunks | bm25 nDCG@10 | dense nDCG@10 | hybrid nDCG@10 | hybrid Recall@100 |",
        "|---|---|---|---|---|---|---|---|",
        f"| plain `SentenceTransformer.encode` (no chunking, no index) | {plain['docs_per_s']} | 1.00x | - | - | - | - | - |",
    ]
    for backend, m in result["ingest"].items():
        q = m["quality"]
        lines.append(
            f"| citeloop ingest, `{backend}` embedder | {m['docs_per_s']} | {m['speedup_vs_plain_encode']}x | {m['chunks']} "
            f"| {q['bm25']['ndcg@10']} | {q['dense']['ndcg@10']} | {q['hybrid']['ndcg@10']} | {q['hybrid']['recall@100']} |"
        )
    latency = dict(result["query_latency"])
    lines += ["", f"| query stage (k=10, `{latency.pop('backend', 'torch')}` query embedding included) | p50 ms | p95 ms |", "|---|---|---|"]
    for mode, m in latency.items():
        lines.append(f"| {mode} | {m['p50_ms']} | {m['p95_ms']} |")
    b = result["bm25"]
    lines += ["", "| BM25, same tokenisation | queries/s |", "|---|---|"]
    lines += [f"| bm25s (citeloop) | {b['bm25s_qps']} |", f"| rank-bm25 BM25Okapi | {b['rank_bm25_qps']} |", f"| speed-up | {b['speedup']}x |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="openvino-int8,openvino-bf16,onnx-int8,torch", help="The first one (the default embedder) also serves the latency stage.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval.json")
    parser.add_argument("--render", action="store_true", help="Only rewrite the README table from --out.")
    parser.add_argument("--keep", type=Path, help="Keep (or re-use) the data directories here, one per backend.")
    parser.add_argument("--stages", default=",".join(STAGES), help="Parts to run: ingest,latency,bm25.")
    args = parser.parse_args()
    if args.render:
        write_table("retrieval-bench", "## Retrieval (`python bench/bench_retrieval.py`)", render_table(json.loads(args.out.read_text())))
        return

    stages = set(args.stages.split(","))
    backends = args.backends.split(",")
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    # A partial run (--stages) updates its parts of an earlier result.
    result: dict = json.loads(args.out.read_text()) if args.out.exists() and stages != set(STAGES) else {}
    result["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.keep or Path(tmp)
        if "ingest" in stages:
            result["plain_encode"] = plain_encode(rows)
            print("plain encode", result["plain_encode"], flush=True)
            result["ingest"] = {}
            for backend in backends:
                _, measured = ingest_and_score(backend, data_root / backend)
                measured["speedup_vs_plain_encode"] = round(measured["docs_per_s"] / result["plain_encode"]["docs_per_s"], 2)
                result["ingest"][backend] = measured
                print("ingest", backend, measured, flush=True)
        if "latency" in stages:
            # Latency of the first (default) backend's collection.
            settings = Settings(data_dir=data_root / backends[0], embedder_backend=backends[0])
            result["query_latency"] = query_latency(settings, queries) | {"backend": backends[0]}
            print("latency", result["query_latency"], flush=True)
    if "bm25" in stages:
        result["bm25"] = bm25_speed(rows, queries)
        print("bm25", result["bm25"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_table("retrieval-bench", "## Retrieval (`python bench/bench_retrieval.py`)", render_table(result))


if __name__ == "__main__":
    main()
