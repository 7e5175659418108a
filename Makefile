# dyff — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help install crds argocd lint format test test-fast demo bench clean

help:
	@echo "make demo   run a real evaluation end to end on this machine"
	@echo "make test   lint, type-check and run the whole suite (emulators included)"
	@echo "make crds   regenerate crds/ from dyff/schema.py"
	@echo "make argocd regenerate the Argo CD health checks from dyff/lifecycle.py"
	@echo "make bench  run the benchmarks in hack/bench/"

# A fresh machine gets the virtualenv from nothing; torch is pinned in
# pyproject.toml to the CPU wheel that lies on this machine kind's disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
	  | { grep -v "^WARNING: Location 'file:///opt/" || true; }
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

crds: $(STAMP)
	$(BIN)/python -m dyff.crdgen --out crds

argocd: $(STAMP)
	$(BIN)/python -m dyff.argocdgen --out config/argocd

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# -ra prints every skip with its reason.
test: lint
	HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true $(BIN)/pytest -ra $(PYTEST_ARGS)

# The same suite without the slow end-to-end cases, for a quick local loop.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true $(BIN)/pytest -ra -m "not slow" $(PYTEST_ARGS)

# A real evaluation end to end on this machine (data under .dyff/demo; run it again to
# see full reuse). Leaves nothing running.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true $(BIN)/python hack/demo.py

bench: $(STAMP)
	@for b in hack/bench/*.py; do [ -e "$$b" ] && $(BIN)/python "$$b"; done
	@# The sync on Datastore, and with 30 ms per call (a stand-in for real Datastore's network).
	BENCH_RECORDS=datastore $(BIN)/python hack/bench/sync_lag.py
	BENCH_RECORDS=datastore BENCH_RECORD_DELAY_MS=30 $(BIN)/python hack/bench/sync_lag.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
