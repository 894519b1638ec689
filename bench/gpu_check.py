"""GPU check of reranker training and reranking speed, run as one prepared script on a lent GPU machine.

The GPU machine has PyTorch and sentence-transformers but none of citeloop's storage or retrieval stack, and what
travels there is capped at 64 MiB. So the work is split in three steps:

    python bench/gpu_check.py export .gpu            # here: training rows and validation samples exactly as
                                                     # `citeloop train reranker --beir corpora/scifact` builds them,
                                                     # hybrid candidates of validation and held-out claims, and the
                                                     # MiniLM base weights stored as fp16 (restored to fp32 there)
    python bench/gpu_check.py device .gpu $OUT       # there: citeloop's own `fit_cross_encoder` per training recipe
                                                     # (timed), logits for every candidate, reranking pairs/s
    python bench/gpu_check.py score .gpu/results.json  # here: fits the score combiner per recipe on the validation
                                                     # claims and scores the rerank stage on the held-out claims
                                                     # with citeloop's reranker and ranx, as the promotion gate does

The GPU image lacks `datasets`: carry its wheel with dill and multiprocess (`pip download --no-deps
--python-version 3.12 ... -d .whl datasets dill multiprocess`), install them there with
`pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and put /tmp/site on PYTHONPATH.

Recipes are `RerankerTrainingArgs` overrides; the default recipe is the one a 2-core CPU trains in <= 30 min,
the others are variants at about the same compute and a few at several times it (what a GPU makes affordable).
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import citeloop  # noqa: E402,F401  (offline switches first)
from feedback.cross_encoder_trainer import RerankerTrainingArgs, fit_cross_encoder  # noqa: E402

DATA_FILE = "sweep-data.json.gz"
WEIGHTS_FILE = "model.fp16.safetensors.xz"
CANDIDATE_DEPTH = 50  # hybrid candidates scored per claim (the speed check reranks 20 and 50)
RERANK_DEPTHS = (20, 40)  # the combiner is fitted and scored at each
SPEED_DEPTHS = (20, 50)

# name -> RerankerTrainingArgs overrides; the first is the product's default recipe.
RECIPES: dict[str, dict] = {
    "default": {},
    "default-fp32": {"bf16": False},
    "lr-5e-5": {"learning_rate": 5e-5},
    "lr-2e-4": {"learning_rate": 2e-4},
    "lr-3e-4": {"learning_rate": 3e-4},
    "lr-4e-4": {"learning_rate": 4e-4},
    "lr-2e-4-epochs-8": {"learning_rate": 2e-4, "epochs": 8},
    "bce": {"loss": "bce"},
    "unfrozen-embeddings": {"freeze_embeddings": False},
    "max-tokens-256": {"max_tokens": 256},
    "epochs-8": {"epochs": 8},
    "in-batch-all-epochs-8": {"in_batch_negatives": None, "epochs": 8},
    "epochs-16": {"epochs": 16},
    "bce-epochs-8": {"loss": "bce", "epochs": 8},
    "lr-2e-4-epochs-16": {"learning_rate": 2e-4, "epochs": 16},
    "epochs-32": {"epochs": 32},
}


def export(out: Path) -> None:
    """Training rows, validation samples and candidates as the CPU training run builds them, plus fp16 weights."""
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    from citeloop.config import get_settings
    from citeloop.modelpkg import MINILM
    from eval.retrieval import search_depth
    from feedback.reranker_loop import beir_examples
    from feedback.train_reranker import build_training_rows, split_examples, validation_samples
    from retrieval.ingest import index_text

    settings = get_settings()
    args = RerankerTrainingArgs()
    beir = beir_examples((REPO / "corpora" / "scifact").resolve(), "train", settings, show_progress=True)
    train_examples, val_examples = split_examples(beir.examples, args.validation_fraction, args.seed)
    with tempfile.TemporaryDirectory() as work:
        rows = build_training_rows(train_examples, beir.retriever, args, Path(work) / "miner-cache")
    samples = validation_samples(val_examples, beir.retriever, settings.rerank_top_n)
    texts: dict[str, int] = {}  # each text stored once: rows and candidates share most of them

    def ref(text: str) -> int:
        return texts.setdefault(text, len(texts))

    candidates = {}
    # Fusion depends on how deep the first stages go: validation claims as the combiner fit searches them,
    # held-out claims as `eval retrieval` (and so the gate) does.
    for query_id, query, k in [(e.query_id, e.query, CANDIDATE_DEPTH) for e in val_examples] + [
        (q, t, search_depth(settings)) for q, t in beir.held_out.items()
    ]:
        hits = beir.retriever.search(query, k=k, mode="hybrid")[:CANDIDATE_DEPTH]
        candidates[query_id] = {"query": query, "chunks": [[h.chunk_id, ref(index_text(h.title, h.text))] for h in hits]}
    data = {
        "rows": [{k: (ref(v) if k != "query" else v) for k, v in row.items()} for row in rows],
        "samples": [{"query": s["query"], "positive": [ref(t) for t in s["positive"]], "documents": [ref(t) for t in s["documents"]]} for s in samples],
        "candidates": candidates,
        "rerank_max_tokens": settings.rerank_max_tokens,  # the serving truncation the logits must be scored at
        "texts": list(texts),
        "val_query_ids": [e.query_id for e in val_examples],
        "held_out_query_ids": list(beir.held_out),
    }
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / DATA_FILE, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    base = MINILM.verified_path()
    model_dir = out / "minilm"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(base, model_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino", "*.onnx"))
    with tempfile.TemporaryDirectory() as work:
        fp16 = Path(work) / "fp16.safetensors"
        save_file({k: v.half() for k, v in load_file(base / "model.safetensors").items()}, fp16)
        (out / WEIGHTS_FILE).write_bytes(lzma.compress(fp16.read_bytes(), preset=9))
    print(f"{len(rows)} training rows, {len(samples)} validation samples, {len(candidates)} claims x {CANDIDATE_DEPTH} candidates, "
          f"{len(texts)} texts -> {out}")


def restore_base_model(data_dir: Path) -> Path:
    import torch
    from safetensors.torch import load, save_file

    model_dir = data_dir / "minilm"
    tensors = load(lzma.decompress((data_dir / WEIGHTS_FILE).read_bytes()))
    save_file({k: v.to(torch.float32) for k, v in tensors.items()}, model_dir / "model.safetensors")
    return model_dir


def rerank_speed(model, pairs_by_query: list[list[tuple[str, str]]], dtype_name: str) -> dict:
    out = {}
    for depth in SPEED_DEPTHS:
        model.predict(pairs_by_query[0][:depth], batch_size=64, show_progress_bar=False)  # warm-up
        timings, pairs = [], 0
        for query_pairs in pairs_by_query:
            batch = query_pairs[:depth]
            start = time.perf_counter()
            model.predict(batch, batch_size=64, show_progress_bar=False)
            timings.append((time.perf_counter() - start) * 1000)
            pairs += len(batch)
        out[f"N={depth}"] = {"pairs_per_s": round(pairs / (sum(timings) / 1000), 1), "ms_per_query_p50": round(statistics.median(timings), 2)}
    return {dtype_name: out}


def device(data_dir: Path, out: Path, recipes: list[str], dry_run: bool) -> None:
    import tempfile

    import torch

    with gzip.open(data_dir / DATA_FILE, "rt", encoding="utf-8") as f:
        data = json.load(f)
    texts = data["texts"]
    rows = [{k: (texts[v] if k != "query" else v) for k, v in row.items()} for row in data["rows"]]
    samples = [{"query": s["query"], "positive": [texts[t] for t in s["positive"]], "documents": [texts[t] for t in s["documents"]]} for s in data["samples"]]
    base = restore_base_model(data_dir)
    results = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recipes": {},
        "speed": {},
        "logits": {},
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results))

    try:
        import sentence_transformers
        import transformers

        results["sentence_transformers"], results["transformers"] = sentence_transformers.__version__, transformers.__version__
    except ImportError as exc:
        results["import_error"] = str(exc)
    if dry_run:
        data["candidates"] = dict(list(data["candidates"].items())[:5])
    pairs_by_query = [[(c["query"], texts[t]) for _, t in c["chunks"]] for c in data["candidates"].values()]
    for name in recipes:
        args = replace(RerankerTrainingArgs(), **RECIPES[name], max_steps=2 if dry_run else -1)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            fitted = fit_cross_encoder(rows, samples, args, base, Path(work))
        wall = time.perf_counter() - start
        model = fitted.model
        model.max_length = data["rerank_max_tokens"]
        flat = [pair for query_pairs in pairs_by_query for pair in query_pairs]
        logits = model.predict(flat, batch_size=128, activation_fn=None, show_progress_bar=False).tolist()
        it = iter(logits)
        results["logits"][name] = {qid: [[chunk_id, round(next(it), 5)] for chunk_id, _ in c["chunks"]] for qid, c in data["candidates"].items()}
        results["recipes"][name] = {
            "args": asdict(args),
            "steps": fitted.steps,
            "train_seconds": round(fitted.train_seconds, 1),
            "wall_seconds": round(wall, 1),
            "train_loss": round(fitted.train_loss, 4),
            "val_ndcg@10": round(fitted.val_ndcg, 4),
            "device": fitted.device,
        }
        print(json.dumps({name: results["recipes"][name]}), flush=True)
        if name == "default" and (torch.cuda.is_available() or dry_run):
            sample = pairs_by_query[:100]
            model.float()
            results["speed"].update(rerank_speed(model, sample, "fp32"))
            model.half()
            results["speed"].update(rerank_speed(model, sample, "fp16"))
            model.float()
            print(json.dumps({"speed": results["speed"]}), flush=True)
        save()


def score(results_file: Path, held_out_k: int | None) -> None:
    """Per recipe: combiner fitted on the validation claims' logits, nDCG@10 / Recall@100 on the held-out claims."""
    import threading
    from collections import OrderedDict

    from citeloop.config import get_settings
    from eval.beir import load_split
    from eval.retrieval import RUN_DEPTH, ranking, score_runs, search_depth
    from feedback.reranker_loop import beir_examples
    from feedback.train_reranker import fit_combiner, split_examples
    from retrieval.rerank import CrossEncoderReranker, ScoreCombiner

    class PrecomputedReranker(CrossEncoderReranker):
        """The serving reranker with its logit cache filled from the GPU run (no model is loaded)."""

        def __init__(self, logits: dict, settings):
            self.version_id, self.settings, self.model = "gpu-check", settings, None
            self.combiner = ScoreCombiner.only("cross_encoder_z")
            self._lock = threading.Lock()
            self._cache = OrderedDict(logits)

    results = json.loads(results_file.read_text())
    settings = get_settings()
    directory = (REPO / "corpora" / "scifact").resolve()
    beir = beir_examples(directory, "train", settings)
    defaults = RerankerTrainingArgs()
    _, val_examples = split_examples(beir.examples, defaults.validation_fraction, defaults.seed)
    qrels = {q: r for q, r in load_split(directory, "train").qrels.items() if q in beir.held_out}
    held_out_k = held_out_k or search_depth(settings)
    hybrid_hits = {qid: beir.retriever.search(text, k=held_out_k, mode="hybrid") for qid, text in beir.held_out.items()}
    query_of = {e.query_id: e.query for e in val_examples} | beir.held_out
    # At the default depth this is the hybrid stage exactly as `eval retrieval` (and the gate) scores it.
    table = {f"hybrid, first stages {held_out_k} deep": score_runs(qrels, {"h": {q: ranking(h, RUN_DEPTH) for q, h in hybrid_hits.items()}})["h"]}
    for name, per_query in results["logits"].items():
        logits = {(query_of[qid], chunk_id): value for qid, chunks in per_query.items() for chunk_id, value in chunks}
        reranker = PrecomputedReranker(logits, settings)
        runs = {}
        for top_n in RERANK_DEPTHS:
            reranker.combiner = ScoreCombiner.only("cross_encoder_z")
            if top_n == 20:
                runs["cross-encoder alone, N=20"] = {q: ranking(reranker.rerank(beir.held_out[q], h, top_n), RUN_DEPTH) for q, h in hybrid_hits.items()}
            reranker.combiner = fit_combiner(reranker, val_examples, beir.retriever, top_n, defaults.seed)
            runs[f"rerank N={top_n}"] = {q: ranking(reranker.rerank(beir.held_out[q], h, top_n), RUN_DEPTH) for q, h in hybrid_hits.items()}
        table[name] = score_runs(qrels, runs) | {"training": results["recipes"][name]}
    print(json.dumps({"device": results["device"], "held_out_claims": len(qrels), "table": table}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("export")
    p.add_argument("out", type=Path)
    p = sub.add_parser("device")
    p.add_argument("data_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--dry-run", action="store_true", help="2 steps per recipe, 5 claims scored: checks the script on a CPU.")
    p = sub.add_parser("score")
    p.add_argument("results", type=Path)
    p.add_argument("--held-out-k", type=int, help="Hybrid depth the export searched held-out claims at (default: the eval's).")
    args = parser.parse_args()
    if args.step == "export":
        export(args.out)
    elif args.step == "device":
        args.out.mkdir(parents=True, exist_ok=True)
        device(args.data_dir, args.out, args.recipes.split(","), args.dry_run)
    else:
        score(args.results, args.held_out_k)


if __name__ == "__main__":
    main()
