"""The one place bench scripts write their result tables into bench/README.md (between marker comments)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def write_table(key: str, heading: str, table: str) -> None:
    """Replace the block between `<!-- KEY:begin -->` and `<!-- KEY:end -->`; add it under `heading` if new."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = README.read_text()
    if begin not in text:
        text += f"\n{heading}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
