"""The reward model: answers rated from stored feedback (each rule, curators outranking votes, conflicts dropped,
the held-out share), a real cross-encoder fit on the bundled MiniLM, its gate against chance and against what
serves, and a reward job through the job runner with the registry."""

from __future__ import annotations

import pytest

from citeloop.registry import active_version, get_version
from feedback.examples import is_holdout, query_key
from feedback.pairs import build_rating_set
from feedback.reward import CHANCE, RewardModel, RewardTrainingArgs, accuracy_report, item_scores, reward_gate_decision, train_reward_model
from feedback.trainset import RatedAnswer, TrainingSetError, load_snapshot, prompt_key
from generation.prompt import REFUSAL
from tests.test_pairs import CURATOR, GOOD, Q, VOTERS, feedback, served, site  # noqa: F401  (site: the fixture)


def ratings(settings, min_ratings=1, holdout=0.0001):
    from citeloop.db import session_scope

    with session_scope(settings) as session:
        return build_rating_set(session, "docs", lambda t: t, holdout, min_ratings)


def test_feedback_rates_answers_curators_outrank_votes_and_conflicts_are_dropped(site):
    settings, hits = site
    corrected = served(settings, Q, hits[3:5], "They use YAML [1].")
    feedback(settings, "correction", CURATOR, answer_id=corrected.answer_id, correction=GOOD)
    liked = served(settings, "What does release 5 read?", hits[5:7], "Release 5 reads configuration files written in TOML format [1].")
    for voter in VOTERS[:2]:
        feedback(settings, "thumbs_up", voter, answer_id=liked.answer_id)
    disliked = served(settings, "What does release 6 read?", hits[6:8], "Release 6 parses files [2].")
    feedback(settings, "thumbs_down", VOTERS[0], answer_id=disliked.answer_id)
    # A vote on an answer a curator also rated: the curator's rating counts.
    feedback(settings, "thumbs_up", VOTERS[2], answer_id=corrected.answer_id)
    flagged = served(settings, "What does release 7 read?", hits[7:9], "Release 7 reads JSON [2].")
    feedback(settings, "citation_flag", CURATOR, answer_id=flagged.answer_id, chunk_id=hits[8].chunk_id)
    rated = {(r.query, r.answer): r for r in ratings(settings).rows}
    assert rated[Q, GOOD].label == 1 and rated[Q, GOOD].signal == "curator"
    assert rated[Q, "They use YAML [1]."].label == 0 and rated[Q, "They use YAML [1]."].signal == "curator"
    assert rated["What does release 5 read?", liked.answer].label == 1 and rated["What does release 5 read?", liked.answer].signal == "vote"
    assert rated["What does release 6 read?", disliked.answer].label == 0
    assert rated["What does release 7 read?", "Release 7 reads JSON [2]."].label == 0  # flagged: no regeneration needed
    assert len(rated) == 5 and ratings(settings).dropped["vote_outranked_by_curator"] == 1
    # Two curators who disagree on the same answer: it is not rated.
    other = served(settings, "What does release 8 read?", hits[8:10], "Release 8 reads TOML [1].")
    feedback(settings, "correction", CURATOR, answer_id=other.answer_id, correction="Release 8 reads configuration files written in TOML format [1].")
    again = served(settings, "What does release 8 read?", hits[8:10], "Release 8 reads configuration files written in TOML format [1].")
    feedback(settings, "citation_flag", CURATOR, answer_id=again.answer_id, chunk_id=hits[8].chunk_id)
    result = ratings(settings)
    assert result.dropped["rating_curator_conflict"] == 1
    assert ("What does release 8 read?", "Release 8 reads configuration files written in TOML format [1].") not in {(r.query, r.answer) for r in result.rows}


def test_refusals_are_rated_and_the_held_out_share_keeps_its_pairs(site):
    settings, hits = site
    questions = [f"What does release {i} read?" for i in range(12)]
    for i, question in enumerate(questions):
        answer = served(settings, question, hits[i : i + 1], f"Release {i} is written in Go [1].")
        feedback(settings, "not_relevant", CURATOR, answer_id=answer.answer_id, chunk_id=hits[i].chunk_id)
    result = ratings(settings, holdout=0.3)
    held = {query_key(q) for q in questions if is_holdout(query_key(q), 0.3)}
    assert held and all(r.query_id not in held for r in result.rows)
    assert {(r.answer, r.label) for r in result.rows} == {(REFUSAL, 1)} | {(f"Release {i} is written in Go [1].", 0) for i in range(12) if query_key(questions[i]) not in held}
    assert len(result.eval_pairs) == len(held) and all(chosen == REFUSAL for _, chosen, *_ in result.eval_pairs)


def test_too_few_or_one_sided_ratings_are_clear_errors(site):
    settings, hits = site
    liked = served(settings, Q, hits[3:5], GOOD)
    feedback(settings, "thumbs_up", VOTERS[0], answer_id=liked.answer_id)
    with pytest.raises(TrainingSetError, match="1 rated answers to train a reward model on"):
        ratings(settings, min_ratings=5)
    with pytest.raises(TrainingSetError, match="all preferred; a reward model needs both"):
        ratings(settings, min_ratings=1)


def rated(i: int, answer: str, label: int) -> RatedAnswer:
    question = f"Which configuration format does release {i} read?"
    return RatedAnswer(query_key(question), question, answer, label, 1.0, "vote", f"a{i}-{label}", (f"e{i}-{label}",))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A reward model trained on answers that state the format (preferred) over ones that decline or wander off:
    learnable from the words alone."""
    rows = [rated(i, f"Release {i} reads configuration files written in TOML [1].", 1) for i in range(24)]
    rows += [rated(i, REFUSAL if i % 2 else f"Release {i} was published on a Tuesday.", 0) for i in range(24)]
    out = tmp_path_factory.mktemp("reward")
    figures = train_reward_model(rows, out, RewardTrainingArgs(epochs=4, learning_rate=1e-4))
    return figures, RewardModel(out)


def test_a_reward_model_learns_which_answers_were_preferred_and_beats_chance_on_held_out_answers(reward_model):
    figures, model = reward_model
    assert figures["ratings"] == 48 and figures["preferred"] == 24 and figures["steps"] == 12
    held_ratings = [rated(i, f"Release {i} reads configuration files written in YAML [2].", 1) for i in range(30, 36)]
    held_ratings += [rated(i, REFUSAL, 0) for i in range(30, 33)]
    pairs = [(r.query, f"Release {i} reads files written in INI [1].", REFUSAL) for i, r in enumerate(held_ratings[:4])]
    items = item_scores(model.score, held_ratings, pairs)
    report = accuracy_report(items, held_ratings)
    assert report["items"] == 13 and report["pairs"] == 4 and report["ratings"] == report["votes"] == 9
    assert report["pair_accuracy"] == 1.0 and report["rating_accuracy"] >= 8 / 9, report


def test_the_reward_gate_needs_a_gain_whose_interval_clears_the_bound(sqlite_settings):
    settings = sqlite_settings
    ratings_ = [rated(i, "x", 1) for i in range(20)]
    perfect = {f"rating-{i}": 1.0 for i in range(20)}
    chance = {k: CHANCE for k in perfect}
    passed = reward_gate_decision(perfect, chance, ratings_, "chance", settings)
    assert passed.passed and passed.gain == 0.5 and passed.candidate["accuracy"] == 1.0 and passed.baseline["accuracy"] == 0.5
    lucky = {f"rating-{i}": float(i < 11) for i in range(20)}  # 55%: a gain, but not a sure one
    refused = reward_gate_decision(lucky, chance, ratings_, "chance", settings)
    assert not refused.passed and "lower bound is not above" in refused.reason
    worse = reward_gate_decision(chance, perfect, ratings_, "active reward model rew-1", settings)
    assert not worse.passed and "is not a gain" in worse.reason
    few = {f"rating-{i}": 1.0 for i in range(3)}  # all right, but three items prove nothing
    too_few = reward_gate_decision(few, {k: CHANCE for k in few}, ratings_[:3], "chance", settings)
    assert not too_few.passed and "3 held-out items" in too_few.reason


def test_a_reward_job_trains_registers_gates_and_promotes_a_reward_model(site):
    from feedback.jobs import run_job, submit_job

    settings, hits = site
    settings = settings.model_copy(update={"training_min_pairs": 8, "eval_holdout": 0.3})
    for i in range(12):
        question = f"Which format do the configuration files of release {i} use?"
        answer = served(settings, question, hits[i : i + 2], f"Release {i} is written in Go [2].")
        feedback(settings, "correction", CURATOR, answer_id=answer.answer_id, correction=f"The parser of release {i} reads configuration files written in TOML format [1].")
    job = submit_job("reward", "docs", "test", settings, options={"epochs": 4, "learning_rate": 1e-4})
    done = run_job(job.id, settings)
    assert done.status == "succeeded", done.error
    version = get_version(done.version_id, settings)
    assert version.kind == "reward" and load_snapshot_kind(settings, version.snapshot_id) == "reward"
    gate = version.metrics["gate"]
    assert gate["baseline_name"] == "chance" and gate["candidate"]["pairs"] == len(version.params["eval"]["pairs"]) > 0
    assert gate["passed"] and gate["candidate"]["pair_accuracy"] == 1.0, gate  # corrections (the source's words) over "written in Go"
    assert done.result["promoted"] and active_version("docs", "reward", settings).id == version.id
    # The same feedback again: a model no better than the active one is not promoted.
    again = run_job(submit_job("reward", "docs", "test", settings, options={"epochs": 4, "learning_rate": 1e-4}).id, settings)
    second = get_version(again.version_id, settings)
    assert second.parent_id == version.id and second.metrics["gate"]["baseline_name"] == f"active reward model {version.id}"
    assert not second.metrics["gate"]["passed"] and "is not a gain" in second.metrics["gate"]["reason"]
    assert active_version("docs", "reward", settings).id == version.id
    # Erasing the curator removes their judgements from the held-out items the versions keep for their gate.
    from citeloop.db import session_scope
    from citeloop.keys import Principal
    from feedback.store import erase_actor

    with session_scope(settings) as session:
        erase_actor(session, CURATOR.name, Principal("admin", "admin", ("*",)))
    erased = get_version(version.id, settings)
    assert erased.params["eval"]["ratings"] == [] and erased.params["eval"]["pairs"] == [] and erased.data_erased_at is not None


def load_snapshot_kind(settings, snapshot_id: str) -> str:
    from citeloop.db import session_scope

    with session_scope(settings) as session:
        return load_snapshot(session, snapshot_id).kind


def test_answers_sampled_from_logged_prompts_pair_the_reward_models_best_over_its_worst(site, reward_model):
    from citeloop.db import session_scope
    from citeloop.keys import Principal, create_key, set_key_training_opt_out
    from feedback.pairs import PairSet, citation_verifier, sampled_pairs
    from feedback.store import erase_actor
    from feedback.trainset import save_snapshot

    settings, hits = site
    _, model = reward_model
    drafts = {  # per source shown: what the "generator" writes for seeds 0, 1, 2
        hits[3].chunk_id: ["Release 3 reads configuration files written in TOML format [1].", REFUSAL, "Release 3 was published on a Tuesday."],
        hits[5].chunk_id: ["Release 5 was published on a Tuesday."] * 3,  # one answer, whatever the seed: nothing to compare
    }

    def sample(messages, seed):
        shown = next(c for c in drafts if any(h.chunk_id == c and h.text in messages[1]["content"] for h in hits))
        return drafts[shown][seed]

    logged = served(settings, "Which format does release 3 read?", hits[3:4], "No idea.")
    served(settings, "Which format does release 5 read?", hits[5:6], "No idea.")
    create_key("quiet", "reader", ["*"], settings)
    set_key_training_opt_out("quiet", True, settings)
    served(settings, "Which format does release 3 use?", hits[3:4], "No idea.", actor="quiet")  # opted out: never sampled
    corrected = served(settings, "What does release 3 read, then?", hits[3:4], "No idea.")  # feedback paired it
    with session_scope(settings) as session:
        paired = {prompt_key(tuple((m["role"], m["content"]) for m in corrected.prompt))}
        rows, dropped = sampled_pairs(session, "docs", lambda t: t, sample, model.score, citation_verifier(settings), 3, 0.0001, paired)
    (pair,) = rows
    assert pair.rule == "reward_samples" and pair.answer_id == logged.answer_id and pair.messages == logged.prompt
    assert pair.chosen == "Release 3 reads configuration files written in TOML format [1]." and pair.rejected == "Release 3 was published on a Tuesday."
    assert pair.event_ids == (f"answer:{logged.answer_id}",)
    assert dropped == {"sampled_without_a_margin": 1, "sampling_skipped_key_opted_out": 1, "sampling_skipped_prompt_paired_by_feedback": 1}
    with session_scope(settings) as session, pytest.raises(TrainingSetError, match="at least 2 samples"):
        sampled_pairs(session, "docs", lambda t: t, sample, model.score, citation_verifier(settings), 1, 0.0001, set())
    # Erasing the person who asked removes the pair sampled from their prompt from every snapshot.
    with session_scope(settings) as session:
        snapshot = save_snapshot(session, "docs", "generator", PairSet(rows, [], {}, {}))
        erase_actor(session, "asker", Principal("admin", "admin", ("*",)))
    with session_scope(settings) as session:
        assert load_snapshot(session, snapshot.id).rows == () and load_snapshot(session, snapshot.id).erased_rows == 1
