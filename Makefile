# Every target bootstraps .venv from pyproject.toml by itself.
# The interpreter's build matters to throughput: Debian's /usr/bin/python3.11 (a
# static interpreter built with PGO and LTO, as the python:3.11-slim image the
# Dockerfile uses is) ran the enrichment core ~15 % faster than a default pyenv build
# (shared libpython, no PGO/LTO); bench/README.md, "Session 5". Taken when present;
# `make PYTHON=...` picks another.
PYTHON ?= $(or $(wildcard /usr/bin/python3.11),python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test unit integration lint demo bench bench-core bench-spans soak clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); python3.11 -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check pipeline agents schemas tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration -q

test: $(STAMP) lint
	$(BIN)/python -m pytest tests -q

demo: $(STAMP)
	$(BIN)/grayscope demo $(ARGS)

bench-core: $(STAMP)
	$(BIN)/python bench/core.py $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/e2e.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

bench-spans: $(STAMP)
	$(BIN)/python bench/spans.py $(ARGS)

soak: $(STAMP)
	$(BIN)/python bench/soak.py $(ARGS)
