# The two commands: `make run` (install, ingest the demo corpus, serve) and `make test` (install, run the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
DEMO_CORPUS := corpora/python-docs/sources

export HF_HUB_OFFLINE := 1
export RAGAS_DO_NOT_TRACK := true

.PHONY: install run ingest-demo serve test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Pinned first and on its own: a looser spec from a dependency would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

ingest-demo: install
	$(VENV)/bin/citeloop ingest $(DEMO_CORPUS) --collection python-docs

run: ingest-demo
	@echo "citeloop serves on http://127.0.0.1:8000 — try:"
	@echo "  curl -s http://127.0.0.1:8000/healthz"
	@echo "  $(VENV)/bin/citeloop search 'how do I read a file line by line' --collection python-docs"
	$(VENV)/bin/citeloop serve

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) bench/bench_retrieval.py

clean:
	rm -rf $(VENV) var
