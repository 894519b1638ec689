"""Retrieval evaluation of citeloop's stages on any BEIR-format data set, scored with ranx."""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

from citeloop.config import Settings, get_settings
from citeloop.progress import progress_bar
from citeloop.files import sha256_file
from eval.beir import corpus_file, load_split
from retrieval.embedder import EMBEDDER_ID
from citeloop.registry import VersionInfo, active_version
from retrieval.retriever import MODES

METRICS = ("ndcg@10", "recall@100", "mrr@10")
RUN_DEPTH = 100  # documents ranked per query: enough for Recall@100


def corpus_key(corpus: Path, settings: Settings) -> str:
    """What an evaluation collection is: the corpus file's content and the chunking and embedding settings."""
    key = ":".join(
        [sha256_file(corpus), str(settings.chunk_size), str(settings.chunk_overlap), settings.bm25_method, EMBEDDER_ID, settings.embedder_backend]
    )
    return sha256(key.encode()).hexdigest()[:12]


def eval_collection_name(corpus: Path, settings: Settings) -> str:
    """A throwaway collection per corpus content and chunking settings; the folder's name only labels it."""
    return f"eval-{corpus.parent.name}-{corpus_key(corpus, settings)}"


def ensure_eval_collection(directory: Path, settings: Settings | None = None, show_progress: bool = False) -> str:
    """The evaluation collection of a BEIR directory's corpus, ingested on first use. Found by content: the same
    corpus in another folder (other queries and qrels over it) is the same collection."""
    from citeloop.catalog import list_collections
    from retrieval.ingest import ingest
    from retrieval.readers import read_rows

    settings = settings or get_settings()
    corpus = corpus_file(Path(directory))
    key = corpus_key(corpus, settings)
    for c in list_collections(settings):
        if c.name.startswith("eval-") and c.name.endswith(f"-{key}") and c.build_id:
            return c.name
    name = eval_collection_name(corpus, settings)
    report = ingest(read_rows(corpus), name, settings, show_progress=show_progress)
    if report.skipped:
        first = report.skipped[0]
        raise ValueError(f"{len(report.skipped)} corpus rows could not be read, e.g. {first.name}: {first.reason}")
    return name


def ranking(chunks, depth: int, level: str = "doc") -> dict[str, float]:
    """Chunk results (best first) -> a run of `depth` ids: chunk ids as ranked, or documents at their best chunk's
    place. Each id is scored 1/rank: ranx re-sorts a run by score, and fused scores tie often (a document ranked
    (i, j) by the two retrievers ties one ranked (j, i)), so the order scored is the order retrieved."""
    run: dict[str, float] = {}
    for chunk in chunks:
        key = chunk.doc_id if level == "doc" else chunk.chunk_id
        if key not in run:
            run[key] = 1.0 / (len(run) + 1)
            if len(run) == depth:
                break
    return run


def score_runs(qrels: dict[str, dict[str, int]], runs: dict[str, dict[str, dict[str, float]]], per_query: bool = False) -> dict[str, dict]:
    """Mean metrics per stage; `per_query`: also each query's nDCG@10 (the gate's paired comparison) and its top 10
    ids as ranked (`ranked`: what a stored gate run shows)."""
    from ranx import Qrels, Run, evaluate

    ranx_qrels = Qrels(qrels)
    order = sorted(qrels)
    out = {}
    for stage, run in runs.items():
        # ranx needs every query present in the run; an empty result scores 0.
        complete = Run({q: (run.get(q) or {"__none__": 0.0}) for q in order})
        scores = evaluate(ranx_qrels, complete, list(METRICS), make_comparable=True)
        out[stage] = {m: round(float(scores[m]), 4) for m in METRICS} | {"queries": len(qrels)}
        if per_query:
            values = evaluate(ranx_qrels, complete, "ndcg@10", return_mean=False, make_comparable=True)
            out[stage]["per_query"] = {q: float(v) for q, v in zip(complete.keys(), values)}
            out[stage]["ranked"] = {q: list(run.get(q) or {})[:10] for q in order}
    return out


STAGES = (*MODES, "rerank")


def search_depth(settings: Settings) -> int:
    """Chunks retrieved per query: documents split into several chunks need more than RUN_DEPTH to fill the run."""
    return max(settings.candidates, 3 * RUN_DEPTH)


def evaluate_retrieval(
    directory: Path,
    split: str,
    stages: list[str],
    settings: Settings | None = None,
    show_progress: bool = False,
    reranker: VersionInfo | None = None,
    query_ids: set[str] | None = None,
) -> dict[str, dict]:
    """Metrics per stage; `rerank` uses `reranker` (default: the collection's active one, else it is an error);
    `query_ids` restricts scoring to those queries (a held-out split)."""
    settings = settings or get_settings()
    check_stages(stages)
    data = load_split(Path(directory), split)
    if query_ids is not None:
        data.qrels = {q: r for q, r in data.qrels.items() if q in query_ids}
        data.queries = {q: t for q, t in data.queries.items() if q in data.qrels}
    collection = ensure_eval_collection(Path(directory), settings, show_progress)
    return evaluate_collection(collection, data.queries, data.qrels, stages, settings, show_progress=show_progress, reranker=reranker)


def check_stages(stages: list[str]) -> None:
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or '(none)'}; available: {', '.join(STAGES)}")


def evaluate_collection(
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    stages: list[str],
    settings: Settings,
    level: str = "doc",
    show_progress: bool = False,
    reranker: VersionInfo | None = None,
    per_query: bool = False,
    filters: dict[str, dict] | None = None,
) -> dict[str, dict]:
    """Metrics per stage of labelled queries on a collection; `level`: the qrels name documents or chunks, or
    judged chunks (scored on each ranking condensed to them: feedback/evalsets.py); `filters`: a query's metadata
    filter, by query id."""
    from retrieval.rerank import RankedSearch

    check_stages(stages)
    qrels = {q: r for q, r in qrels.items() if q in queries}
    ranked = RankedSearch(collection, settings)
    retriever = ranked.retriever
    if "rerank" in stages:
        reranker = reranker or active_version(collection, "reranker", settings)
        if reranker is None:
            raise ValueError(f"stage 'rerank' needs a reranker: collection '{collection}' has no active one (pass --reranker ID)")
    chunk_depth = search_depth(settings)
    runs: dict[str, dict[str, dict[str, float]]] = {s: {} for s in stages}
    with progress_bar(f"querying {len(qrels)} queries", len(qrels), show_progress) as advance:
        for qid in qrels:
            for stage in stages:
                scope = (filters or {}).get(qid)
                if stage == "rerank":
                    hits = ranked.search(queries[qid], k=chunk_depth, filters=scope, reranker=reranker).hits
                else:
                    hits = retriever.search(queries[qid], k=chunk_depth, mode=stage, candidates=chunk_depth, filters=scope)
                run = ranking(hits, len(hits), "chunk") if level == "judged" else ranking(hits, RUN_DEPTH, level)
                # judged: the ranking condensed to the judged chunks, in order
                runs[stage][qid] = {c: v for c, v in run.items() if c in qrels[qid]} if level == "judged" else run
            advance(1)
    return score_runs(qrels, runs, per_query)


def rank_questions(rows, collection: str, stages: list[str], settings: Settings | None = None) -> dict[str, dict]:
    """Metrics per stage of question rows (`eval.qa.QuestionRow`, each searched within its filters) against their
    reference documents; rows without any are left out."""
    judged = [r for r in rows if r.doc_ids]
    if not judged:
        raise ValueError("ranking retrieval stages needs questions with 'reference_doc_ids'")
    queries = {r.id: r.question for r in judged}
    qrels = {r.id: {d: 1 for d in r.doc_ids} for r in judged}
    filters = {r.id: r.filters for r in judged if r.filters}
    return evaluate_collection(collection, queries, qrels, stages, settings or get_settings(), filters=filters)
