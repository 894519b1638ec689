"""Answer evaluation on ragas-style question rows:
`{"id", "user_input", "reference"?, "reference_answers"?: [...], "reference_doc_ids"?: [...], "reference_contexts"?: [...],
"shape"?, "split"?, "filters"?: {...}}`; `filters` scopes a question to the documents whose metadata match (as
search's filter), as a user asking about one policy or product does.

A row with neither `reference` nor `reference_answers` is an unanswerable question: the right answer is a
refusal, and it counts towards `refusal_rate_unanswerable` only; an answerable question that is refused counts
towards `decline_rate_answerable`. Rows with a `shape` (factoid, procedural, ...) are also scored per shape.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval.jsonl import json_lines
from generation.pipeline import Answer


class QuestionsFormatError(ValueError):
    pass


@dataclass
class QuestionRow:
    id: str
    question: str
    references: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    shape: str | None = None
    reference_contexts: list[str] = field(default_factory=list)  # passages that hold the answer (ragas' column)
    filters: dict = field(default_factory=dict)  # documents' metadata the answer must come from

    @property
    def answerable(self) -> bool:
        return bool(self.references)


def _records(path: Path, split: str | None) -> tuple[Iterable[tuple[int, object]], str | None]:
    """(row number, record) of a JSONL file (ragas' EvaluationDataset.to_jsonl writes one), a Parquet file, or a
    Hugging Face dataset saved with `save_to_disk` (a DatasetDict's split chosen by `split`); and the split rows'
    own "split" field must match (None once `split` chose a dataset's split)."""
    if path.suffix == ".parquet" or path.is_dir():
        from datasets import Dataset, DatasetDict, load_from_disk

        try:
            data = Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as exc:
            kind = "a Parquet file" if path.suffix == ".parquet" else "a Hugging Face dataset saved with save_to_disk"
            raise QuestionsFormatError(f"{path}: not {kind} ({exc})") from None
        if isinstance(data, DatasetDict):
            if split not in data:
                raise QuestionsFormatError(f"{path}: a dataset with splits {', '.join(data)}: choose one with --split")
            data, split = data[split], None
        return enumerate(data.to_list(), start=1), split
    if not path.is_file():
        raise QuestionsFormatError(f"{path}: no such file")
    return json_lines(path, QuestionsFormatError), split


def load_questions(path: Path, limit: int | None = None, offset: int = 0, split: str | None = None) -> list[QuestionRow]:
    """The rows of a JSONL file, a Parquet file or a saved Hugging Face dataset; `split`: only rows whose "split"
    field is that (offset and limit count those), or a saved DatasetDict's split of that name."""
    records, split = _records(path, split)
    rows: list[QuestionRow] = []
    seen = 0
    for lineno, raw in records:
        if split is not None and isinstance(raw, dict) and raw.get("split") != split:
            continue
        seen += 1
        if seen <= offset:
            continue
        rows.append(question_row(raw, f"{path}:{lineno}", lineno))
        if limit and len(rows) == limit:
            break
    if not rows:
        raise QuestionsFormatError(f"{path}: no questions" + (f" in split '{split}'" if split is not None else ""))
    return rows


def question_row(raw: object, where: str, number: int) -> QuestionRow:
    """One ragas-style record as a question row (`id` defaults to its `number`); `where` names it in errors."""
    if not isinstance(raw, dict) or not isinstance(raw.get("user_input"), str) or not raw["user_input"].strip():
        raise QuestionsFormatError(f"{where}: expected an object with a non-empty 'user_input'")
    references = raw.get("reference_answers") or ([raw["reference"]] if raw.get("reference") else [])
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise QuestionsFormatError(f"{where}: 'reference_answers' must be a list of strings")
    contexts = raw.get("reference_contexts") or []
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise QuestionsFormatError(f"{where}: 'reference_contexts' must be a list of strings")
    filters = raw.get("filters") or {}
    if isinstance(filters, dict):  # a columnar file gives every row each key of any row's filters, unset ones None
        filters = {key: value for key, value in filters.items() if value is not None}
    if not isinstance(filters, dict) or not all(_filter_value(v) for v in filters.values()):
        raise QuestionsFormatError(f"{where}: 'filters' must map metadata keys to a value or a list of values")
    return QuestionRow(
        str(raw.get("id", number)),
        raw["user_input"],
        list(references),
        [str(d) for d in raw.get("reference_doc_ids") or []],
        str(raw["shape"]) if raw.get("shape") else None,
        contexts,
        filters,
    )


def _filter_value(value) -> bool:
    scalar = (str, int, float, bool)
    return isinstance(value, scalar) or isinstance(value, list) and all(isinstance(v, scalar) for v in value)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def strip_markers(text: str) -> str:
    """An answer's text without its citation markers."""
    from generation.citations import MARKER

    return MARKER.sub("", text)


SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?])")  # what a stripped "claim [1]." leaves


def plain_text(text: str) -> str:
    """An answer as a reader takes it in, for a judge: no citation markers, whitespace collapsed."""
    return SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(strip_markers(text).split()))


@dataclass
class ScoredRow:
    id: str
    question: str
    answerable: bool
    answer: str
    abstained: bool
    abstain_reason: str | None
    draft: str  # what the generator wrote (differs from `answer` for abstentions)
    citations: list[dict]
    context_doc_ids: list[str]
    reference_doc_ids: list[str]
    answer_f1: float | None
    contains_reference: bool | None
    latency_ms: float
    first_token_ms: float | None
    shape: str | None = None
    extractive: bool = False  # answered with a quoted source sentence
    error: str | None = None
    references: list[str] = field(default_factory=list)
    reference_contexts: list[str] = field(default_factory=list)
    retrieved_contexts: list[str] = field(default_factory=list)  # the sources' texts, in prompt order
    models: dict = field(default_factory=dict)  # the embedder, reranker and generator that answered


def score_row(row: QuestionRow, answer: Answer) -> ScoredRow:
    text = strip_markers(answer.answer)
    f1 = max((token_f1(text, r) for r in row.references), default=None) if row.answerable else None
    contains = any(normalize_answer(r) in normalize_answer(text) for r in row.references) if row.answerable else None
    shown = {name: getattr(answer, name) for name in ("answer", "abstained", "abstain_reason", "draft", "extractive")}
    return ScoredRow(
        id=row.id,
        question=row.question,
        answerable=row.answerable,
        **shown,
        citations=[asdict(c) for c in answer.citations],
        context_doc_ids=[c.doc_id for c in answer.contexts],
        reference_doc_ids=row.doc_ids,
        answer_f1=f1 if not answer.abstained else 0.0 if row.answerable else None,
        contains_reference=contains if not answer.abstained else False if row.answerable else None,
        latency_ms=answer.timings_ms.get("total", 0.0),
        first_token_ms=answer.timings_ms.get("first_token"),
        shape=row.shape,
        references=row.references,
        reference_contexts=row.reference_contexts,
        retrieved_contexts=[c.text for c in answer.contexts],
        models=dict(answer.models),
    )


def summarize(rows: list[ScoredRow]) -> dict[str, float | int | None]:
    answerable = [r for r in rows if r.answerable and r.error is None]
    unanswerable = [r for r in rows if not r.answerable and r.error is None]
    with_gold = [r for r in answerable if r.reference_doc_ids]
    supported = [(c, r) for r in with_gold for c in r.citations if c["supported"]]

    def mean(values) -> float | None:
        values = list(values)
        return round(float(np.mean(values)), 4) if values else None

    latencies = [r.latency_ms for r in rows if r.error is None]
    first_tokens = [r.first_token_ms for r in rows if r.first_token_ms is not None]
    return {
        "n": len(rows),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "errors": sum(r.error is not None for r in rows),
        "answer_f1": mean(r.answer_f1 for r in answerable),
        "answer_contains_reference": mean(r.contains_reference for r in answerable),
        "citation_precision": mean(c["doc_id"] in r.reference_doc_ids for c, r in supported),
        "citation_recall": mean(any(c["supported"] and c["doc_id"] in r.reference_doc_ids for c in r.citations) for r in with_gold),
        "context_recall_at_k": mean(bool(set(r.context_doc_ids) & set(r.reference_doc_ids)) for r in with_gold),
        "decline_rate_answerable": mean(r.abstained for r in answerable),
        "extractive_rate_answerable": mean(r.extractive for r in answerable),
        "refusal_rate_unanswerable": mean(r.abstained for r in unanswerable),
        "unsupported_citation_rate": mean(
            not c["supported"] for r in answerable for c in r.citations
        ),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
        "first_token_p50_ms": round(float(np.percentile(first_tokens, 50)), 1) if first_tokens else None,
    }


def evaluate_qa(
    rows: list[QuestionRow], answer: Callable[..., Answer], on_row: Callable[[ScoredRow], None] | None = None
) -> dict:
    """Answer every row by `answer(question, filters=row's filters or None)`; a generation error is recorded against
    its row and the run goes on."""
    from generation.engines import GenerationError

    scored: list[ScoredRow] = []
    for row in rows:
        try:
            result = score_row(row, answer(row.question, filters=row.filters or None))
        except GenerationError as exc:
            result = ScoredRow(
                row.id, row.question, row.answerable, "", False, None, "", [], [], row.doc_ids, None, None, 0.0, None, row.shape,
                error=str(exc), references=row.references, reference_contexts=row.reference_contexts,
            )
        scored.append(result)
        if on_row:
            on_row(result)
    shapes = sorted({r.shape for r in scored if r.shape})
    by_shape = {shape: summarize([r for r in scored if r.shape == shape]) for shape in shapes}
    models = next((r.models for r in scored if r.models), {})
    return {"metrics": summarize(scored), "by_shape": by_shape, "models": models, "rows": [asdict(r) for r in scored]}
