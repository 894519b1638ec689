"""HTTP API (FastAPI): one router per resource under `routes/`, auth and services as dependencies (`deps.py`),
domain errors mapped to status codes in one place (`errors.py`), and a thin httpx client (`client.py`)."""
