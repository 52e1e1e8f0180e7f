# Pulse developer commands. `make run` and `make test` bootstrap everything they need
# (a pinned uv in .tools/, the locked environment in .venv/) from a bare Python 3.11+.

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
VENV := .venv
UV := $(TOOLS)/bin/uv
PY := $(VENV)/bin/python

export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.DEFAULT_GOAL := help
.PHONY: help install run serve test lint fmt migrate token bench-tools bench bench-quick clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --python "$$(command -v $(PYTHON))"
	@touch $@

install: $(VENV)/.synced ## create .venv from uv.lock (idempotent)

run: install ## start Pulse in development (embedded PostgreSQL under .data/, demo data)
	$(PY) -m app dev

serve: install ## start Pulse alone against the configured services
	$(PY) -m app serve

test: install ## run the test suite (starts its own embedded PostgreSQL)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff (lint + format check), mypy, and the import contracts (pyproject.toml)
	$(VENV)/bin/ruff check src tests alembic bench scripts
	$(VENV)/bin/ruff format --check src tests alembic bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install ## format and autofix
	$(VENV)/bin/ruff format src tests alembic bench scripts
	$(VENV)/bin/ruff check --fix src tests alembic bench scripts

migrate: install ## upgrade the database to the newest migration
	$(PY) -m app migrate

token: install ## mint a development token: make token TENANT=demo ROLE=admin
	@$(PY) -m app token --tenant $(or $(TENANT),demo) --role $(or $(ROLE),admin)

bench-tools: # the load generator (Debian's wrk), installed when missing and we may
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } \
		|| echo "wrk is missing: apt-get install -y wrk" >&2

bench: install bench-tools ## full benchmark suite, writes docs/benchmarks.md
	$(PY) -m bench --profile full

bench-quick: install bench-tools ## a shorter benchmark run (1M events)
	$(PY) -m bench --profile quick

clean: ## remove local data and environments
	rm -rf .data $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
