"""Read BEIR-format data sets: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from eval.jsonl import json_lines


class BeirFormatError(ValueError):
    pass


@dataclass
class BeirSplit:
    corpus_path: Path
    queries: dict[str, str]  # only queries with qrels in this split
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance grade


def corpus_file(directory: Path) -> Path:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise BeirFormatError(f"{directory}: no corpus.jsonl or corpus.jsonl.gz")


def load_split(directory: Path, split: str) -> BeirSplit:
    directory = Path(directory)
    if not directory.is_dir():
        raise BeirFormatError(f"{directory}: not a directory")
    corpus = corpus_file(directory)
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (directory / "qrels").glob("*.tsv")) if (directory / "qrels").is_dir() else []
        raise BeirFormatError(f"{qrels_path}: no such qrels file (splits here: {', '.join(available) or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if not row or (lineno == 1 and row[0] in ("query-id", "query_id", "qid")):
                continue
            if len(row) < 3:
                raise BeirFormatError(f"{qrels_path}:{lineno}: expected query-id, corpus-id, score")
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise BeirFormatError(f"{qrels_path}:{lineno}: score '{row[2]}' is not a number") from None
            if grade > 0:
                qrels.setdefault(row[0], {})[row[1]] = grade
    queries_path = directory / "queries.jsonl"
    if not queries_path.is_file():
        raise BeirFormatError(f"{queries_path}: missing")
    queries: dict[str, str] = {}
    for lineno, row in json_lines(queries_path, BeirFormatError):
        try:
            qid, text = str(row["_id"]), row["text"]
        except (KeyError, TypeError):
            raise BeirFormatError(f"{queries_path}:{lineno}: expected a JSON object with _id and text") from None
        if qid in qrels:
            queries[qid] = text
    missing = set(qrels) - set(queries)
    if missing:
        raise BeirFormatError(f"{qrels_path}: {len(missing)} query ids have no text in queries.jsonl (e.g. {sorted(missing)[0]})")
    return BeirSplit(corpus, queries, qrels)
