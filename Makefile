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
# The compiled core (every module of pipeline/core/; pipeline/native.py): extension modules
# built beside their sources with mypyc; `make NATIVE=0 ...` skips the build
# (and `make clean-native` removes it) to run everything as plain Python.
NATIVE ?= 1
NATIVE_SRC := $(shell python3 pipeline/native.py 2>/dev/null || $(PYTHON) pipeline/native.py)
# ... and the hand-written C modules' sources and shared headers (pipeline/native.py's C_MODULES).
NATIVE_C_INPUTS := $(shell python3 pipeline/native.py --c 2>/dev/null || $(PYTHON) pipeline/native.py --c)
NATIVE_C_SRC := $(filter %.c,$(NATIVE_C_INPUTS))
NATIVE_C_HEADERS := $(filter %.h,$(NATIVE_C_INPUTS))
NATIVE_STAMP := pipeline/.native-built

.PHONY: install native clean-native services test unit integration lint demo bench bench-core bench-spans soak fuzz clean \
	debian-packages jaeger

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
$(NATIVE_STAMP): $(NATIVE_SRC) $(NATIVE_C_SRC) $(NATIVE_C_HEADERS) pipeline/native.py setup.py | $(STAMP)
	GRAYSCOPE_MYPYC=1 $(BIN)/python setup.py --quiet build_ext --inplace >$(VENV)/native-build.log 2>&1 \
		|| { tail -40 $(VENV)/native-build.log; exit 1; }
	@# An unchanged C file is not recompiled and the copy keeps the old build's
	@# time: mark the library as built from these sources (the staleness guard reads it).
	@touch pipeline/core_native__mypyc.*.so $(NATIVE_C_SRC:.c=.cpython-*.so) $(NATIVE_STAMP)
native: $(NATIVE_STAMP)
else
native: ;
endif

clean-native:
	rm -f $(NATIVE_STAMP) pipeline/core_native__mypyc.*.so $(NATIVE_SRC:.py=.cpython-*.so) \
		$(NATIVE_C_SRC:.c=.cpython-*.so)
	rm -rf build

install: $(STAMP) native

# Debian packages the tests run (deploy/debian-packages.txt: promtool, Prometheus,
# Alertmanager, ...): the missing ones are installed (as root, or through sudo).
DEBIAN_PACKAGES := $(shell sed -e 's/\#.*//' deploy/debian-packages.txt)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
debian-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# ruff (lint and format), mypy and the architecture contract (who may import whom:
# tests/unit/test_architecture.py).
lint: $(STAMP)
	$(BIN)/ruff check pipeline agents schemas tests bench
	$(BIN)/ruff format --check pipeline agents schemas tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py

unit: install debian-packages
	$(BIN)/python -m pytest tests/unit -q

# The real services the integration tier starts as plain processes (Apache Kafka,
# OpenSearch, Jaeger; pipeline/dev/stack): jars resolved with Maven into
# $${XDG_CACHE_HOME:-~/.cache}/grayscope (and ~/.m2), Jaeger built there with Go
# (minutes the first time); Prometheus and Alertmanager come from Debian's packages.
# A no-op when warm.
services: $(STAMP) debian-packages
	$(BIN)/grayscope stack fetch

integration: install services
	$(BIN)/python -m pytest tests/integration -q $(PARALLEL)

# Only the Jaeger build of `make services` (minutes the first time, then nothing).
jaeger: $(STAMP)
	$(BIN)/python -m pipeline.dev.stack.jaeger build

# Everything against the compiled core, then the unit tests against the plain
# Python one (the same results either way; tests/pure.py). On TEST_WORKERS
# pytest-xdist processes (`make test TEST_WORKERS=0`: one process): two keep both
# cores of the CI box busy (a third gained 7 %, README). Each worker starts its own
# Kafka, OpenSearch and Jaeger (tests wipe and kill what they own); a file goes whole
# to one worker, the longest first (tests/conftest.py). A worker that crashes (a
# segmentation fault) ends the run there, failed: replaced, one once left the run
# waiting at 96 % until CI's time limit (session 26). The main pass names its
# slowest tests, which set the suite's wall time.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0)
test: install lint services
	$(BIN)/python -m pytest tests -q $(PARALLEL) --durations=15
	$(BIN)/python -m pytest -p tests.pure tests/unit -q $(PARALLEL)

demo: install
	$(BIN)/grayscope demo $(ARGS)

bench-core: install
	$(BIN)/python bench/core.py $(ARGS)

bench: install
	$(BIN)/python bench/e2e.py $(ARGS)

clean: clean-native
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Coverage-guided fuzzing of the core entry point (atheris; tests/fuzz/fuzz_core.py).
# Not part of `make test`. Seeds: tests/fuzz/corpus (in the repo); what the fuzzer
# finds goes to FUZZ_DIR (outside the repo). FUZZ_SECONDS=0 runs until stopped.
FUZZ_SECONDS ?= 600
FUZZ_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/grayscope/fuzz-corpus
FUZZ_STAMP := $(VENV)/.fuzz-installed
$(FUZZ_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev,fuzz]"
	@touch $(FUZZ_STAMP)
fuzz: $(FUZZ_STAMP)
	@mkdir -p $(FUZZ_DIR)
	$(BIN)/python tests/fuzz/fuzz_core.py $(FUZZ_DIR) tests/fuzz/corpus \
		-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -max_len=8192 $(ARGS)

bench-spans: install
	$(BIN)/python bench/spans.py $(ARGS)

soak: install
	$(BIN)/python bench/soak.py $(ARGS)
