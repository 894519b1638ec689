"""Reranker training examples `(query, positives, negatives)`: their shape, label strengths, the held-out split,
and examples from BEIR qrels (bootstrap and benchmarks). Feedback events become examples in feedback/trainset.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path


STRONG = 1.0  # a curator's judgement (and a BEIR qrel)
WEAK = 0.3  # a vote


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
