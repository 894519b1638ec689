"""The generator learns from feedback, end to end on real parts: questions asked over real HTTP (SmolLM2 answering),
curators' judgements and corrections through the API, a `generator` job on huey's SQLite queue run by a real
`citeloop worker` process (DPO of a LoRA adapter, llama.cpp conversion), the registry and the QA gate.

The feedback teaches refusing: curators judge every source shown for the training questions not relevant, so the
pairs choose "I don't know" over the answers; the held-out questions get corrections, so the gate scores answers
the adapter has learnt to decline. The gate must refuse that adapter; promoted by force it serves the collection
(answers name it), and a rollback puts the base generator back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from api.client import CiteloopError, Client
from citeloop.config import Settings
from citeloop.keys import create_key
from citeloop.registry import active_version, get_version, list_versions, promote, rollback
from feedback.examples import is_holdout, query_key
from tests.conftest import REPO
from tests.test_api_in_process import served
from tests.test_jobs import finished, wait_for

pytestmark = pytest.mark.slow

FORMATS = ["TOML", "YAML", "JSON", "INI", "XML", "CSV", "HCL", "EDN", "CUE", "Dhall", "KDL", "Jsonnet", "Pkl", "Nix", "Starlark", "RON"]
# The worker process reads its settings from the environment: the same as the test's.
ENVIRONMENT = {
    "CITELOOP_GENERATOR": "smollm2-135m",
    "CITELOOP_MAX_NEW_TOKENS": "32",
    "CITELOOP_ANSWER_CONTEXTS": "2",
    "CITELOOP_EXTRACTIVE_MIN_SIMILARITY": "1.01",  # never quote a source instead of a declined answer: the gate sees the model
    "CITELOOP_TRAINING_MIN_PAIRS": "4",
    "CITELOOP_EVAL_HOLDOUT": "0.3",
    "CITELOOP_JOB_HEARTBEAT_S": "0.5",
}
DPO = {"max_steps": 8, "batch_size": 2, "gradient_accumulation": 1, "learning_rate": 0.005, "max_length": 512}


def question(i: int) -> str:
    return f"Which configuration format does release {i} of the parser read?"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("generator-loop") / "var",
        **{k.removeprefix("CITELOOP_").lower(): v for k, v in ENVIRONMENT.items()},
    )
    keys = {"admin": create_key("admin", "admin", ["*"], settings), "curator": create_key("curator", "curator", ["*"], settings)}
    with served(settings) as (base, _app, _loop):
        admin, curator = Client(base, keys["admin"]), Client(base, keys["curator"])
        documents = [
            {"id": f"release-{i}", "title": f"Release {i}", "text": f"Release {i} of the parser reads configuration files written in {fmt}."}
            for i, fmt in enumerate(FORMATS)
        ]
        admin.create_collection("releases")
        admin.add_documents("releases", documents)
        for i in range(len(FORMATS)):
            answer = admin.ask("releases", question(i))
            shown = answer["contexts"]
            if is_holdout(query_key(question(i)), settings.eval_holdout):
                n = next((k for k, c in enumerate(shown, start=1) if c["doc_id"] == f"release-{i}"), None)
                if n is not None:
                    curator.correct(answer["answer_id"], f"Release {i} of the parser reads configuration files written in {FORMATS[i]} [{n}].")
            else:
                for context in shown:
                    curator.judge(context["chunk_id"], False, answer_id=answer["answer_id"])
        yield settings, admin, curator


def run_worker(settings: Settings, log_path) -> subprocess.Popen:
    env = dict(os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), **ENVIRONMENT)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "cli", "worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_a_generator_job_trains_gates_and_refuses_an_adapter_that_declines_answerable_questions(site, tmp_path):
    settings, admin, _ = site
    job = admin.submit_job("releases", kind="generator", options=DPO)
    assert job["kind"] == "generator" and job["status"] == "queued"
    worker = run_worker(settings, tmp_path / "worker.log")
    try:
        job = wait_for(admin, job["id"], finished, timeout_s=900)
    finally:
        worker.kill()
        worker.wait(timeout=30)
    assert job["status"] == "succeeded", (job, (tmp_path / "worker.log").read_text()[-3000:])
    assert any("training step 8/8" in line for line in job["log"]) and job["progress"] == 1.0
    version = get_version(job["version_id"], settings)
    assert version.kind == "generator" and version.status == "candidate" and version.parent_id is None
    assert version.params["base"]["name"] == "smollm2-135m" and version.snapshot_id == job["snapshot_id"]
    assert version.metrics["pairs"] >= 4 and (version.path / "adapter.gguf").is_file()
    gate = version.metrics["gate"]
    # Trained to refuse, the adapter declines the held-out answerable questions the base generator answers.
    assert not gate["passed"] and "decline rate on answerable questions rose" in gate["reason"], gate
    # Both evaluations are kept in the run history, answered by the base and by the candidate.
    from citeloop.db import session_scope
    from eval.runs import get_run

    with session_scope(settings) as session:
        base_run, candidate_run = (get_run(session, gate["runs"][name]) for name in ("baseline", "candidate"))
    assert base_run.questions_sha256 == candidate_run.questions_sha256 and candidate_run.created_by == f"gate:{version.id}"
    assert candidate_run.config["answered_by"] == version.id and "+lora@" in candidate_run.models["generator"]
    assert candidate_run.metrics["decline_rate_answerable"] == gate["candidate"]["decline_rate_answerable"]
    assert job["result"]["promoted"] is False and active_version("releases", "generator", settings) is None


def test_a_promoted_adapter_serves_the_collection_and_a_rollback_restores_the_base(site):
    settings, admin, _ = site
    [candidate] = list_versions(settings, "releases", "generator")
    before = admin.ask("releases", question(1))
    assert before["models"]["generator_version"] is None and "+lora@" not in before["models"]["generator"]
    promote(candidate.id, settings, actor="test", force=True)
    after = admin.ask("releases", question(1))
    assert after["models"]["generator_version"] == candidate.id and "+lora@" in after["models"]["generator"]
    rollback("releases", "generator", settings, actor="test")
    again = admin.ask("releases", question(1))
    assert again["models"]["generator_version"] is None and again["models"]["generator"] == before["models"]["generator"]


def test_bad_generator_job_requests_are_clear_errors(site):
    settings, admin, _ = site
    with pytest.raises(CiteloopError) as unknown:
        admin.submit_job("releases", kind="generator", options={"hard_negatives": 2})
    assert unknown.value.status in (400, 422) and "hard_negatives" in unknown.value.message
    with pytest.raises(CiteloopError) as wrong_kind:
        admin.submit_job("releases", kind="reward", options={"beta": 0.2})
    assert wrong_kind.value.status in (400, 422) and "a reward job may set" in wrong_kind.value.message
    admin.create_collection("empty")
    admin.add_documents("empty", [{"id": "x", "title": "X", "text": "Nothing anyone asked about."}])
    with pytest.raises(CiteloopError) as nothing:
        admin.submit_job("empty", kind="generator")
    assert nothing.value.status == 422 and "no feedback to train on" in nothing.value.message


def test_feedback_preview_shows_the_pairs_a_generator_job_would_train_on(site):
    settings, _, _ = site
    env = dict(os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), **ENVIRONMENT)
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "feedback", "preview", "releases", "--kind", "generator"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "pairs_refusal" in shown.stdout and "refusal: " in shown.stdout and "preference pairs: enough to train" in shown.stdout
    assert "held-out pairs' questions" in shown.stdout
    rated = subprocess.run(
        [sys.executable, "-m", "cli", "feedback", "preview", "releases", "--kind", "reward"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert rated.returncode == 0, rated.stderr
    assert "ratings_curator" in rated.stdout and "rated answers: enough to train" in rated.stdout


def test_a_generator_job_with_samples_needs_a_reward_model_and_pairs_its_ranking_of_sampled_answers(site):
    from dataclasses import replace

    from citeloop.db import session_scope
    from feedback.generator_loop import add_sampled_pairs
    from feedback.jobs import run_job
    from feedback.pairs import build_pair_set, citation_verifier
    from feedback.train_generator import GeneratorTrainingArgs
    from generation.pipeline import AnswerPipeline

    settings, admin, _ = site
    with pytest.raises(CiteloopError) as no_reward:
        admin.submit_job("releases", kind="generator", options={"samples": 2})
    assert no_reward.value.status == 422 and "no active reward model" in no_reward.value.message
    reward = run_job(admin.submit_job("releases", kind="reward", options={"epochs": 2})["id"], settings)  # the worker's code
    assert reward.status == "succeeded", reward.error
    if active_version("releases", "reward", settings) is None:  # its gate has few held-out items: serve it regardless
        promote(reward.version_id, settings, actor="test", force=True)
    questions = [f"Which format does parser release {i} read its configuration in?" for i in (2, 3, 5, 7)]
    for text in questions:
        admin.ask("releases", text)  # logged prompts no feedback pairs
    verify = citation_verifier(settings)
    with session_scope(settings) as session:
        pairs = build_pair_set(session, "releases", lambda t: t, verify, None, settings.eval_holdout, 0)
        explicit = len(pairs.rows)
        add_sampled_pairs(session, "releases", pairs, lambda t: t, verify, AnswerPipeline("releases", settings), replace(GeneratorTrainingArgs(), samples=2), settings, set())
    sampled = [r for r in pairs.rows if r.rule == "reward_samples"]
    assert len(pairs.rows) == explicit + len(sampled) and pairs.counts["pairs_reward_samples"] == len(sampled)
    assert all(r.event_ids == (f"answer:{r.answer_id}",) and r.chosen != r.rejected for r in sampled)
    # Every logged prompt outside the held-out share was sampled: paired, or dropped with its reason.
    eligible = sum(not is_holdout(query_key(q), settings.eval_holdout) for q in questions)
    judged = len(sampled) + pairs.dropped.get("sampled_without_a_margin", 0) + pairs.dropped.get("sampled_not_verified", 0)
    assert judged >= eligible > 0


def test_an_uploaded_evaluation_set_with_reference_answers_gates_generators_and_its_questions_never_train(site):
    from dataclasses import asdict, replace

    from citeloop.db import session_scope
    from feedback.evalsets import uploaded_query_keys
    from feedback.generator_loop import evaluation_questions, run_qa_gate
    from feedback.pairs import build_pair_set, citation_verifier
    from generation.pipeline import AnswerPipeline

    settings, admin, curator = site
    verify = citation_verifier(settings)
    with session_scope(settings) as session:
        before = build_pair_set(session, "releases", lambda t: t, verify, None, settings.eval_holdout, 0)
    trained = sorted({i for i in range(len(FORMATS)) for p in before.rows if p.query == question(i)})[:2]
    assert trained, before.counts
    rows = [
        {"id": f"r{i}", "user_input": question(i), "reference": f"Release {i} reads {FORMATS[i]} files.", "reference_doc_ids": [f"release-{i}"]}
        for i in trained
    ] + [{"id": "protobuf", "user_input": "Which release of the parser reads Protobuf files?", "answerable": False}]
    with pytest.raises(CiteloopError) as bad:
        curator.add_evalset("releases", "broken", [{"user_input": "Which release reads Protobuf?", "answerable": False, "reference": "None."}])
    assert bad.value.status == 400 and "row 1: an unanswerable row names no reference answer" in bad.value.message
    uploaded = curator.add_evalset("releases", "release notes", rows)
    assert (uploaded["queries"], uploaded["qa_questions"], uploaded["unanswerable"]) == (len(trained), len(trained) + 1, 1)
    # A later set with no reference answer (retrieval labels and a question to decline) cannot gate a generator.
    curator.add_evalset("releases", "labels", [{"user_input": question(3), "reference_doc_ids": ["release-3"]}, rows[-1] | {"id": "u"}])
    with session_scope(settings) as session:
        pairs = build_pair_set(session, "releases", lambda t: t, verify, None, settings.eval_holdout, 0, uploaded_query_keys(session, "releases"))
        questions, source = evaluation_questions(session, "releases", pairs.eval_rows)
    # The set's questions are left out of training, and they, not the held-out pairs', are what the gate asks.
    assert pairs.dropped["question_in_evaluation_set"] == sum(p.query in {question(i) for i in trained} for p in before.rows)
    assert not {query_key(question(i)) for i in trained} & {p.query_id for p in pairs.rows}
    assert [q.id for q in questions] == ["r" + str(i) for i in trained] + ["protobuf"]
    assert source == {"evalset": uploaded["id"], "evalset_name": "release notes", "question_events": {}}
    [candidate] = list_versions(settings, "releases", "generator")
    version = replace(candidate, params=candidate.params | {"eval": {"questions": [asdict(q) for q in questions], **source}})
    gate = run_qa_gate(version, AnswerPipeline("releases", settings), settings)
    assert gate.reason.startswith(f"{len(trained) + 1} questions of evaluation set 'release notes'")
    assert (gate.candidate["answerable"], gate.candidate["unanswerable"]) == (len(trained), 1) == (gate.baseline["answerable"], gate.baseline["unanswerable"])
    # ragas' judge-free scores of both sides are in the decision: answers against the references, contexts against the gold documents.
    assert all(side[name] is not None for side in (gate.candidate, gate.baseline) for name in ("rouge_score", "id_based_context_recall"))
    env = dict(os.environ, CITELOOP_DATA_DIR=str(settings.data_dir), COLUMNS="400", **ENVIRONMENT)  # rich wraps at the width
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "feedback", "preview", "releases", "--kind", "generator"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert f"gated on {len(trained) + 1} questions of evaluation set 'release notes'" in shown.stdout, shown.stdout + shown.stderr


def test_erasing_a_curator_removes_the_gate_questions_their_corrections_made(site):
    from citeloop.db import session_scope
    from citeloop.keys import Principal
    from feedback.store import erase_actor

    settings, _, _ = site
    candidate = next(v for v in list_versions(settings, "releases", "generator") if v.params["eval"]["questions"])
    assert set(candidate.params["eval"]["question_events"]) == {q["id"] for q in candidate.params["eval"]["questions"]}
    with session_scope(settings) as session:
        erase_actor(session, "curator", Principal("admin", "admin", ("*",)))
    erased = get_version(candidate.id, settings)
    # The gate questions' references were the curator's corrections: none is left to gate on.
    assert erased.params["eval"]["questions"] == [] and erased.params["eval"]["question_events"] == {}
    assert erased.data_erased_at is not None
