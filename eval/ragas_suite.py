"""RAGAS metrics of an `eval qa` run, computed by the ragas library on its scored rows (never re-implemented).

Each row becomes a ragas `SingleTurnSample`: the question, the answer as shown (citation markers stripped), its
first reference answer, the retrieved chunks' texts and document ids, and the reference contexts and document ids.
Without a judge, the metrics compare strings and ids: `non_llm_context_recall`,
`non_llm_context_precision_with_reference`, `id_based_context_recall`, `id_based_context_precision` (document ids),
`rouge_score`, `non_llm_string_similarity`, `exact_match`, `string_present`. With a judge (eval/judge.py), the
LLM-based ones: `faithfulness`, `answer_relevancy`, `llm_context_precision_with_reference`, `context_recall`,
`factual_correctness`; a declined answer states no claim, so faithfulness skips it, and declining an unanswerable
question is right, so no judged metric of the response scores that.

A metric is not applicable to a row that lacks one of the columns it requires (an unanswerable question has no
reference answer; a row without reference contexts no context recall by text; a generation error nothing): such
rows are counted under `not_applicable` and left out of its mean. A metric that raises or returns NaN on a row is
counted under `failures` and left out of its mean too: a failure is never a zero, and never hidden.
"""

from __future__ import annotations

import asyncio
import math
import os
import warnings
from collections.abc import Sequence

from eval.qa import QuestionRow, normalize_answer, plain_text

os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")  # ragas reports usage to its authors unless told not to
METRIC_TIMEOUT_S = 120.0  # per row and judge-free metric


def non_llm_metrics() -> list:
    """ragas' metrics that need no judge model, with their default settings."""
    with warnings.catch_warnings():  # ragas 0.4 moves these towards `ragas.metrics.collections`, which lacks most
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import (
            ExactMatch,
            IDBasedContextPrecision,
            IDBasedContextRecall,
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
            NonLLMStringSimilarity,
            RougeScore,
            StringPresence,
        )

    return [
        NonLLMContextRecall(),
        NonLLMContextPrecisionWithReference(),
        IDBasedContextRecall(),
        IDBasedContextPrecision(),
        RougeScore(),
        NonLLMStringSimilarity(),
        ExactMatch(),
        StringPresence(),
    ]


def sample_of(row: dict):
    """A scored `eval qa` row as ragas' SingleTurnSample; None for a row whose generation failed."""
    from ragas import SingleTurnSample

    if row.get("error"):
        return None
    return SingleTurnSample(
        user_input=row["question"],
        response=plain_text(row["answer"]),
        reference=row["references"][0] if row.get("references") else None,
        retrieved_contexts=row.get("retrieved_contexts") or None,
        reference_contexts=row.get("reference_contexts") or None,
        retrieved_context_ids=row.get("context_doc_ids") or None,
        reference_context_ids=row.get("reference_doc_ids") or None,
    )


def _applicable(metric, sample, row: dict, judge: bool) -> bool:
    # An empty answer is still an answer (it scores low); a missing column (None) is not. A declined answer states
    # no claim whose faithfulness a judge could check, and declining an unanswerable question is right, not an
    # irrelevant answer; a declined answerable question is judged (as irrelevant, not matching the reference).
    columns = metric.required_columns["SINGLE_TURN"]
    if judge and "response" in columns and row.get("abstained") and (metric.name == "faithfulness" or not row.get("answerable", True)):
        return False
    return sample is not None and all(getattr(sample, column, None) is not None for column in columns)


async def _score(metric, sample, timeout: float | None) -> tuple[float | None, str | None]:
    try:
        value = await metric.single_turn_ascore(sample, timeout=timeout)
    except Exception as exc:  # noqa: BLE001  (a metric's own failure is counted against it, the run goes on)
        return None, f"{type(exc).__name__}: {exc}"
    value = float(value) if value is not None else math.nan
    return (None, "NaN") if math.isnan(value) else (value, None)


async def _score_all(metrics: Sequence, samples: list, rows: list[dict], judge: bool, on_row) -> dict[str, list[tuple[float | None, str | None] | None]]:
    out: dict[str, list] = {}
    for metric in metrics:
        # A judge's calls are limited one by one (eval/judge.py): a limit on the row's several calls would fire while
        # an abandoned call, which a thread cannot cancel, still holds the model.
        timeout = None if judge else METRIC_TIMEOUT_S
        jobs = [_score(metric, s, timeout) if _applicable(metric, s, row, judge) else None for s, row in zip(samples, rows)]
        if judge:  # one judge decodes one sequence at a time: rows queued together would only eat their timeouts
            results = []
            for job in jobs:
                results.append(await job if job is not None else None)
                if on_row:
                    on_row(metric.name)
        else:
            done = iter(await asyncio.gather(*(j for j in jobs if j is not None)))
            results = [next(done) if j is not None else None for j in jobs]
        out[metric.name] = results
    return out


def add_ragas_metrics(report: dict, metrics: Sequence | None = None, judge: bool = False, on_row=None) -> dict:
    """The `eval qa` report with each metric's value per row (None where not applicable or failed), its mean under
    `metrics` (None when no row scored), and top-level `failures` / `not_applicable` counts per metric, plus
    `failure_examples`: one error message per failing metric (merged with those of metrics scored before).
    `judge`: the metrics call a judge model: rows are scored one at a time (`on_row(metric name)` after each), and
    declined answers are not applicable to faithfulness, nor to any metric of the response on unanswerable questions."""
    metrics = list(metrics) if metrics is not None else non_llm_metrics()
    samples = [sample_of(row) for row in report["rows"]]
    scored = asyncio.run(_score_all(metrics, samples, report["rows"], judge, on_row))
    failures: dict[str, int] = dict(report.get("failures") or {})
    not_applicable: dict[str, int] = dict(report.get("not_applicable") or {})
    examples: dict[str, str] = dict(report.get("failure_examples") or {})
    for name, results in scored.items():
        values = []
        for row, result in zip(report["rows"], results):
            value, error = result if result is not None else (None, None)
            row[name] = value
            if value is not None:
                values.append(value)
            elif error is not None:
                examples.setdefault(name, error)
        failures[name] = sum(r is not None and r[1] is not None for r in results)
        not_applicable[name] = sum(r is None for r in results)
        report["metrics"][name] = round(sum(values) / len(values), 4) if values else None
    return report | {"failures": failures, "not_applicable": not_applicable, "failure_examples": examples}


def with_reference_contexts(rows: list[QuestionRow], collection: str, settings=None) -> list[QuestionRow]:
    """Rows without reference contexts get them from the collection: each chunk of a reference document whose text
    holds a reference answer (SQuAD-normalised), the passage a span-answer dataset such as COVID-QA was cut from."""
    from dataclasses import replace

    from sqlalchemy import select

    from citeloop.db import Chunk, Document, get_collection, session_scope

    wanted = {d for r in rows if not r.reference_contexts and r.references for d in r.doc_ids}
    if not wanted:
        return rows
    with session_scope(settings) as session:
        collection_id = get_collection(session, collection).id
        found = session.execute(
            select(Document.doc_id, Chunk.text).join(Chunk.document).where(Document.collection_id == collection_id, Document.doc_id.in_(wanted)).order_by(Document.doc_id, Chunk.ordinal)
        ).all()
    chunks: dict[str, list[tuple[str, str]]] = {}
    for doc_id, text in found:
        chunks.setdefault(doc_id, []).append((normalize_answer(text), text))
    out = []
    for row in rows:
        if row.reference_contexts or not row.references:
            out.append(row)
            continue
        references = [normalize_answer(r) for r in row.references if normalize_answer(r)]
        holding = [text for d in row.doc_ids for norm, text in chunks.get(d, ()) if any(r in norm for r in references)]
        out.append(replace(row, reference_contexts=list(dict.fromkeys(holding))))
    return out
