# tuneship: every workflow is a make target; CI calls the same ones people do.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := train,convert,serve,controller,console,dev
INSTALLED := $(VENV)/.installed
TUNESHIP_CACHE_DIR ?= $(HOME)/.cache/tuneship
export TUNESHIP_CACHE_DIR
LLAMA_VERSION := $(shell cat services/tuneship/common/llama-cpp-python.version)
# The bindings are the last piece a build puts in place (toolchain.json marks the binaries).
TOOLCHAIN := $(TUNESHIP_CACHE_DIR)/llama.cpp/$(LLAMA_VERSION)/python/llama_cpp/llama_cpp.py
# The S3 test server (moto) lives in its own venv: its botocore and the kubernetes
# client pin python-dateutil differently.
S3_VENV ?= .venv-s3
S3_INSTALLED := $(S3_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv s3-venv go-toolchain postgres-server browser toolchain proto lint format test test-faults test-all bench run images clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build of 2.13.0 is installed from local disk.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[$(EXTRAS)]'
	@touch $@

venv: $(INSTALLED) ## create .venv with the pinned dependencies (idempotent)

$(S3_INSTALLED): requirements-s3.lock
	@test -x $(S3_VENV)/bin/python || $(PYTHON) -m venv $(S3_VENV)
	$(S3_VENV)/bin/python -m pip install --quiet -r requirements-s3.lock
	@touch $@

s3-venv: $(S3_INSTALLED) ## create .venv-s3 with the pinned moto S3 test server (idempotent)

# The Go template parity tests build tests/tools/gotemplate (go 1.19, standard library
# only), so Debian's golang-go is enough (scripts/debian-install.sh: the Debian packages
# a test needs, installed only when missing).
go-toolchain: ## install Debian's golang-go when go is missing (idempotent)
	@scripts/debian-install.sh 'command -v go' \
	  'go is missing and apt-get is not available: install Go 1.19 or newer (Debian/Ubuntu: golang-go) and put go on PATH' \
	  golang-go

# The controller's tests run against a real PostgreSQL server besides SQLite: a throwaway
# one started from Debian's postgresql package (tuneship.testing.postgres).
postgres-server: ## install Debian's postgresql when no server binaries exist (idempotent)
	@scripts/debian-install.sh 'ls /usr/lib/postgresql/*/bin/postgres' \
	  'PostgreSQL is missing and apt-get is not available: install the PostgreSQL 15+ server (Debian/Ubuntu: postgresql)' \
	  postgresql

# The console's browser tests drive Debian's chromium through its chromedriver (selenium
# is pinned in the dev extra); no browser is ever downloaded.
browser: ## install Debian's chromium and chromium-driver when missing (idempotent)
	@scripts/debian-install.sh 'test -x /usr/bin/chromium && test -x /usr/bin/chromedriver' \
	  'chromium is missing and apt-get is not available: install Debian'"'"'s chromium and chromium-driver' \
	  chromium chromium-driver

$(TOOLCHAIN):
	scripts/build-llama-cpp.sh

toolchain: $(TOOLCHAIN) ## build the pinned llama.cpp binaries into the cache (idempotent)

proto: $(INSTALLED) ## regenerate the gRPC stubs in services/tuneship/v1 from proto/
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=services --pyi_out=services \
	  --grpc_python_out=services proto/tuneship/v1/*.proto

lint: $(INSTALLED) ## ruff (lint + format check), mypy, import-linter layering contracts
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(INSTALLED) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix services tests bench
	$(BIN)/ruff format services tests bench

test: $(INSTALLED) $(TOOLCHAIN) $(S3_INSTALLED) go-toolchain postgres-server browser lint ## lint, then the default test suite (not slow, not faults, not gpu)
	$(BIN)/pytest -m "not slow and not faults and not gpu" --durations=15 $(PYTEST_ARGS)

test-faults: $(INSTALLED) $(TOOLCHAIN) $(S3_INSTALLED) go-toolchain postgres-server lint ## the fault matrix: kills and S3 outages at every moment (tests/e2e/test_faults.py)
	$(BIN)/pytest -m faults $(PYTEST_ARGS)

test-all: $(INSTALLED) $(TOOLCHAIN) $(S3_INSTALLED) go-toolchain postgres-server browser lint ## every test except those needing a GPU (slow and faults included)
	$(BIN)/pytest -m "not gpu" $(PYTEST_ARGS)

bench: $(INSTALLED) $(TOOLCHAIN) postgres-server ## benchmarks; results in bench/results/*.json
	@mkdir -p bench/results
	@found=0; for b in bench/bench_*.py; do [ -e "$$b" ] || continue; found=1; \
	  echo "== $$b"; $(BIN)/python "$$b" || exit 1; done; \
	  [ $$found = 1 ] || echo "no benchmarks yet"

run: $(INSTALLED) $(TOOLCHAIN) ## the quickstart: the bundled pipeline on this machine, offline
	$(BIN)/tuneship run

# The images the Helm chart runs, tagged with the version in pyproject.toml.
images: ## build ghcr.io/tuneship/tuneship{,-train,-convert}:VERSION with docker build
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine is available" \
	  "('docker info' failed): install Docker or point DOCKER_HOST at an engine" >&2; exit 1; }
	@version="$$(sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)"; \
	  for pair in tuneship=Dockerfile tuneship-train=Dockerfile.train \
	      tuneship-convert=Dockerfile.convert; do \
	    image="ghcr.io/tuneship/$${pair%%=*}:$$version"; echo "== $$image ($${pair#*=})"; \
	    docker build -f "$${pair#*=}" --build-arg TUNESHIP_VERSION="$$version" -t "$$image" . \
	      || exit 1; \
	  done

clean: ## remove the venv and local run data (the toolchain cache stays)
	rm -rf $(VENV) $(S3_VENV) .tuneship .pytest_cache .mypy_cache .ruff_cache
