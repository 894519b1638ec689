"""Each answer-pipeline component alone, with real parts: a small ingested collection, the MiniLM embedder,
a registered cross-encoder artifact and the SmolLM2 test generator."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import pytest

from citeloop.config import Settings
from generation.citations import AnswerSentence, SpanEncoder, SupportThresholds
from generation.components import AbstentionPolicy, AnswerGenerator, CitationVerifier, EvidenceExtractor, PromptBuilder, TokenEvent, VerifiedAnswer
from generation.engines import SamplingParams, load_generator
from generation.prompt import numbered_sources
from retrieval.ingest import ingest
from retrieval.readers import read_paths
from retrieval.rerank import COMBINER_FILE, CROSS_ENCODER_DIR, HybridRetriever, Reranker, ScoreCombiner
from retrieval.retriever import CollectionRetriever, RetrievedChunk, StageScore
from retrieval.sparse import stem

DOCS = {
    "files.md": "# Files\n\nThe open() function returns a file object. Use the with statement so the file is closed.\n",
    "lists.txt": "list.append(x) adds an item to the end of the list. list.sort() sorts the list in place.\n",
    "weather.txt": "Rain is expected in the north on Tuesday, with strong winds near the coast.\n",
}
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0, timeout_s=120)


def write_docs(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text(DOCS[name])
    return [folder / name for name in names]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """Settings of a database holding collection 'kb' with the three DOCS."""
    root = tmp_path_factory.mktemp("components")
    settings = Settings(data_dir=root / "var", generator="smollm2-135m", rerank_backend="torch", rerank_max_tokens=64)
    ingest(read_paths(write_docs(root / "docs", DOCS)), "kb", settings)
    return settings


@pytest.fixture(scope="module")
def kb_hits(kb) -> list[RetrievedChunk]:
    return HybridRetriever(CollectionRetriever("kb", kb)).run("How do I open a file?", k=3).hits


def drain(run):
    """The events a component's streaming run yields, and the value it returns."""
    events = []
    while True:
        try:
            events.append(next(run))
        except StopIteration as done:
            return events, done.value


def hit(chunk_id: str, text: str, dense: float | None) -> RetrievedChunk:
    stages = {"dense": StageScore(dense, 1)} if dense is not None else {"bm25": StageScore(3.0, 1)}
    return RetrievedChunk(chunk_id, chunk_id, "", text, 0, len(text), {}, score=0.0, rank=1, stages=stages)


# ---- HybridRetriever -----------------------------------------------------------------------------------


def test_retriever_returns_fused_hits_and_picks_up_a_new_build(settings, tmp_path):
    ingest(read_paths(write_docs(tmp_path / "docs", ["files.md", "lists.txt"])), "kb", settings)
    retriever = HybridRetriever(CollectionRetriever("kb", settings), min_hits=2)

    found = retriever.run("What does list.append do?", k=1)
    assert found.chunks == 2 and [h.doc_id for h in found.hits] == ["lists.txt", "files.md"]  # min_hits, best first
    assert {"dense", "bm25", "hybrid"} <= set(found.hits[0].stages)  # each stage's score and rank kept
    assert {"dense", "hybrid"} <= set(found.hits[1].stages)  # no query word in it: BM25 did not return it

    ingest(read_paths(write_docs(tmp_path / "docs", ["weather.txt"])), "kb", settings)
    found = retriever.run("Will it rain on Tuesday?", k=1)
    assert found.chunks == 3 and found.hits[0].doc_id == "weather.txt"  # no reload by hand


def test_retriever_counts_the_chunks_that_contain_each_query_term(kb):
    retriever = HybridRetriever(CollectionRetriever("kb", kb))
    counts = retriever.term_counts("How do I open a Parquet file with pyarrow and the open() function?")
    # BM25's stopwords ("a", "with", "and", "the") are left out; "How" and "do" are in no chunk of 'kb'.
    assert {term for term, n in counts.items() if n == 0} == {"How", "do", "Parquet", "pyarrow"}
    assert counts["open"] >= 1 and counts["file"] >= 1
    counts = retriever.term_counts("Does builtins.list.append or list.remove add items, e.g. at the end?")
    assert counts["builtins.list.append"] >= 1  # counted by its last two parts, which a chunk has
    assert counts["list.remove"] == 0 and counts["remove"] == 0


def test_retriever_of_an_empty_collection_reports_no_chunks(settings):
    from citeloop.db import Collection, session_scope

    with session_scope(settings) as session:
        session.add(Collection(name="empty"))
    found = HybridRetriever(CollectionRetriever("empty", settings)).run("anything", k=5)
    assert (found.hits, found.chunks) == ([], 0)


# ---- Reranker ------------------------------------------------------------------------------------------


def test_reranker_without_a_promoted_version_passes_hits_through_with_a_note(kb, kb_hits):
    result = Reranker("kb", kb).run("How do I open a file?", kb_hits, k=2)
    assert result.hits == kb_hits[:2] and result.reranker is None
    assert "no promoted reranker for collection 'kb'" in result.note


def test_reranker_orders_by_the_versions_combiner(kb, kb_hits, tmp_path):
    from citeloop.modelpkg import MINILM
    from citeloop.registry import register_candidate

    artifact = tmp_path / "artifact"
    shutil.copytree(MINILM.verified_path(), artifact / CROSS_ENCODER_DIR)
    ScoreCombiner.only("fused_rank", -1.0).save(artifact / COMBINER_FILE)  # the reverse of the fused order
    version = register_candidate(artifact, "kb", "reranker", "s" * 64, {}, {}, settings=kb)

    result = Reranker("kb", kb).run("How do I open a file?", kb_hits, k=2, version=version)
    assert result.reranker == version.id and result.note is None
    assert [h.chunk_id for h in result.hits] == [h.chunk_id for h in reversed(kb_hits)][:2]
    assert [h.rank for h in result.hits] == [1, 2]
    assert all({"cross_encoder", "rerank"} <= set(h.stages) for h in result.hits)


def test_reranker_asked_for_a_version_it_cannot_load_raises(kb, kb_hits, tmp_path):
    from citeloop.registry import CorruptArtifactError, register_candidate

    artifact = tmp_path / "artifact"
    (artifact / CROSS_ENCODER_DIR).mkdir(parents=True)
    ScoreCombiner.only("fused_rank").save(artifact / COMBINER_FILE)
    version = register_candidate(artifact, "kb", "reranker", "s" * 64, {}, {}, settings=kb)
    (version.path / COMBINER_FILE).write_text("{}")  # altered after registration
    with pytest.raises(CorruptArtifactError, match=version.id):
        Reranker("kb", kb).run("How do I open a file?", kb_hits, k=2, version=version)


# ---- PromptBuilder -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(kb):
    return load_generator(kb)


def test_prompt_builder_keeps_the_leading_sources_that_fit(generator):
    hits = [hit("a", "Files are closed by with.", 0.6), hit("b", "word " * 400, 0.5), hit("c", "Lists grow.", 0.4)]
    roomy = PromptBuilder(generator.count_tokens, budget=4096).run("How are files closed?", hits)
    assert [s.n for s in roomy.sources] == [1, 2, 3] and roomy.contexts == hits

    # Room for the first and the last but not the long second: sources stop at the first that does not fit,
    # so [n] always names the n-th best hit.
    fixed = PromptBuilder(generator.count_tokens, budget=0).run("How are files closed?", []).messages
    small = sum(generator.count_tokens(m["content"]) for m in fixed) + 60
    tight = PromptBuilder(generator.count_tokens, budget=small).run("How are files closed?", hits)
    assert [(s.n, s.chunk_id) for s in tight.sources] == [(1, "a")] and tight.contexts == hits[:1]
    assert "[1] Files are closed by with." in tight.messages[-1]["content"]
    assert "Lists grow." not in tight.messages[-1]["content"]
    assert tight.messages[-1]["content"].endswith("Question: How are files closed?")

    starved = PromptBuilder(generator.count_tokens, budget=10).run("How are files closed?", hits)
    assert starved.sources == [] and starved.contexts == []


def test_compact_evidence_shows_the_closest_sentences_and_verification_still_quotes_the_chunk(generator, kb):
    from retrieval.embedder import load_embedder

    text = (
        "The weather was mild all week. Rain is expected on Tuesday.\n\n"
        "To close a file, use the with statement: the file is closed when the block ends. Lists grow with append."
    )
    spans = SpanEncoder(load_embedder(kb).embed)
    compact = PromptBuilder(generator.count_tokens, 4096, spans, evidence_sentences=1).run("How do I close a file?", [hit("f", text, 0.6)])
    (source,) = compact.sources
    assert source.text == text  # what citations are checked against and quote
    assert source.excerpt == "To close a file, use the with statement: the file is closed when the block ends."
    assert "[1] To close a file" in compact.messages[-1]["content"] and "Rain" not in compact.messages[-1]["content"]

    whole = PromptBuilder(generator.count_tokens, 4096, spans, evidence_sentences=10).run("How do I close a file?", [hit("f", text, 0.6)])
    assert whole.sources[0].excerpt == "" and "Rain is expected" in whole.messages[-1]["content"]

    verified = CitationVerifier(spans, SupportThresholds(0.5, 0.4)).run(
        "How do I close a file?", "Use the with statement: the file is closed when the block ends [1].", compact.sources
    )
    (citation,) = verified.citations
    assert citation.supported and text[citation.start : citation.end] == citation.quote


# ---- EvidenceExtractor ---------------------------------------------------------------------------------


def test_extractor_quotes_the_sentence_closest_to_the_question_only_when_it_is_close(kb):
    from retrieval.embedder import load_embedder

    spans = SpanEncoder(load_embedder(kb).embed)
    text = "Rain is expected on Tuesday.\n\nTo close a file, use the with statement: the file is closed when the block ends."
    sources = numbered_sources([hit("w", "Strong winds near the coast.", 0.3), hit("f", text, 0.6)])
    extract = EvidenceExtractor(spans, min_similarity=0.5).run("How do I close a file?", sources)
    assert extract is not None
    (citation,) = extract.citations
    assert (citation.n, citation.supported, citation.doc_id) == (2, True, "f")
    assert citation.quote == "To close a file, use the with statement: the file is closed when the block ends."
    assert text[citation.start : citation.end] == citation.quote
    assert extract.answer == f'"{citation.quote}" [2]' and extract.sentences[0].cited == [2]

    assert EvidenceExtractor(spans, min_similarity=0.5).run("What is the boiling point of mercury?", sources) is None
    assert EvidenceExtractor(spans, min_similarity=1.01).run("How do I close a file?", sources) is None
    assert EvidenceExtractor(spans, min_similarity=0.5).run("How do I close a file?", []) is None


# ---- AnswerGenerator -----------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_generator_streams_pieces_and_times_the_first_from_the_request_start(generator):
    component = AnswerGenerator(generator, GREEDY)
    assert component.model_id.startswith("smollm2-135m@")
    events, draft = drain(component.run(MESSAGES, started=time.perf_counter() - 1.0))  # asked a second ago
    assert events and all(isinstance(e, TokenEvent) for e in events)
    assert draft.text and draft.text == "".join(e.text for e in events).strip()
    assert set(draft.timings_ms) == {"first_token", "generate"}
    # from the request's start, not the engine's: at least the second waited, at most that plus the decoding
    assert 1000 <= draft.timings_ms["first_token"] <= 1000 + draft.timings_ms["generate"] + 1


def test_generator_closed_mid_answer_frees_the_engine(generator):
    component = AnswerGenerator(generator, GREEDY)
    _, whole = drain(component.run(MESSAGES, time.perf_counter()))
    left = component.run(MESSAGES, time.perf_counter())
    next(left)
    left.close()  # the asker left after the first piece
    _, again = drain(component.run(MESSAGES, time.perf_counter()))  # would wait forever on a held lock
    assert again.text == whole.text  # greedy decoding: the same answer


# ---- CitationVerifier ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier(kb):
    from retrieval.embedder import load_embedder

    return CitationVerifier(SpanEncoder(load_embedder(kb).embed), SupportThresholds(0.5, 0.4))


def test_verifier_supports_a_sentence_copied_from_its_source_and_quotes_the_chunk(verifier, kb_hits):
    sources = numbered_sources(kb_hits)
    files = next(s for s in sources if s.doc_id == "files.md")
    draft = f"Use the with statement so the file is closed [{files.n}]. Bananas grow in tropical countries [{files.n}]."
    verified = verifier.run("How do I make sure a file is closed?", draft, sources)

    copied, unrelated = verified.citations
    assert (copied.chunk_id, copied.supported, copied.sentence) == (files.chunk_id, True, 0)
    assert files.text[copied.start : copied.end] == copied.quote and "with statement" in copied.quote
    assert (unrelated.chunk_id, unrelated.supported, unrelated.sentence) == (files.chunk_id, False, 1)
    assert [s.supported for s in verified.sentences] == [True, False]
    assert verified.answer == draft  # no source supports the bananas: nothing attributed


def test_verifier_attributes_an_uncited_sentence_and_marks_the_answer(verifier, kb_hits):
    sources = numbered_sources(kb_hits)
    lists = next(s for s in sources if s.doc_id == "lists.txt")
    verified = verifier.run("What does append do?", "list.append(x) adds an item to the end of the list.", sources)
    assert [(c.n, c.attributed, c.supported) for c in verified.citations] == [(lists.n, True, True)]
    assert verified.answer == f"list.append(x) adds an item to the end of the list [{lists.n}]."


# ---- AbstentionPolicy ----------------------------------------------------------------------------------

POLICY = AbstentionPolicy(min_evidence=0.3, min_support=0.5)


def test_policy_abstains_on_no_or_weak_evidence_before_generating():
    assert POLICY.before_generating([]) == "no_contexts"
    assert POLICY.before_generating([hit("a", "x", 0.29), hit("b", "y", None)]) == "weak_evidence"
    assert POLICY.before_generating([hit("a", "x", 0.1), hit("b", "y", 0.3)]) is None  # the closest one counts


def test_policy_abstains_when_the_question_names_what_no_source_mentions():
    english = frozenset(stem(w) for w in ("malformed", "theorize", "respiration"))
    policy = AbstentionPolicy(min_evidence=0.3, min_support=0.5, common_words=frozenset({"spreadsheet", "louder"}), english_stems=english)
    sources = [hit("a", "Open the Wi-Fi menu to change the base model, then install the respiratory filter.", 0.6)]
    chunks = 10_000  # rare: in at most 20 (0.2%) of them
    assert policy.before_generating(sources, {"pyarrow": 0}, chunks) == "unknown_terms"
    assert policy.unknown_terms(sources, {"pyarrow": 0, "Spreadsheet": 0}, chunks) == ["pyarrow"]  # a common word may paraphrase
    assert policy.before_generating(sources, {"wifi": 0, "BaseModel": 0}, chunks) is None  # in the sources, spelt apart
    assert policy.unknown_terms(sources, {"typing.override": 0, "wi.fi": 0, "pathlib.Path": 3}, chunks) == ["typing.override"]
    assert policy.unknown_terms(sources, {"chnage": 0, "bsae": 0, "pyarrow": 0}, chunks) == ["pyarrow"]  # misspelt words of the sources
    # Rare in the collection and not in the sources: a name is refused, an English word (any inflection) may
    # paraphrase the sources, and another form of a source's word is mentioned.
    rare = {"PyCharm": 2, "malformed": 3, "theorized": 1, "respirations": 5, "reinstall": 9, "1999": 1, "list.sort": 1}
    assert policy.unknown_terms(sources, rare, chunks) == ["PyCharm"]
    assert policy.unknown_terms(sources, {"PyCharm": 21}, chunks) == []  # not rare: the sources may paraphrase it
    assert policy.unknown_terms(sources, {"PyCharm": 5}, 10) == ["PyCharm"]  # in a small collection five chunks are rare
    assert POLICY.before_generating(sources, {"pyarrow": 0}, chunks) is None  # no common words given: no such check


def test_policy_abstains_when_the_model_declines():
    assert POLICY.after_generating("I don't know.") == "model_declined"
    assert POLICY.after_generating("The sources do not mention it [1].") == "model_declined"
    assert POLICY.after_generating("") == "model_declined"
    assert POLICY.after_generating("Use open() to read a file [1].") is None


def test_policy_abstains_when_too_few_claims_are_supported():
    def verified(*supported: bool) -> VerifiedAnswer:
        claim = AnswerSentence("Files are closed by the with statement.", 0, 10)
        return VerifiedAnswer("", [replace(claim, supported=s) for s in supported], [])

    assert POLICY.after_verifying(verified(True, False, False)) == "unsupported"
    assert POLICY.after_verifying(verified(True, False)) is None  # exactly min_support
    fragments = VerifiedAnswer("", [AnswerSentence("1.", 0, 2, supported=True)], [])
    assert POLICY.after_verifying(fragments) == "unsupported"  # states nothing
