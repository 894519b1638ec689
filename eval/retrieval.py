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


def eval_collection_name(corpus: Path, settings: Settings) -> str:
    """A throwaway collection per corpus content and chunking settings, reused across runs."""
    key = ":".join(
        [sha256_file(corpus), str(settings.chunk_size), str(settings.chunk_overlap), settings.bm25_method, EMBEDDER_ID, settings.embedder_backend]
    )
    return f"eval-{corpus.parent.name}-{sha256(key.encode()).hexdigest()[:12]}"


def ensure_eval_collection(directory: Path, settings: Settings | None = None, show_progress: bool = False) -> str:
    from citeloop.catalog import list_collections
    from retrieval.ingest import ingest
    from retrieval.readers import read_rows

    settings = settings or get_settings()
    corpus = corpus_file(Path(directory))
    name = eval_collection_name(corpus, settings)
    if not any(c.name == name and c.build_id for c in list_collections(settings)):
        report = ingest(read_rows(corpus), name, settings, show_progress=show_progress)
        if report.skipped:
            first = report.skipped[0]
            raise ValueError(f"{len(report.skipped)} corpus rows could not be read, e.g. {first.name}: {first.reason}")
    return name


def doc_ranking(chunks, depth: int) -> dict[str, float]:
    """Chunk results -> document run: a document takes the score of its best chunk."""
    run: dict[str, float] = {}
    for chunk in chunks:
        if chunk.doc_id not in run:
            run[chunk.doc_id] = chunk.score
            if len(run) == depth:
                break
    return run


def score_runs(qrels: dict[str, dict[str, int]], runs: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    from ranx import Qrels, Run, evaluate

    ranx_qrels = Qrels(qrels)
    out = {}
    for stage, run in runs.items():
        # ranx needs every query present in the run; an empty result scores 0.
        complete = {q: (run.get(q) or {"__none__": 0.0}) for q in qrels}
        scores = evaluate(ranx_qrels, Run(complete), list(METRICS), make_comparable=True)
        out[stage] = {m: round(float(scores[m]), 4) for m in METRICS} | {"queries": len(qrels)}
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
    from retrieval.rerank import RankedSearch

    settings = settings or get_settings()
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {', '.join(unknown) or '(none)'}; available: {', '.join(STAGES)}")
    data = load_split(Path(directory), split)
    if query_ids is not None:
        data.qrels = {q: r for q, r in data.qrels.items() if q in query_ids}
        data.queries = {q: t for q, t in data.queries.items() if q in data.qrels}
    collection = ensure_eval_collection(Path(directory), settings, show_progress)
    ranked = RankedSearch(collection, settings)
    retriever = ranked.retriever
    if "rerank" in stages:
        reranker = reranker or active_version(collection, "reranker", settings)
        if reranker is None:
            raise ValueError(f"stage 'rerank' needs a reranker: collection '{collection}' has no active one (pass --reranker ID)")
    chunk_depth = search_depth(settings)
    runs: dict[str, dict[str, dict[str, float]]] = {s: {} for s in stages}
    with progress_bar(f"querying {len(data.queries)} queries", len(data.queries), show_progress) as advance:
        for qid, text in data.queries.items():
            for stage in stages:
                if stage == "rerank":
                    hits = ranked.search(text, k=chunk_depth, reranker=reranker).hits
                else:
                    hits = retriever.search(text, k=chunk_depth, mode=stage, candidates=chunk_depth)
                runs[stage][qid] = doc_ranking(hits, RUN_DEPTH)
            advance(1)
    return score_runs(data.qrels, runs)
