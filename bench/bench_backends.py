"""Which inference backend is fastest on this CPU (a script, not a test): the evidence behind `auto`.

    python bench/bench_backends.py [--texts 160] [--out bench/results/backends.json]

Embedder: texts/s of SciFact title + abstract texts (first 1,200 characters) per embedder backend, at the
embedder's settings. Cross-encoder: pairs/s of (claim-like query, the same texts) at the reranker's default
160 tokens, on a fresh-head MiniLM cross-encoder (speed does not depend on the head's training). Each row is one
timed pass after a warm-up; `auto` says what citeloop picks on this host from its CPU flags.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401
from citeloop.config import Settings  # noqa: E402

SCIFACT = REPO / "corpora" / "scifact" / "corpus.jsonl.gz"
QUERY = "Vitamin D deficiency is associated with an increased risk of depression."


def texts(n: int) -> list[str]:
    from retrieval.ingest import index_text

    with gzip.open(SCIFACT, "rt") as lines:
        rows = [json.loads(line) for line, _ in zip(lines, range(n))]
    return [index_text(r["title"], r["text"])[:1200] for r in rows]


def rate(work, items: list, warmup: list) -> float:
    work(warmup)
    start = time.perf_counter()
    work(items)
    return round(len(items) / (time.perf_counter() - start), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=160)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "backends.json")
    args = parser.parse_args()

    from sentence_transformers import CrossEncoder

    from citeloop.hardware import cpu_flags
    from citeloop.modelpkg import MINILM
    from retrieval.backends import EXPORTS, load_with_backend
    from retrieval.embedder import load_embedder

    corpus = texts(args.texts)
    auto = Settings(embedder_backend="auto", rerank_backend="auto")  # the reranker's length and batch are the defaults
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "simd": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))},
        "auto": {"embedder": auto.embedder_backend, "reranker": auto.rerank_backend},
        "embedder_texts_per_s": {},
        "cross_encoder_pairs_per_s": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        for backend in ["torch", *EXPORTS]:
            embedder = load_embedder(Settings(embedder_backend=backend, cache_dir=cache))
            result["embedder_texts_per_s"][backend] = rate(embedder.embed, corpus, corpus[:16])
            print(f"embedder {backend}: {result['embedder_texts_per_s'][backend]} texts/s", flush=True)
        fresh = Path(scratch) / "cross-encoder"
        CrossEncoder(str(MINILM.verified_path()), num_labels=1).save_pretrained(str(fresh))
        pairs = [(QUERY, text) for text in corpus]
        for backend in ["torch", *(b for b in EXPORTS if b != "openvino-int8")]:
            model = load_with_backend(CrossEncoder, fresh, backend, cache, "fresh-head", max_length=auto.rerank_max_tokens)
            score = lambda batch: model.predict(batch, batch_size=auto.rerank_batch_size, show_progress_bar=False)  # noqa: E731
            result["cross_encoder_pairs_per_s"][backend] = rate(score, pairs, pairs[:16])
            print(f"cross-encoder {backend}: {result['cross_encoder_pairs_per_s'][backend]} pairs/s", flush=True)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
