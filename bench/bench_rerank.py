"""Reranker benchmark on SciFact held-out claims (a script, not a test): speed per backend and quality.

    python bench/bench_rerank.py --data-dir var --reranker active [--queries 100] [--backends openvino-bf16,onnx-int8]
    python bench/bench_rerank.py --render

Baseline in the same run: the plain fp32 torch `CrossEncoder` of the same weights with its defaults
(batch 32, the tokenizer's own max length) on the same (claim, chunk) pairs. Reported per backend: pairs/s and
ms per query at N = 20 and 50 candidates (score cache off), and nDCG@10 / Recall@100 of the rerank stage on
the held-out claims the model never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from bench.readme_tables import write_table  # noqa: E402
from citeloop.config import Settings  # noqa: E402

SCIFACT = REPO / "corpora" / "scifact"
RESULTS = REPO / "bench" / "results" / "rerank.json"
DEPTHS = (20, 50)


def timed(score_one, queries: list[str], candidates: dict[str, list], depth: int) -> dict:
    timings, pairs = [], 0
    for q in queries:
        hits = candidates[q][:depth]
        start = time.perf_counter()
        score_one(q, hits)
        timings.append((time.perf_counter() - start) * 1000)
        pairs += len(hits)
    total_s = sum(timings) / 1000
    return {"pairs_per_s": round(pairs / total_s, 1), "ms_per_query_p50": round(statistics.median(timings), 1), "queries": len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--reranker", default="active", help="Version id, or 'active' for the SciFact collection's.")
    parser.add_argument("--queries", type=int, default=100, help="Held-out claims timed per depth.")
    parser.add_argument("--backends", default="openvino-bf16,openvino,onnx-int8")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    if args.render:
        write_table("rerank-bench", "## Reranking (`python bench/bench_rerank.py`)", render_table(json.loads(RESULTS.read_text())))
        return

    from sentence_transformers import CrossEncoder

    from citeloop.registry import active_version, get_version, verified_path
    from eval.retrieval import ensure_eval_collection, evaluate_retrieval
    from feedback.reranker_loop import version_held_out
    from eval.beir import load_split
    from retrieval.ingest import index_text
    from retrieval.rerank import CROSS_ENCODER_DIR, CrossEncoderReranker
    from retrieval.retriever import CollectionRetriever

    base = Settings(data_dir=args.data_dir)
    collection = ensure_eval_collection(SCIFACT, base)
    version = active_version(collection, "reranker", base) if args.reranker == "active" else get_version(args.reranker, base, kind="reranker")
    if version is None:
        sys.exit(f"collection '{collection}' has no active reranker: pass --reranker ID (citeloop models list)")
    held_out = version_held_out(version)
    data = load_split(SCIFACT, held_out.split)
    queries = [data.queries[q] for q in sorted(held_out.queries)][: args.queries]
    retriever = CollectionRetriever(collection, base)
    candidates = {q: retriever.search(q, k=max(DEPTHS), mode="hybrid") for q in queries}

    result: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}, "version": version.id}
    plain = CrossEncoder(str(verified_path(version) / CROSS_ENCODER_DIR), device="cpu")
    plain_score = lambda q, hits: plain.predict([(q, index_text(h.title, h.text)) for h in hits], show_progress_bar=False)  # noqa: E731
    plain_score(queries[0], candidates[queries[0]][:4])
    result["speed"] = {"plain torch fp32": {str(n): timed(plain_score, queries, candidates, n) for n in DEPTHS}}
    print("plain", result["speed"]["plain torch fp32"], flush=True)
    result["quality"] = {}
    for backend in args.backends.split(","):
        settings = Settings(data_dir=args.data_dir, rerank_backend=backend)
        reranker = CrossEncoderReranker.from_version(version, settings)

        def score(q, hits, reranker=reranker):
            reranker.clear_cache()  # every query pays for its pairs
            reranker.logits(q, hits)

        score(queries[0], candidates[queries[0]][:4])
        result["speed"][backend] = {str(n): timed(score, queries, candidates, n) for n in DEPTHS}
        print(backend, result["speed"][backend], flush=True)
        metrics = evaluate_retrieval(SCIFACT, held_out.split, ["hybrid", "rerank"], settings, reranker=version, query_ids=held_out.queries)
        result["quality"][backend] = metrics
        print(backend, "quality", metrics, flush=True)
    plain_rate = {n: result["speed"]["plain torch fp32"][str(n)]["pairs_per_s"] for n in DEPTHS}
    for name, by_depth in result["speed"].items():
        for n in DEPTHS:
            by_depth[str(n)]["speedup"] = round(by_depth[str(n)]["pairs_per_s"] / plain_rate[n], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_table("rerank-bench", "## Reranking (`python bench/bench_rerank.py`)", render_table(result))


def render_table(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}); reranker `{result['version']}`, SciFact held-out claims.",
        "",
        "| backend | pairs/s N=20 | ms/query N=20 | pairs/s N=50 | ms/query N=50 | vs plain | rerank nDCG@10 | hybrid nDCG@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["speed"].items():
        q = result["quality"].get(name)
        lines.append(
            f"| {name} | {s['20']['pairs_per_s']} | {s['20']['ms_per_query_p50']} | {s['50']['pairs_per_s']} | {s['50']['ms_per_query_p50']} "
            f"| {s['50']['speedup']}x | {q['rerank']['ndcg@10'] if q else '-'} | {q['hybrid']['ndcg@10'] if q else '-'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
