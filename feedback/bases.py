"""Warm-start bases: a cross-encoder trained once on bundled labelled data, which a collection's reranker is then
fine-tuned from (instead of the bare MiniLM with a random head), so a few dozen judged questions already help.

A base is named by the data it learnt from (`scifact`, `covidqa`, or both), built on first use into the cache
directory and checked by its files' sha256 before each use. It never serves a collection itself: only the
collection's own fine-tune does, after passing that collection's gate.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from citeloop.config import Settings
from citeloop.files import artifact_sha256
from feedback.cross_encoder_trainer import RerankerTrainingArgs

REPO = Path(__file__).resolve().parent.parent
# Bundled labelled data a base can learn from: BEIR directory and split.
BASE_SOURCES = {"scifact": ("corpora/scifact", "train"), "covidqa": ("corpora/covidqa", "dev")}
MANIFEST = "base.json"
# Fewer epochs than a collection's own training: a base only has to be a good starting point.
BASE_ARGS = RerankerTrainingArgs(epochs=2)


class BaseRerankerError(ValueError):
    pass


def parse_sources(spec: str) -> tuple[str, ...]:
    """'covidqa', 'scifact+covidqa' -> sorted names; raises BaseRerankerError for an unknown one."""
    names = tuple(sorted({s.strip() for s in spec.split("+") if s.strip()}))
    unknown = [n for n in names if n not in BASE_SOURCES]
    if not names or unknown:
        raise BaseRerankerError(f"unknown base data '{spec}'; use {', '.join(BASE_SOURCES)} or several joined by '+'")
    return names


def base_dir(sources: tuple[str, ...], settings: Settings, args: RerankerTrainingArgs = BASE_ARGS) -> Path:
    from hashlib import sha256

    recipe = json.dumps({"sources": sources, "args": asdict(args), "max_tokens": settings.rerank_max_tokens}, sort_keys=True)
    return settings.model_cache_dir / "reranker-bases" / f"{'+'.join(sources)}-{sha256(recipe.encode()).hexdigest()[:12]}"


def verified_base(sources: tuple[str, ...], settings: Settings) -> Path | None:
    """The built base's cross-encoder folder after checking its digest, or None when it is not built yet."""
    folder = base_dir(sources, settings)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    recorded = json.loads(manifest.read_text())
    model = folder / "cross-encoder"
    if artifact_sha256(model) != recorded["sha256"]:
        raise BaseRerankerError(f"the base reranker at {folder} was altered (sha256 mismatch); delete it and it is rebuilt")
    return model


def build_base(sources: tuple[str, ...], settings: Settings, show_progress: bool = False, log=lambda message: None) -> Path:
    """Train the base on the sources' labelled queries (each mined for hard negatives in its own collection) and
    store it; returns its cross-encoder folder. A no-op when it is built already."""
    from citeloop.modelpkg import MINILM
    from feedback.cross_encoder_trainer import fit_cross_encoder
    from feedback.reranker_loop import beir_examples
    from feedback.train_reranker import build_training_rows, split_examples, validation_samples

    existing = verified_base(sources, settings)
    if existing is not None:
        return existing
    folder = base_dir(sources, settings)
    work = Path(tempfile.mkdtemp(prefix="citeloop-base-"))
    try:
        rows, samples, counts = [], [], {}
        for name in sources:
            directory, split = BASE_SOURCES[name]
            log(f"base reranker: labelled queries of {name}")
            beir = beir_examples(REPO / directory, split, settings, show_progress)
            train, val = split_examples(beir.examples, BASE_ARGS.validation_fraction, BASE_ARGS.seed)
            rows += build_training_rows(train, beir.retriever, BASE_ARGS, work / f"miner-{name}")
            samples += validation_samples(val, beir.retriever, settings.rerank_top_n)
            counts[name] = len(train)
        log(f"base reranker: training on {len(rows)} rows")
        fitted = fit_cross_encoder(rows, samples, BASE_ARGS, MINILM.verified_path(), work, show_progress)
        staging = folder.with_name(folder.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        fitted.model.save_pretrained(str(staging / "cross-encoder"))
        manifest = {"sources": sources, "queries": counts, "val_ndcg@10": round(fitted.val_ndcg, 4), "steps": fitted.steps,
                    "args": asdict(BASE_ARGS), "sha256": artifact_sha256(staging / "cross-encoder")}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / "cross-encoder"


def warm_start_args(args: RerankerTrainingArgs) -> RerankerTrainingArgs:
    """From a trained head: no separate (faster) head learning rate."""
    return replace(args, head_learning_rate=None)
