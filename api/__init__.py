"""HTTP API (FastAPI): health now; ask, search, feedback, keys and roles next (issue 5)."""
