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
# The compiled core (pipeline/native.py lists its modules): extension modules
# built beside their sources with mypyc; `make NATIVE=0 ...` skips the build
# (and `make clean-native` removes it) to run everything as plain Python.
NATIVE ?= 1
NATIVE_SRC := $(shell python3 pipeline/native.py 2>/dev/null || $(PYTHON) pipeline/native.py)
NATIVE_STAMP := pipeline/.native-built

.PHONY: install native clean-native services test unit integration lint demo bench bench-core bench-spans soak clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); python3.11 -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

ifeq ($(NATIVE),1)
# Rebuilt whenever a compiled module's source (or the build recipe) changes;
# the test suite refuses to run against a stale build (tests/conftest.py).
$(NATIVE_STAMP): $(NATIVE_SRC) pipeline/native.py setup.py | $(STAMP)
	GRAYSCOPE_MYPYC=1 $(BIN)/python setup.py --quiet build_ext --inplace >$(VENV)/native-build.log 2>&1 \
		|| { tail -40 $(VENV)/native-build.log; exit 1; }
	@# An unchanged C file is not recompiled and the copy keeps the old build's
	@# time: mark the library as built from these sources (the staleness guard reads it).
	@touch pipeline/core_native__mypyc.*.so $(NATIVE_STAMP)
native: $(NATIVE_STAMP)
else
native: ;
endif

clean-native:
	rm -f $(NATIVE_STAMP) pipeline/core_native__mypyc.*.so $(NATIVE_SRC:.py=.cpython-*.so)
	rm -rf build

install: $(STAMP) native

lint: $(STAMP)
	$(BIN)/ruff check pipeline agents schemas tests bench
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest tests/unit -q

# The real services the integration tier starts as plain processes (Apache Kafka,
# OpenSearch; pipeline/dev/stack): their jars resolved with Maven into
# $${XDG_CACHE_HOME:-~/.cache}/grayscope (and ~/.m2). A no-op when warm.
services: $(STAMP)
	$(BIN)/grayscope stack fetch

integration: install services
	$(BIN)/python -m pytest tests/integration -q

# Everything against the compiled core, then the unit tests against the plain
# Python one (the same results either way; tests/pure.py).
test: install lint services
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest -p tests.pure tests/unit -q

demo: install
	$(BIN)/grayscope demo $(ARGS)

bench-core: install
	$(BIN)/python bench/core.py $(ARGS)

bench: install
	$(BIN)/python bench/e2e.py $(ARGS)

clean: clean-native
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

bench-spans: install
	$(BIN)/python bench/spans.py $(ARGS)

soak: install
	$(BIN)/python bench/soak.py $(ARGS)
