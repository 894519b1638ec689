"""Reranker training, registry gate, promotion and rollback on a real (tiny) SciFact collection.

The training run is a smoke run (a few steps, 64-token pairs); quality targets are measured in bench/.
"""

from __future__ import annotations

import json
import shutil

import pytest

from citeloop.config import Settings
from citeloop.registry import (
    CorruptArtifactError,
    RegistryError,
    active_version,
    get_version,
    list_versions,
    promote,
    register_candidate,
    rollback,
)
from eval.retrieval import evaluate_retrieval
from feedback.reranker_loop import holdout_queries, run_gate, train_from_beir
from feedback.cross_encoder_trainer import RerankerTrainingArgs
from feedback.train_reranker import TrainingDataError, train_reranker
from retrieval.rerank import COMBINER_FILE, RankedSearch, ScoreCombiner

SMOKE = RerankerTrainingArgs(epochs=1, max_steps=2, batch_size=4, hard_negatives=2, random_negatives=1, max_tokens=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_beir):
    settings = Settings(data_dir=tmp_path_factory.mktemp("var"), rerank_max_tokens=64, rerank_top_n=10)
    report = train_from_beir(tiny_beir, "test", SMOKE, settings)
    return settings, report


def test_training_registers_a_candidate_with_its_snapshot_and_gate(trained, tiny_beir):
    settings, report = trained
    version = report.version
    assert version.status == "candidate" and version.kind == "reranker"
    assert (version.path / "cross-encoder").is_dir() and (version.path / COMBINER_FILE).is_file()
    assert len(version.snapshot_id) == 64
    assert version.metrics["steps"] == 2
    assert 0 <= version.metrics["val_ndcg@10"] <= 1  # the cross-encoder alone on the validation split
    assert version.metrics["gate"]["baseline_name"] == "hybrid retrieval"
    held_out = holdout_queries(tiny_beir, "test", settings.eval_holdout)
    trained_on = {line.split('"query_id": "')[1].split('"')[0] for line in (version.path / "examples.jsonl").read_text().splitlines()}
    assert held_out and not (held_out & trained_on)
    # Nothing is active until a promotion: searches say that hybrid serves.
    result = RankedSearch(version.collection, settings).search("vitamin D deficiency", k=5)
    assert result.reranker is None and "no promoted reranker" in result.note


def test_rerank_stage_reorders_top_n_and_keeps_stage_scores(trained, tiny_beir):
    settings, report = trained
    result = RankedSearch(report.version.collection, settings).search("vitamin D deficiency", k=12, reranker=report.version)
    assert result.reranker == report.version.id
    head = result.hits[: settings.rerank_top_n]
    assert [h.rank for h in result.hits] == list(range(1, 13))
    assert all({"dense", "bm25", "hybrid", "cross_encoder", "rerank"} <= set(h.stages) for h in head)
    assert all(a.score >= b.score for a, b in zip(result.hits, result.hits[1:]))
    metrics = evaluate_retrieval(tiny_beir, "test", ["hybrid", "rerank"], settings, reranker=report.version)
    assert set(metrics) == {"hybrid", "rerank"} and 0 <= metrics["rerank"]["ndcg@10"] <= 1


def test_a_gates_rankings_are_stored_runs_that_compare_and_report_per_query(trained, tmp_path):
    from citeloop.db import session_scope
    from eval.report import render_report
    from eval.runs import compare_runs, get_run, list_runs

    settings, report = trained
    reverse_dir = tmp_path / "reverse"
    shutil.copytree(report.version.path, reverse_dir)
    ScoreCombiner.only("fused_rank", -1.0).save(reverse_dir / COMBINER_FILE)
    reverse = register_candidate(reverse_dir, report.version.collection, "reranker", "r" * 64, report.version.params, {}, settings=settings)
    decision = run_gate(reverse, settings)
    assert f"eval compare {decision.runs['baseline']} {decision.runs['candidate']}" in decision.reason
    with session_scope(settings) as session:
        hybrid, candidate = get_run(session, decision.runs["baseline"]), get_run(session, decision.runs["candidate"])
        listed = {run.id for run in list_runs(session, {hybrid.collection})}
    assert {hybrid.id, candidate.id} <= listed
    assert hybrid.models["reranker"] is None and candidate.models["reranker"] == reverse.id
    assert candidate.config["kind"] == "ranking" and candidate.created_by == f"gate:{reverse.id}"
    assert hybrid.questions_sha256 == candidate.questions_sha256
    # The stored rows are the decision's figures: each query's nDCG@10 averages to the gated mean.
    assert candidate.metrics["ndcg@10"] == decision.candidate["ndcg@10"] and "per_query" not in candidate.metrics
    rows = candidate.rows
    assert len(rows) == candidate.metrics["queries"] and all(len(r["ranked"]) <= 10 and r["relevant"] for r in rows)
    assert sum(r["ndcg@10"] for r in rows) / len(rows) == pytest.approx(decision.candidate["ndcg@10"], abs=1e-3)
    # Reversing the fused order moves relevant documents down: the comparison finds the queries that fell.
    comparison = compare_runs(hybrid, candidate)
    ndcg = comparison["metrics"]["ndcg@10"]
    assert ndcg["paired_questions"] == len(rows) and ndcg["ci95"][0] <= ndcg["mean_paired_difference"] <= ndcg["ci95"][1]
    assert comparison["changed_by"] == "ndcg@10" and comparison["changed_most"]
    assert all(q["ndcg@10"]["b"] != q["ndcg@10"]["a"] for q in comparison["changed_most"])
    page = render_report(candidate, hybrid)
    assert "Worst-ranked queries" in page and "Worst-answered" not in page and rows[0]["ranked"][0] in page


def test_gate_refuses_a_worse_candidate_and_promotion_and_rollback_switch_versions(trained, tmp_path):
    settings, report = trained
    collection = report.version.collection
    # A deliberately worse candidate: the same cross-encoder, ranking by the reverse of the fused order.
    worse_dir = tmp_path / "worse"
    shutil.copytree(report.version.path, worse_dir)
    ScoreCombiner.only("fused_rank", -1.0).save(worse_dir / COMBINER_FILE)
    worse = register_candidate(worse_dir, collection, "reranker", "x" * 64, report.version.params, {}, settings=settings)
    decision = run_gate(worse, settings)
    assert not decision.passed and "nDCG@10" in decision.reason
    assert active_version(collection, "reranker", settings) is None

    # Promotion and rollback, regardless of the smoke model's quality: forced where its gate did not pass.
    good = report.version
    promote(good.id, settings, force=True)
    assert active_version(collection, "reranker", settings).id == good.id
    with pytest.raises(RegistryError, match="already active"):
        promote(good.id, settings)
    # A candidate held out on another fold: the active model trained on its held-out queries, so no fair comparison.
    other_fold_params = good.params | {"eval": good.params["eval"] | {"fold": 1}}
    shutil.copytree(good.path, tmp_path / "other-fold")
    other_fold = register_candidate(tmp_path / "other-fold", collection, "reranker", "z" * 64, other_fold_params, {}, settings=settings)
    decision = run_gate(other_fold, settings)
    assert not decision.passed and "unseen by both" in decision.reason
    with pytest.raises(RegistryError, match="--force"):
        promote(worse.id, settings)
    promote(worse.id, settings, force=True)
    assert get_version(good.id, settings).status == "retired"
    search = RankedSearch(collection, settings)
    assert search.search("vitamin D", k=3).reranker == worse.id  # picked up without a restart
    assert rollback(collection, "reranker", settings).id == good.id
    assert search.search("vitamin D", k=3).reranker == good.id
    assert rollback(collection, "reranker", settings) is None
    assert search.search("vitamin D", k=3).reranker is None
    with pytest.raises(RegistryError, match="no active reranker"):
        rollback(collection, "reranker", settings)
    with pytest.raises(RegistryError, match="is a reranker, not a generator"):
        get_version(good.id, settings, kind="generator")
    assert {v.id for v in list_versions(settings, collection=collection)} >= {good.id, worse.id}


def test_corrupt_artifact_is_refused_and_the_active_model_kept(trained, tmp_path):
    settings, report = trained
    broken_dir = tmp_path / "broken"
    shutil.copytree(report.version.path, broken_dir)
    broken = register_candidate(broken_dir, report.version.collection, "reranker", "y" * 64, {}, {}, settings=settings)
    (broken.path / COMBINER_FILE).write_text("{}")
    before = active_version(report.version.collection, "reranker", settings)
    with pytest.raises(CorruptArtifactError):
        promote(broken.id, settings, force=True)
    assert active_version(report.version.collection, "reranker", settings) == before


def test_too_few_examples_is_a_clear_error(trained):
    settings, report = trained
    with pytest.raises(TrainingDataError, match="at least"):
        train_reranker(report.version.collection, [], settings.data_dir / "nowhere", SMOKE, settings)


def test_stage_features_normalise_the_logit_per_query_and_score_ranks():
    from retrieval.rerank import FEATURES, stage_features
    from retrieval.retriever import RetrievedChunk, StageScore

    def hit(i, stages):
        return RetrievedChunk(f"c{i}", f"d{i}", "", "", 0, 0, {}, score=0.0, rank=i, stages=stages)

    hits = [
        hit(1, {"dense": StageScore(0.8, 1), "bm25": StageScore(12.0, 2)}),
        hit(2, {"bm25": StageScore(24.0, 1)}),  # the dense stage did not return it
        hit(3, {"dense": StageScore(0.5, 2)}),
    ]
    features = stage_features(hits, [2.0, 4.0, 0.0], rrf_k=60)
    column = dict(zip(FEATURES, features.T))
    assert features.shape == (3, len(FEATURES))
    assert column["cross_encoder_z"] == pytest.approx([0.0, 1.2247, -1.2247], abs=1e-4)
    # Shifting or scaling one query's logits changes nothing: the combiner sees the same features.
    assert stage_features(hits, [10.0, 14.0, 6.0], rrf_k=60) == pytest.approx(features)
    assert column["cross_encoder_rank"] == pytest.approx([60 / 62, 60 / 61, 60 / 63])
    assert column["dense"].tolist() == [0.8, 0.0, 0.5] and column["dense_rank"][1] == 0.0
    assert column["bm25"].tolist() == [0.5, 1.0, 0.0] and column["bm25_rank"][2] == 0.0
    assert column["fused_rank"] == pytest.approx([60 / 61, 60 / 62, 60 / 63])
    assert ScoreCombiner.only("fused_rank", -1.0).score(features).argmax() == 2
    with pytest.raises(ValueError, match="unknown combiner feature"):
        ScoreCombiner.only("cross_encoder")


def test_an_active_reranker_that_cannot_load_serves_hybrid_with_a_note(trained, tmp_path):
    settings, report = trained
    collection = report.version.collection
    old_dir = tmp_path / "old-format"
    shutil.copytree(report.version.path, old_dir)
    # An artifact registered by an older citeloop: its combiner weighs another feature set.
    old_features = {"features": ["cross_encoder", "dense", "bm25", "fused_rank"], "weights": [1.0, 0.0, 0.0, 0.0], "bias": 0.0}
    (old_dir / COMBINER_FILE).write_text(json.dumps(old_features))
    old = register_candidate(old_dir, collection, "reranker", "z" * 64, report.version.params, {}, settings=settings)
    promote(old.id, settings, force=True)  # the digest is intact, so the registry accepts it
    try:
        result = RankedSearch(collection, settings).search("vitamin D deficiency", k=5)
        assert result.reranker is None and old.id in result.note and "combiner features" in result.note
        assert len(result.hits) == 5 and all("rerank" not in h.stages for h in result.hits)
        with pytest.raises(ValueError, match="combiner features"):  # asked for by id: an error, not a silent fallback
            RankedSearch(collection, settings).search("vitamin D deficiency", k=5, reranker=old)
    finally:
        rollback(collection, "reranker", settings)


def test_bf16_probe_picks_the_precision_whose_training_step_is_faster():
    """The probe times a real forward + backward in fp32 and under bf16 autocast; the loss is made nearly free in
    one precision, so which is faster is known whatever the CPU."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    from citeloop.modelpkg import MINILM
    from feedback.cross_encoder_trainer import cpu_bf16_is_faster

    model = CrossEncoder(str(MINILM.verified_path()), num_labels=1, max_length=32)
    batch = Dataset.from_dict({"query": ["vitamin D", "sleep"], "positive": ["Vitamin D and bone.", "Sleep and memory."], "negative_1": ["Foxes.", "Rivers."]})
    real_loss = MultipleNegativesRankingLoss(model, num_negatives=1)

    def loss_free_under(free_bf16: bool):
        calls = []

        def loss(inputs, labels):
            under_bf16 = torch.is_autocast_enabled("cpu")
            calls.append(under_bf16)
            return torch.zeros((), requires_grad=True) * 1.0 if under_bf16 == free_bf16 else real_loss(inputs, labels)

        return loss, calls

    for free_bf16 in (True, False):
        loss, calls = loss_free_under(free_bf16)
        assert cpu_bf16_is_faster(model, loss, batch) is free_bf16
        assert calls == [False, False, True, True]  # a warm-up and a timed step in each precision
        assert all(p.grad is None for p in model.parameters())
