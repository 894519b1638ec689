"""Cross-validated reranker quality on SciFact train claims (a script, not a test).

    python bench/bench_cv.py --data-dir var --folds 0,1,2,3,4

One held-out slice is 20% of the labelled claims (CITELOOP_EVAL_HOLDOUT); fold k holds out the k-th slice, so
the five folds are disjoint and together cover every claim. Per fold: the default recipe trains on the other
claims exactly as `citeloop train reranker --beir corpora/scifact --split train` does with
CITELOOP_EVAL_HOLDOUT_FOLD=k (a version already registered for that fold with the default recipe is reused,
nothing is promoted), then hybrid and rerank are scored on the fold's held-out claims. Pooled = mean over every
held-out claim of the folds run, next to hybrid on the same claims: the slices differ in difficulty (measured
hybrid 0.684 to 0.776 across folds, bench/README.md), so one fold alone says little.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from citeloop.config import Settings  # noqa: E402

SCIFACT = REPO / "corpora" / "scifact"
RESULTS = REPO / "bench" / "results" / "cv.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "var")
    parser.add_argument("--folds", default="0,1,2,3,4", help="Comma-separated held-out folds to train and score.")
    args = parser.parse_args()

    from citeloop.registry import list_versions
    from eval.retrieval import ensure_eval_collection, evaluate_retrieval
    from feedback.cross_encoder_trainer import RerankerTrainingArgs
    from feedback.reranker_loop import train_from_beir, version_held_out

    recipe = asdict(RerankerTrainingArgs())
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for fold in [int(f) for f in args.folds.split(",")]:
        settings = Settings(data_dir=args.data_dir, eval_holdout_fold=fold)
        collection = ensure_eval_collection(SCIFACT, settings, show_progress=True)
        wanted = {"holdout": settings.eval_holdout, "fold": fold}
        trained = [
            v for v in list_versions(settings, collection=collection, kind="reranker")
            if {k: (v.params.get("eval") or {}).get(k, 0) for k in wanted} == wanted  # no fold recorded = fold 0
            and {k: v.params.get(k) for k in recipe} == recipe
        ]
        command_s = None
        if trained:
            version = trained[0]
        else:
            start = time.perf_counter()
            version = train_from_beir(SCIFACT, "train", settings=settings, show_progress=True).version
            command_s = round(time.perf_counter() - start)
        held_out = version_held_out(version)
        metrics = evaluate_retrieval(SCIFACT, held_out.split, ["hybrid", "rerank"], settings, reranker=version, query_ids=held_out.queries)
        results[str(fold)] = {
            "version": version.id, "claims": metrics["rerank"]["queries"], "train_seconds": version.metrics.get("train_seconds"),
            "command_seconds": command_s, "train_bf16": version.metrics.get("train_bf16"),
            "hybrid": metrics["hybrid"]["ndcg@10"], "rerank": metrics["rerank"]["ndcg@10"],
            "hybrid_recall@100": metrics["hybrid"]["recall@100"], "rerank_recall@100": metrics["rerank"]["recall@100"],
        }
        print(f"fold {fold}: {results[str(fold)]}", flush=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    claims = sum(r["claims"] for r in results.values())
    pooled = {s: round(sum(r[s] * r["claims"] for r in results.values()) / claims, 4) for s in ("hybrid", "rerank")}
    print(f"pooled over folds {','.join(sorted(results))} ({claims} claims): hybrid {pooled['hybrid']}, rerank {pooled['rerank']} ({pooled['rerank'] - pooled['hybrid']:+.4f})")


if __name__ == "__main__":
    main()
