"""Readers: every supported format, and every kind of bad file reported with its path and reason."""

import gzip
import json
from pathlib import Path

from retrieval.readers import Skipped, SourceDocument, read_paths


def make_pdf(path: Path, text: str) -> None:
    """A minimal one-page PDF with real text (offsets in the xref table computed)."""
    stream = f"BT /F1 18 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))


def read_all(*paths):
    docs = {d.doc_id: d for d in read_paths(list(paths)) if isinstance(d, SourceDocument)}
    skipped = {Path(s.name).name: s.reason for s in read_paths(list(paths)) if isinstance(s, Skipped)}
    return docs, skipped


def test_each_supported_format_is_read(tmp_path):
    (tmp_path / "guide.md").write_text("# Install guide\n\nRun the installer twice.\n")
    (tmp_path / "ref.rst").write_text(".. _ref:\n\nReference manual\n================\n\nThe reference text.\n")
    (tmp_path / "notes.txt").write_text("Plain notes about caching.\n")
    (tmp_path / "page.html").write_text("<html><head><title>T</title><script>var x;</script></head><body><h1>Cats</h1><p>Cats purr.</p></body></html>")
    make_pdf(tmp_path / "paper.pdf", "Hello from a PDF page")
    docs, skipped = read_all(tmp_path)
    assert skipped == {}
    assert docs["guide.md"].title == "Install guide"
    assert docs["ref.rst"].title == "Reference manual"
    assert "Cats purr." in docs["page.html"].text and "var x" not in docs["page.html"].text
    assert "Hello from a PDF page" in docs["paper.pdf"].text
    assert docs["notes.txt"].text.startswith("Plain notes")


def test_beir_and_jsonl_rows(tmp_path):
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"_id": "d1", "title": "T1", "text": "first"}) + "\n")
        fh.write(json.dumps({"_id": "d2", "title": "", "text": "second"}) + "\n")
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"id": "r1", "title": "R", "text": "row text", "metadata": {"lang": "en"}}) + "\n"
        + "not json\n"
        + json.dumps({"id": "r2", "text": ""}) + "\n"
        + json.dumps({"title": "no id", "text": "x"}) + "\n"
        + json.dumps({"id": "r3", "text": "ok", "metadata": [1]}) + "\n"
    )
    items = list(read_paths([tmp_path / "corpus.jsonl.gz", tmp_path / "rows.jsonl"]))
    docs = {i.doc_id: i for i in items if isinstance(i, SourceDocument)}
    assert set(docs) == {"d1", "d2", "r1"}
    assert docs["r1"].metadata == {"lang": "en"}
    reasons = {i.name.rsplit(":", 1)[1]: i.reason for i in items if isinstance(i, Skipped)}
    assert reasons["2"].startswith("invalid JSON")
    assert "'text'" in reasons["3"]
    assert "'id'" in reasons["4"]
    assert "'metadata'" in reasons["5"]


def test_bad_files_are_reported_with_path_and_reason(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "empty.md").write_text("   \n")
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x00\x00\x01binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs, skipped = read_all(tmp_path, tmp_path / "missing.md")
    assert set(docs) == {"good.txt"}
    assert skipped["empty.md"].startswith("empty")
    assert skipped["binary.txt"].startswith("binary")
    assert skipped["latin1.txt"].startswith("not valid UTF-8")
    assert "broken.pdf" in skipped
    assert skipped["image.png"].startswith("unsupported file type")
    assert skipped["missing.md"] == "no such file or directory"
