"""The answer pipeline end to end with the small real generator (SmolLM2-135M through llama.cpp):
retrieval, prompt, streamed tokens, citation resolution, abstention and bad input."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO
from generation.engines import GenerationError, load_generator
from generation.pipeline import AnswerPipeline, ContextsEvent, DoneEvent, QuestionError, TokenEvent
from citeloop.errors import UnknownCollectionError

pytestmark = pytest.mark.slow
TUTORIAL = REPO / "corpora" / "python-docs" / "sources" / "tutorial"


@pytest.fixture(scope="module")
def docs_settings(tmp_path_factory):
    from citeloop.config import Settings
    from retrieval.ingest import ingest
    from retrieval.readers import read_paths

    root = tmp_path_factory.mktemp("answer")
    for name in ("inputoutput.rst.txt", "datastructures.rst.txt", "errors.rst.txt"):
        shutil.copy(TUTORIAL / name, root / name)
    settings = Settings(data_dir=root / "var", generator="smollm2-135m", max_new_tokens=64)
    ingest(read_paths([root / n for n in ("inputoutput.rst.txt", "datastructures.rst.txt", "errors.rst.txt")]), "tutorial", settings)
    return settings


def test_stream_yields_contexts_then_tokens_then_the_answer(docs_settings):
    pipeline = AnswerPipeline("tutorial", docs_settings)
    events = list(pipeline.stream("How do I read a file line by line?"))
    assert isinstance(events[0], ContextsEvent) and isinstance(events[-1], DoneEvent)
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    assert tokens and all(isinstance(e, TokenEvent) for e in events[1:-1])
    answer = events[-1].answer
    assert "".join(tokens).strip() == answer.draft
    assert [c.chunk_id for c in answer.contexts] == [c.chunk_id for c in events[0].contexts]
    assert any("inputoutput" in c.doc_id for c in answer.contexts)
    assert answer.models["generator"].startswith("smollm2-135m@")
    assert list(answer.timings_ms) == ["retrieve", "first_token", "generate", "verify", "total"]
    # The answer keeps the exact messages it was generated from: its sources, numbered as cited, and the question.
    assert answer.prompt[0]["role"] == "system" and answer.prompt[-1]["content"].endswith("Question: How do I read a file line by line?")
    assert all(f"[{n}] " in answer.prompt[-1]["content"] for n in range(1, len(answer.contexts) + 1))
    # Greedy decoding writes the same answer every run, and the test model's is supported by a source.
    assert not answer.abstained and answer.abstain_reason is None
    assert answer.citations and any(s.supported for s in answer.sentences)
    by_chunk = {c.chunk_id: c for c in answer.contexts}
    for citation in answer.citations:
        # a citation points at the chunk numbered n in the prompt, and its quote is a span of that chunk
        assert answer.contexts[citation.n - 1].chunk_id == citation.chunk_id
        assert by_chunk[citation.chunk_id].text[citation.start : citation.end] == citation.quote
        assert f"[{citation.n}]" in answer.answer[answer.sentences[citation.sentence].start : answer.sentences[citation.sentence].end]


def test_draft_the_sources_do_not_support_is_refused_and_kept(docs_settings):
    answer = AnswerPipeline("tutorial", docs_settings).answer("How do I format a string with f-strings?")
    assert answer.abstained and answer.abstain_reason == "unsupported"
    assert answer.answer == "I don't know." and answer.citations == [] and answer.sentences == []
    assert "f-string" in answer.draft  # what the model wrote, for review
    assert {"generate", "verify"} <= answer.timings_ms.keys()


def test_question_far_from_every_document_is_refused_without_generating(docs_settings):
    events = list(AnswerPipeline("tutorial", docs_settings).stream("Who won the 1966 football World Cup final at Wembley?"))
    answer = events[-1].answer
    assert not any(isinstance(e, TokenEvent) for e in events)
    assert answer.abstained and answer.abstain_reason == "weak_evidence"
    assert answer.citations == [] and answer.answer == "I don't know."
    assert "generate" not in answer.timings_ms


def test_question_about_a_library_the_documents_never_mention_is_refused_without_generating(docs_settings):
    events = list(AnswerPipeline("tutorial", docs_settings).stream("How do I read a CSV file into a pandas DataFrame?"))
    answer = events[-1].answer
    assert not any(isinstance(e, TokenEvent) for e in events)
    assert answer.abstained and answer.abstain_reason == "unknown_terms" and "generate" not in answer.timings_ms


def test_bad_questions_and_collections_are_clear_errors(docs_settings):
    pipeline = AnswerPipeline("tutorial", docs_settings)
    with pytest.raises(QuestionError, match="empty"):
        pipeline.answer("   ")
    with pytest.raises(QuestionError, match="limit is 2000"):
        pipeline.answer("why " * 600)
    with pytest.raises(UnknownCollectionError, match="no-such"):
        AnswerPipeline("no-such", docs_settings)


def test_empty_collection_is_a_clear_error(docs_settings):
    from citeloop.db import Collection, session_scope

    with session_scope(docs_settings) as session:
        session.add(Collection(name="empty"))
    with pytest.raises(QuestionError, match="no documents"):
        AnswerPipeline("empty", docs_settings).answer("How do I read a file?")


def test_generation_past_its_deadline_is_an_error_not_an_answer(docs_settings):
    slow = docs_settings.model_copy(update={"generation_timeout_s": 0.001})
    with pytest.raises(GenerationError, match="longer than"):
        AnswerPipeline("tutorial", slow).answer("How do I read a file line by line?")


def test_transformers_engine_streams_from_the_safetensors_cache(docs_settings):
    from generation.engines import SamplingParams
    from generation.models import resolve_generator, safetensors_cache

    settings = docs_settings.model_copy(update={"generator_engine": "transformers"})
    generator = load_generator(settings)
    folder = safetensors_cache(resolve_generator("smollm2-135m", settings), settings)
    assert (folder / "model.safetensors").is_file() and folder.is_relative_to(settings.model_cache_dir)
    params = SamplingParams(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, timeout_s=60)
    pieces = list(generator.stream([{"role": "user", "content": "Say hello."}], params))
    assert "".join(pieces).strip()
