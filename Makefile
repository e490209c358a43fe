# Keel. The two targets that matter: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test test-unit test-integration test-compat lint bench bench-peers studio clean db-stop fmt soak eval eval-corpus

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Keel needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install Keel with pinned dependencies

run: $(STAMP) ## embedded Postgres + sample corpus + server on $(HOST):$(PORT)
	$(BIN)/keel ingest docs
	$(BIN)/keel serve --host $(HOST) --port $(PORT)

test: $(STAMP) lint ## the whole suite (unit, integration, e2e, compat)
	$(BIN)/python -m pytest -q tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check agent memory tools server tests
	$(BIN)/ruff format --check agent memory tools server tests
	$(BIN)/lint-imports
	$(BIN)/deptry .
	$(BIN)/python -m tests.support.typecheck

fmt: $(STAMP)
	$(BIN)/ruff check --fix agent memory tools server tests
	$(BIN)/ruff format agent memory tools server tests

bench: $(STAMP) ## benchmarks; figures go to docs/benchmarks.md
	$(BIN)/python -m tests.benchmarks.run

bench-peers: $(STAMP) ## the peer table only: Keel, langgraph dev, Aegra, langgraph-api + runtime-pg (venvs in .venv/peers)
	$(BIN)/python -m tests.benchmarks.run peers

EVAL_CACHE ?= .eval-cache
EVAL_ARGS  ?=
eval-corpus: ## fetch the third-party eval corpus (Click 8.1.3 HTML docs, Debian python-click-doc 8.1.3-2) into $(EVAL_CACHE)
	EVAL_CACHE=$(EVAL_CACHE) sh evals/fetch-corpus.sh

eval: $(STAMP) eval-corpus ## answer quality on both question sets (evals/); reports in evals/reports/; not in make test
	$(BIN)/keel eval evals/keel-docs.jsonl --corpus README.md $(wildcard docs/*.md) --quiet $(EVAL_ARGS)
	$(BIN)/keel eval evals/click-docs.jsonl --corpus $(EVAL_CACHE)/click-8.1.3 --quiet $(EVAL_ARGS)

soak: $(STAMP) ## chaos soak, not in CI: worker SIGKILLs + a Postgres restart under load (SOAK_ARGS="--duration 600")
	$(BIN)/python -m tests.soak.chaos $(SOAK_ARGS)

.PHONY: fuzz
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP) ## long property-based fuzz of the OpenAPI surface (make test runs a short one): FUZZ_EXAMPLES cases per route
	KEEL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) KEEL_FUZZ_COVERAGE=1 $(BIN)/python -m pytest -q tests/fuzz

studio: $(STAMP) ## LangGraph Studio against `langgraph dev` (offline, in-memory)
	LANGGRAPH_NO_VERSION_CHECK=true LANGGRAPH_CLI_NO_ANALYTICS=1 \
	$(BIN)/langgraph dev --no-browser --no-reload --host 127.0.0.1 --port 2124

db-stop: $(STAMP)
	$(BIN)/keel db stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .langgraph_api build *.egg-info
