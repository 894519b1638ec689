"""Turn paths into source documents with llama-index readers; report what cannot be read, never crash.

Files: .md .markdown .rst .txt .html .htm .pdf. Row files: BEIR ``corpus.jsonl[.gz]`` rows
``{_id, title, text}`` and JSONL rows ``{id, title, text, metadata}``.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = {".md", ".markdown", ".rst", ".txt"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
FILE_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES


@dataclass
class SourceDocument:
    doc_id: str
    source: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    name: str
    reason: str


def is_rows_file(path: Path) -> bool:
    return path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")


def is_supported(path: Path) -> bool:
    return is_rows_file(path) or path.suffix.lower() in FILE_SUFFIXES


def expand_paths(paths: list[Path | str]) -> Iterator[tuple[Path, str] | Skipped]:
    """(file, doc_id) pairs: a file in a directory is named by its path relative to that directory."""
    for path in map(Path, paths):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in file.relative_to(path).parts):
                    continue
                if is_supported(file):
                    yield file, file.relative_to(path).as_posix()
                else:
                    yield Skipped(str(file), f"unsupported file type '{file.suffix or file.name}'")
        elif path.is_file():
            yield path, path.name
        else:
            yield Skipped(str(path), "no such file or directory")


def read_paths(paths: list[Path | str]) -> Iterator[SourceDocument | Skipped]:
    for item in expand_paths(paths):
        if isinstance(item, Skipped):
            yield item
            continue
        file, doc_id = item
        if is_rows_file(file):
            yield from read_rows(file)
        elif file.suffix.lower() not in FILE_SUFFIXES:
            yield Skipped(str(file), f"unsupported file type '{file.suffix or file.name}'")
        else:
            yield read_file(file, doc_id)


def read_file(path: Path, doc_id: str) -> SourceDocument | Skipped:
    from llama_index.core import SimpleDirectoryReader
    from llama_index.readers.file import HTMLTagReader, PDFReader

    suffix = path.suffix.lower()
    try:
        head = path.open("rb").read(8192)
    except OSError as exc:
        return Skipped(str(path), f"unreadable: {exc.strerror or exc}")
    if suffix not in PDF_SUFFIXES and b"\x00" in head:
        return Skipped(str(path), "binary file, not text")
    extractors = {".pdf": PDFReader(return_full_document=True)}
    extractors.update({s: HTMLTagReader(tag="body", ignore_no_id=False) for s in HTML_SUFFIXES})
    try:
        if suffix in HTML_SUFFIXES:
            path.read_bytes().decode("utf-8")  # the HTML reader would replace bad bytes silently
        docs = SimpleDirectoryReader.load_file(
            input_file=path,
            file_metadata=lambda _: {},
            file_extractor=extractors,
            encoding="utf-8",
            errors="strict",
            raise_on_error=True,
        )
    except UnicodeDecodeError as exc:
        return Skipped(str(path), f"not valid UTF-8 text (byte {exc.start})")
    except Exception as exc:  # a reader's own failure (corrupt PDF, ...) is reported, not raised
        cause = exc.__cause__ or exc
        return Skipped(str(path), f"could not be parsed: {type(cause).__name__}: {cause}")
    text = "\n\n".join(d.text for d in docs if d.text).strip("\ufeff")
    if not text.strip():
        return Skipped(str(path), "empty: no text could be extracted")
    return SourceDocument(doc_id=doc_id, source=str(path), title=guess_title(text, path), text=text)


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def guess_title(text: str, path: Path) -> str:
    """A markdown '# heading', an underlined reST title, or else the file name."""
    lines = text.splitlines()[:80]
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip()
        if stripped and i + 1 < len(lines) and _RST_UNDERLINE.match(lines[i + 1]) and not _RST_UNDERLINE.match(line):
            if len(lines[i + 1].rstrip()) >= len(line.rstrip()):
                return stripped
    return path.name.split(".")[0]


def read_rows(path: Path) -> Iterator[SourceDocument | Skipped]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                yield _row_document(line, path, lineno)
    except UnicodeDecodeError as exc:
        yield Skipped(str(path), f"not valid UTF-8 text (byte {exc.start})")
    except (OSError, EOFError) as exc:
        yield Skipped(str(path), f"unreadable: {exc}")


def _row_document(line: str, path: Path, lineno: int) -> SourceDocument | Skipped:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return Skipped(where, f"invalid JSON: {exc.msg}")
    if not isinstance(row, dict):
        return Skipped(where, "row is not a JSON object")
    doc_id = row.get("_id", row.get("id"))
    if doc_id is None or str(doc_id) == "":
        return Skipped(where, "missing field 'id' (or BEIR '_id')")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        return Skipped(where, "field 'text' is missing or empty")
    title = row.get("title") or ""
    if not isinstance(title, str):
        return Skipped(where, "field 'title' must be a string")
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        return Skipped(where, "field 'metadata' must be an object")
    return SourceDocument(doc_id=str(doc_id), source=where, title=title, text=text, metadata=metadata)
