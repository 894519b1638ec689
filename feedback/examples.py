"""Labelled signals -> reranker training examples `(query, positives, negatives)`: the one place that does it.

Sources: BEIR qrels (bootstrap and benchmarks) and feedback events. Strengths:
- a curator's "relevant" mark is a strong positive; a curator's "not relevant" mark or a flagged citation
  is a strong (hard) negative;
- the cited chunks of a thumbs-up answer are weak positives, those of a thumbs-down answer weak negatives.
For one (query, chunk) a strong label beats a weak one, and among equals the latest wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from feedback.events import FeedbackEvent

STRONG = 1.0
WEAK = 0.3


@dataclass(frozen=True)
class Labelled:
    chunk_id: str
    weight: float = STRONG


@dataclass(frozen=True)
class TrainingExample:
    query_id: str
    query: str
    positives: tuple[Labelled, ...]
    negatives: tuple[Labelled, ...] = ()
    # Documents that hold a positive: their other chunks are neither positives nor safe negatives.
    exclude_doc_ids: tuple[str, ...] = ()
    source: str = "qrels"  # qrels | feedback


def query_key(query: str) -> str:
    """Events about the same question (modulo case and spacing) train one example."""
    return hashlib.sha256(" ".join(query.lower().split()).encode()).hexdigest()[:16]


def is_holdout(query_id: str, fraction: float, fold: int = 0) -> bool:
    """Deterministic evaluation split: the same queries are held out of every training run. Fold k holds out
    the k-th `fraction`-wide slice of a hash range, so folds 0 .. 1/fraction - 1 are disjoint: training once per
    fold cross-validates the whole loop on every labelled query."""
    bucket = int(hashlib.sha256(f"holdout:{query_id}".encode()).hexdigest()[:8], 16) / 2**32
    return fold * fraction <= bucket < (fold + 1) * fraction


def examples_from_events(events: Iterable[FeedbackEvent]) -> list[TrainingExample]:
    # (query key, chunk id) -> (strength, time, sign)
    labels: dict[tuple[str, str], tuple[float, object, int]] = {}
    queries: dict[str, str] = {}
    for event in events:
        key = query_key(event.query)
        queries.setdefault(key, event.query)
        if event.kind == "relevant":
            marks = [(event.chunk_id, STRONG, +1)]
        elif event.kind in ("not_relevant", "citation_flag"):
            marks = [(event.chunk_id, STRONG, -1)]
        elif event.kind == "thumbs_up":
            marks = [(cid, WEAK, +1) for cid in event.cited]
        elif event.kind == "thumbs_down":
            marks = [(cid, WEAK, -1) for cid in event.cited]
        else:  # corrections train the generator, not the reranker
            continue
        for chunk_id, strength, sign in marks:
            current = labels.get((key, chunk_id))
            if current is None or (strength, event.created_at) >= current[:2]:
                labels[(key, chunk_id)] = (strength, event.created_at, sign)
    by_query: dict[str, tuple[list[Labelled], list[Labelled]]] = {}
    for (key, chunk_id), (strength, _, sign) in sorted(labels.items()):
        positives, negatives = by_query.setdefault(key, ([], []))
        (positives if sign > 0 else negatives).append(Labelled(chunk_id, strength))
    return [
        TrainingExample(key, queries[key], tuple(pos), tuple(neg), source="feedback")
        for key, (pos, neg) in sorted(by_query.items())
        if pos  # contrastive training needs a positive; negatives alone wait for one
    ]


def examples_from_qrels(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    chunk_for: Callable[[str, str], str | None],
) -> list[TrainingExample]:
    """Document-level judgements -> chunk-level positives: `chunk_for(query, doc_id)` picks the chunk of a
    relevant document that answers the query (its best-ranked chunk); the document's other chunks are excluded."""
    examples = []
    for query_id in sorted(qrels):
        relevant = sorted(doc for doc, grade in qrels[query_id].items() if grade > 0)
        if query_id not in queries or not relevant:
            continue
        positives = tuple(Labelled(cid) for doc in relevant if (cid := chunk_for(queries[query_id], doc)) is not None)
        if positives:
            examples.append(TrainingExample(query_id, queries[query_id], positives, exclude_doc_ids=tuple(relevant)))
    return examples


@dataclass(frozen=True)
class ExampleSnapshot:
    """The exact examples of one training run; its id is the sha256 of their canonical JSON."""

    examples: tuple[TrainingExample, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        return [json.dumps(asdict(e), sort_keys=True, ensure_ascii=False) for e in self.examples]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for line in self.lines():
            digest.update(line.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        path.write_text("".join(line + "\n" for line in self.lines()), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ExampleSnapshot:
        examples = []
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            row["positives"] = tuple(Labelled(**p) for p in row["positives"])
            row["negatives"] = tuple(Labelled(**n) for n in row["negatives"])
            row["exclude_doc_ids"] = tuple(row["exclude_doc_ids"])
            examples.append(TrainingExample(**row))
        return cls(tuple(examples))
