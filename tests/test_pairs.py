"""Generator preference pairs from stored feedback: every pair rule, the prompt kept exactly as served, the gates
(prompt format, verification of the chosen answer, opt-outs, too few pairs), scrubbing and erasure reaching the
snapshot. Answers and events are stored through feedback.store on a real collection and both databases; chosen
answers are verified by serving's own citation verifier (the bundled MiniLM)."""

from __future__ import annotations

import uuid

import pytest
from citeloop.config import Settings
from citeloop.db import AnswerRecord, session_scope
from citeloop.keys import Principal, create_key, set_key_training_opt_out
from feedback.pairs import build_pair_set, citation_verifier, renumbered
from feedback.pii import PiiScrubber
from feedback.store import erase_actor, record_event, save_answer
from feedback.trainset import TrainingSetError, load_snapshot, save_snapshot
from generation.citations import Citation
from generation.pipeline import Answer
from generation.prompt import PROMPT_FORMAT, REFUSAL, build_messages, numbered_sources
from retrieval.ingest import ingest
from retrieval.readers import SourceDocument
from retrieval.retriever import CollectionRetriever, RetrievedChunk

CURATOR = Principal("cur", "curator", ("*",))
VOTERS = [Principal(f"voter{i}", "reader", ("*",)) for i in range(3)]


@pytest.fixture
def site(settings):
    docs = [
        SourceDocument(f"d{i}", f"d{i}", f"Topic {i}", f"The parser of release {i} reads configuration files written in TOML format.", {})
        for i in range(12)
    ]
    ingest(docs, "docs", settings)
    rows = CollectionRetriever("docs", settings).chunks()
    hits = [RetrievedChunk(r.chunk_id, r.doc_id, r.title, r.text, r.char_start, r.char_end, r.metadata, score=1.0, rank=i + 1) for i, r in enumerate(rows)]
    for principal in [CURATOR, *VOTERS]:
        create_key(principal.name, principal.role, ["*"], settings)
    return settings, hits


@pytest.fixture(scope="module")
def verify(tmp_path_factory):
    return citation_verifier(Settings(data_dir=tmp_path_factory.mktemp("verifier")))


def served(settings, question, hits, text, abstained=False, prompt_format=PROMPT_FORMAT, actor="asker"):
    """An answer stored as the API stores it, its prompt built from `hits` the way serving builds it."""
    sources = numbered_sources(hits)
    citations = [Citation(1, hits[0].chunk_id, hits[0].doc_id, hits[0].title, hits[0].text, 0, len(hits[0].text), True, 0.9, 0.9, 0.9, 0)]
    answer = Answer(
        answer_id=uuid.uuid4().hex, question=question, collection="docs", answer=text, abstained=abstained,
        abstain_reason="declined" if abstained else None, citations=[] if abstained else citations, sentences=[],
        contexts=list(hits), models={"generator": "test"}, timings_ms={}, prompt=build_messages(question, sources),
        prompt_format=prompt_format,
    )
    with session_scope(settings) as session:
        save_answer(session, answer, actor)
    return answer


def feedback(settings, kind, caller, **fields):
    with session_scope(settings) as session:
        return record_event(session, kind, caller, **fields)


def pairs(settings, verify, regenerate=None, scrub=lambda t: t, min_pairs=1, holdout=0.0001):
    with session_scope(settings) as session:
        return build_pair_set(session, "docs", scrub, verify, regenerate, holdout, min_pairs)


Q = "Which format do the configuration files of release 3 use?"
GOOD = "Release 3 reads configuration files written in TOML format [1]."


def test_a_correction_is_chosen_over_the_answer_and_over_a_refusal(site, verify):
    settings, hits = site
    wrong = served(settings, Q, hits[3:5], "They use YAML [1].")
    declined = served(settings, "What format does release 4 read?", hits[4:6], REFUSAL, abstained=True)
    feedback(settings, "correction", CURATOR, answer_id=wrong.answer_id, correction="Release 3 reads TOML.")  # superseded
    feedback(settings, "correction", CURATOR, answer_id=wrong.answer_id, correction=GOOD)
    feedback(settings, "correction", CURATOR, answer_id=declined.answer_id, correction="Release 4 reads configuration files written in TOML format [1].")
    pair_set = pairs(settings, verify)
    by_rule = {r.rule: r for r in pair_set.rows}
    assert set(by_rule) == {"correction", "correction_over_refusal"}
    assert by_rule["correction"].chosen == GOOD and by_rule["correction"].rejected == "They use YAML [1]."
    assert by_rule["correction_over_refusal"].rejected == REFUSAL
    # The pair's prompt is the exact prompt the answer was served from.
    assert by_rule["correction"].messages == wrong.prompt and by_rule["correction"].prompt_format == PROMPT_FORMAT
    assert pair_set.dropped["superseded_correction"] == 1


def test_a_correction_that_fails_citation_verification_is_dropped(site, verify):
    settings, hits = site
    wrong = served(settings, Q, hits[3:5], "They use YAML [1].")
    feedback(settings, "correction", CURATOR, answer_id=wrong.answer_id, correction="The moon landing happened in 1969 [2].")
    with pytest.raises(TrainingSetError, match="0 preference pairs") as raised:
        pairs(settings, verify)
    assert "correction_not_verified" in str(raised.value)


def test_votes_on_answers_to_the_same_prompt_become_pairs_weighted_by_key_agreement(site, verify):
    settings, hits = site
    liked = served(settings, Q, hits[3:5], GOOD)
    disliked = served(settings, Q, hits[3:5], "Release 3 parses files [2].")
    other_prompt = served(settings, Q, hits[6:8], "They use INI files [1].")  # other sources: another prompt
    feedback(settings, "thumbs_down", VOTERS[0], answer_id=liked.answer_id)
    feedback(settings, "thumbs_up", VOTERS[0], answer_id=liked.answer_id)  # changed their mind: the latest vote counts
    feedback(settings, "thumbs_up", VOTERS[1], answer_id=liked.answer_id)
    for voter in VOTERS[:2]:
        feedback(settings, "thumbs_down", voter, answer_id=disliked.answer_id)
    feedback(settings, "thumbs_down", VOTERS[2], answer_id=other_prompt.answer_id)
    pair_set = pairs(settings, verify)
    (pair,) = pair_set.rows
    assert pair.rule == "votes" and pair.chosen == GOOD and pair.rejected == "Release 3 parses files [2]."
    assert pair.messages == disliked.prompt and pair.weight == pytest.approx(0.6)  # weak signal x two agreeing keys
    assert pair_set.dropped["superseded_vote"] == 1 and pair_set.dropped["votes_without_a_contrary_answer"] == 1


def test_a_flagged_answer_is_rejected_for_one_regenerated_without_the_flagged_source(site, verify):
    settings, hits = site
    answer = served(settings, Q, [hits[7], hits[3], hits[4]], "Release 3 reads files of release 7 [1].")
    feedback(settings, "citation_flag", CURATOR, answer_id=answer.answer_id, citation_n=1, reason="another release")
    asked = []

    def regenerate(question, sources):
        asked.append([s.chunk_id for s in sources])
        return f"{sources[0].text.rstrip('.')} [1]."  # cites the first source it was given: [2] in the served prompt

    (pair,) = pairs(settings, verify, regenerate).rows
    assert asked == [[hits[3].chunk_id, hits[4].chunk_id]]
    assert pair.rule == "citation_flag" and pair.chosen.endswith("[2].") and pair.rejected == answer.answer
    assert renumbered("a [1] b [2][3].", {1: 2, 2: 3}) == "a [2] b [3]."
    # Without a generator to regenerate with, the flag makes no pair (and says so).
    with pytest.raises(TrainingSetError, match="flag_without_regeneration"):
        pairs(settings, verify)


def test_sources_curators_judged_not_relevant_make_the_refusal_chosen(site, verify):
    settings, hits = site
    question = "How do I bake bread?"
    answer = served(settings, question, hits[1:3], "Bake it with the parser of release 1 [1].")
    for hit in hits[1:3]:
        feedback(settings, "not_relevant", CURATOR, answer_id=answer.answer_id, chunk_id=hit.chunk_id)
    half = served(settings, "How do I bake a cake?", hits[4:6], "Use release 4 [1].")
    feedback(settings, "not_relevant", CURATOR, answer_id=half.answer_id, chunk_id=hits[4].chunk_id)  # one of two judged
    (pair,) = pairs(settings, verify).rows
    assert pair.rule == "refusal" and pair.chosen == REFUSAL and pair.rejected == answer.answer


def test_answers_without_their_prompt_or_of_another_prompt_format_make_no_pairs(site, verify):
    settings, hits = site
    old = served(settings, Q, hits[3:5], "They use YAML [1].", prompt_format="p-older")
    unrecorded = served(settings, Q, hits[3:5], "They use JSON [1].")
    with session_scope(settings) as session:
        session.get(AnswerRecord, unrecorded.answer_id).prompt = None
    for answer in (old, unrecorded):
        feedback(settings, "correction", CURATOR, answer_id=answer.answer_id, correction=GOOD)
    with pytest.raises(TrainingSetError, match="0 preference pairs") as raised:
        pairs(settings, verify)
    assert "answer_of_another_prompt_format" in str(raised.value) and "answer_without_stored_prompt" in str(raised.value)


def test_pairs_are_scrubbed_snapshotted_erased_and_skip_opted_out_keys(site, verify):
    settings, hits = site
    question = "I am Maria Gonzalez: which format do the configuration files of release 3 use?"
    answer = served(settings, question, hits[3:5], "They use YAML [1].", actor="maria")
    feedback(settings, "correction", CURATOR, answer_id=answer.answer_id, correction=GOOD)
    create_key("cur2", "curator", ["*"], settings)
    other = served(settings, "What format does release 5 read?", hits[5:7], "INI [1].")
    feedback(settings, "correction", Principal("cur2", "curator", ("*",)), answer_id=other.answer_id, correction="Release 5 reads configuration files written in TOML format [1].")
    pair_set = pairs(settings, verify, scrub=PiiScrubber().scrub)
    assert len(pair_set.rows) == 2
    scrubbed = next(r for r in pair_set.rows if "release 3" in r.query)
    assert "Maria" not in scrubbed.query and all("Maria" not in content for _, content in scrubbed.prompt)
    with session_scope(settings) as session:
        snapshot = save_snapshot(session, "docs", "generator", pair_set)
    with session_scope(settings) as session:
        assert load_snapshot(session, snapshot.id).rows == tuple(pair_set.rows)
        erase_actor(session, "cur2", Principal("admin", "admin", ("*",)))
    with session_scope(settings) as session:
        after = load_snapshot(session, snapshot.id)
    assert [r.answer_id for r in after.rows] == [answer.answer_id] and after.erased_rows == 1
    set_key_training_opt_out("cur", True, settings)
    with pytest.raises(TrainingSetError, match="opted out"):
        pairs(settings, verify)
