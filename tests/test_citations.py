"""Citation parsing and verification: markers in every shape a small model writes, verified with the real embedder."""

import pytest

from generation.citations import Source, SpanEncoder, SupportThresholds, split_cited_sentences, verify_citations, with_attributed_markers
from generation.prompt import declined
from generation.text import content_overlap

SOURCES = [
    Source(1, "c1", "d1", "Files", "The open() function returns a file object. Use the with statement so the file is closed."),
    Source(2, "c2", "d2", "Lists", "list.append(x) adds an item to the end of the list. list.sort() sorts the list in place."),
    Source(3, "c3", "d3", "Weather", "Rain is expected in the north on Tuesday, with strong winds near the coast."),
]


def test_marker_shapes_map_to_source_numbers():
    answer = "A [1]. B [1, 2]. C [2-3]. D [1][3]. E [Source 2]. F [sources 1; 3]."
    cited = [s.cited for s in split_cited_sentences(answer, 3)]
    assert cited == [[1], [1, 2], [2, 3], [1, 3], [2], [1, 3]]


def test_out_of_range_and_malformed_markers_never_point_at_a_chunk():
    sentences = split_cited_sentences("Zero [0]. Seven [7]. Huge range [1-999]. Mixed [2, 9].", 3)
    assert [s.cited for s in sentences] == [[], [], [], [2]]
    assert [s.invalid_markers for s in sentences] == [["[0]"], ["[7]"], ["[1-999]"], ["[2, 9]"]]


def test_marker_after_the_full_stop_belongs_to_the_sentence_before():
    sentences = split_cited_sentences("Files are closed by with. [1] Lists grow with append. [2]", 3)
    assert [(s.text, s.cited) for s in sentences] == [("Files are closed by with.", [1]), ("Lists grow with append.", [2])]


def test_sentence_text_drops_markers_and_keeps_offsets_into_the_answer():
    answer = "Use open() [1]. Then append [2]."
    sentences = split_cited_sentences(answer, 3)
    assert [s.text for s in sentences] == ["Use open().", "Then append."]
    assert answer[sentences[1].start : sentences[1].end] == "Then append [2]."


def test_no_markers_and_empty_answers():
    assert [s.cited for s in split_cited_sentences("Plain text without citations.", 3)] == [[]]
    assert split_cited_sentences("", 3) == []
    assert split_cited_sentences("[1]", 3)[0].cited == [1]


THRESHOLDS = SupportThresholds(0.5, 0.4)


@pytest.fixture(scope="module")
def spans():
    from citeloop.config import Settings
    from retrieval.embedder import load_embedder

    return SpanEncoder(load_embedder(Settings()).embed)


def test_supported_citation_quotes_the_matching_span(spans):
    sentences = split_cited_sentences(
        "The open() function returns a file object [1]. list.sort() sorts the list in place [2].", 3
    )
    citations = verify_citations("How do files and lists work?", sentences, SOURCES, spans, THRESHOLDS)
    assert [(c.n, c.chunk_id, c.supported) for c in citations] == [(1, "c1", True), (2, "c2", True)]
    for c in citations:
        source = SOURCES[c.n - 1]
        assert source.text[c.start : c.end] == c.quote
    assert "sorts the list in place" in citations[1].quote
    assert all(s.supported for s in sentences)


def test_citation_of_the_wrong_chunk_is_unsupported_and_the_right_one_attributed(spans):
    answer = "list.append(x) adds an item to the end of the list [3]."
    sentences = split_cited_sentences(answer, 3)
    wrong, right = verify_citations("What does append do?", sentences, SOURCES, spans, THRESHOLDS)
    assert (wrong.chunk_id, wrong.supported, wrong.attributed) == ("c3", False, False)
    assert (right.chunk_id, right.supported, right.attributed) == ("c2", True, True)
    assert sentences[0].supported and sentences[0].cited == [3, 2]
    assert with_attributed_markers(answer, sentences, [wrong, right]) == "list.append(x) adds an item to the end of the list [3] [2]."

    strict = split_cited_sentences(answer, 3)
    (only,) = verify_citations("What does append do?", strict, SOURCES, spans, THRESHOLDS, attribute_uncited=False)
    assert not only.supported and not strict[0].supported


def test_an_on_topic_sentence_with_a_fact_the_chunk_lacks_is_unsupported(spans):
    question = "What does the open() function return?"
    sentences = split_cited_sentences("The open() function returns a socket handle [1].", 3)
    (citation,) = verify_citations(question, sentences, SOURCES, spans, THRESHOLDS)
    assert not citation.supported
    assert content_overlap("open() returns a socket handle", SOURCES[0].text, question) == 0.0
    assert content_overlap("open() returns a file object", SOURCES[0].text, question) == 1.0


def test_uncited_sentence_is_attributed_to_its_best_source_and_the_marker_added(spans):
    answer = "Use the with statement so the file is closed. Bananas are yellow."
    sentences = split_cited_sentences(answer, 3)
    citations = verify_citations("How do I make sure a file is closed?", sentences, SOURCES, spans, THRESHOLDS)
    assert [(c.n, c.attributed, c.supported, c.sentence) for c in citations] == [(1, True, True, 0)]
    assert [s.supported for s in sentences] == [True, False]
    marked = with_attributed_markers(answer, sentences, citations)
    assert marked == "Use the with statement so the file is closed [1]. Bananas are yellow."
    assert [marked[s.start : s.end].strip() for s in sentences] == ["Use the with statement so the file is closed [1].", "Bananas are yellow."]


def test_refusals_are_recognised():
    assert declined("I don't know.")
    assert declined("The sources do not mention the capital [1]. Paris is large.")
    assert declined("   ")
    assert not declined("Use open() [1].")
    # only the first sentence is read: an answer that qualifies a detail later is not a refusal
    assert not declined("Use open() to read a file [1]. The sources do not mention encodings.")


def test_fragments_state_nothing_and_get_no_citation(spans):
    sentences = split_cited_sentences("Steps:\n1. Open the file.\n2. Use the with statement so the file is closed.", 3)
    assert [s.text for s in sentences] == ["Steps:", "Open the file.", "Use the with statement so the file is closed."]
    assert [s.is_claim for s in sentences] == [False, True, True]
    citations = verify_citations("How do I close a file?", sentences, SOURCES, spans, THRESHOLDS)
    assert all(sentences[c.sentence].is_claim for c in citations)


def test_a_copied_sentence_that_does_not_answer_the_question_supports_nothing(spans):
    question = "How do I make sure a file is closed?"
    answer = "Rain is expected in the north on Tuesday [3]."
    any_relevance = SupportThresholds(0.5, 0.4, min_relevance=-1.0)
    (loose,) = verify_citations(question, split_cited_sentences(answer, 3), SOURCES, spans, any_relevance, attribute_uncited=False)
    assert loose.supported and loose.similarity >= 0.5 and loose.overlap >= 0.4  # copied: the first two criteria hold
    relevant = SupportThresholds(0.5, 0.4, min_relevance=0.25)
    (strict,) = verify_citations(question, split_cited_sentences(answer, 3), SOURCES, spans, relevant, attribute_uncited=False)
    assert not strict.supported and strict.relevance < 0.25


def test_each_step_of_a_list_answer_is_a_claim_with_its_own_citation():
    answer = "To keep a file closed:\n1. Open it with open() [1]\n2. Use the with statement [1]\n- Sort with list.sort() [2]\nThat is all. It costs 3.5 ms."
    sentences = split_cited_sentences(answer, 3)
    assert [(s.text, s.cited) for s in sentences] == [
        ("To keep a file closed:", []),
        ("Open it with open()", [1]),
        ("Use the with statement", [1]),
        ("Sort with list.sort()", [2]),
        ("That is all.", []),
        ("It costs 3.5 ms.", []),
    ]
    assert answer[sentences[2].start : sentences[2].end] == "2. Use the with statement [1]"


def test_a_quote_is_the_supporting_sentence_not_the_head_of_the_chunk(spans):
    text = (
        ".. _sortinghowto:\n\nSorting HOW TO\n**************\n\n:Author: Andrew Dalke and Raymond Hettinger\n:Release: 0.1\n\n\n"
        "Python lists have a built-in :meth:`list.sort` method that modifies the list\nin-place.  There is also a\n"
        ":func:`sorted` built-in function that builds a new sorted list from an iterable."
    )
    source = Source(1, "sorting", "howto/sorting.rst.txt", "Sorting HOW TO", text)
    sentences = split_cited_sentences("list.sort() modifies the list in-place [1].", 1)
    (citation,) = verify_citations("How do I sort a list in place?", sentences, [source], spans, THRESHOLDS)
    assert citation.supported
    assert citation.quote.startswith("Python lists have a built-in") and citation.quote.endswith("in-place.")
    assert text[citation.start : citation.end] == citation.quote
