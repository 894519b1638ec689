"""bm25s against the reference implementation rank-bm25 on real SciFact abstracts."""

import numpy as np
from rank_bm25 import BM25Okapi

from retrieval.sparse import BM25Index, tokenize
from tests.conftest import scifact_sample


def test_bm25s_matches_rank_bm25_top10_with_the_same_tokenisation():
    rows = scifact_sample(1500)
    texts = [f"{r['title']}\n{r['text']}" for r in rows]
    # Queries made of real corpus vocabulary: the titles of some documents.
    queries = [rows[i]["title"] for i in range(0, 1500, 30)]
    ours = BM25Index.build(texts, method="robertson")
    # epsilon=0: a term in over half the documents weighs 0 in both (bm25s clamps negative idf to 0).
    reference = BM25Okapi(tokenize(texts), k1=1.5, b=0.75, epsilon=0.0)
    compared = 0
    for query in queries:
        rows_found, scores = ours.search(query, 10)
        ref_scores = reference.get_scores(tokenize([query])[0])
        ref_top = np.argsort(-ref_scores, kind="stable")[:10]
        assert set(rows_found.tolist()) == set(ref_top.tolist()), query
        # rank-bm25 keeps the constant factor (k1 + 1) in every term; bm25s drops it (rank-preserving).
        np.testing.assert_allclose(np.sort(scores) * 2.5, np.sort(ref_scores[ref_top]), rtol=1e-4)
        compared += 1
    assert compared == 50


def test_stemming_and_stopwords_apply_to_queries():
    index = BM25Index.build(["The cats were running quickly", "Dogs bark"], method="lucene")
    rows, _ = index.search("the cat runs", 5)
    assert rows.tolist() == [0]
    rows, _ = index.search("the and of", 5)  # stopwords only: nothing to match
    assert rows.tolist() == []


def test_mask_restricts_candidates():
    index = BM25Index.build(["apple pie", "apple tart", "pear"], method="lucene")
    rows, _ = index.search("apple", 5, mask=np.array([False, True, True]))
    assert rows.tolist() == [1]


def test_a_corpus_without_indexable_words_has_no_bm25_index():
    assert BM25Index.build(["0", "the of", "a"], method="lucene") is None
