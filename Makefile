# mmsearch: `make run` (the DAG once, end to end) and `make test` (the test suite).
# Both set up everything they need on a fresh clone, and reuse it on the next call.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON        ?= python3
# Everything the embedded default writes lives under MMSEARCH_HOME.
MMSEARCH_HOME ?= $(CURDIR)/.mmsearch
VENVS         ?= $(CURDIR)/.venvs
export MMSEARCH_HOME

TOOLS_VENV   := $(VENVS)/tools
AIRFLOW_VENV := $(VENVS)/airflow
ML_VENV      := $(VENVS)/ml
UV           := $(TOOLS_VENV)/bin/uv
AIRFLOW_BIN  := $(AIRFLOW_VENV)/bin

export MMSEARCH_ML_PYTHON ?= $(ML_VENV)/bin/python
export AIRFLOW_HOME       ?= $(MMSEARCH_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PATH := $(AIRFLOW_BIN):$(PATH)

.PHONY: help envs system-deps run mlflow-ui up serve serve-example down rollback champion-history status lint test bench bench-stack lock clean distclean sample-data real-data

help:
	@echo "make run         set up, pull the sample through DVC, run the DAG once (airflow dags test)"
	@echo "make mlflow-ui   MLflow's UI on make run's store, on a free port; prints the runs' address"
	@echo "make up          start PostgreSQL, Airflow (UI on :8080), MLflow (:5000, basic auth) on 127.0.0.1"
	@echo "                 EXECUTOR=celery WORKERS=2: the CeleryExecutor, Redis and two workers"
	@echo "make serve       the champion as a re-ranking service on :5001 (POST /rerank)"
	@echo "make serve-example  re-rank one query's judged products of data/raw with the service"
	@echo "make down        stop them all (by PID)"
	@echo "make rollback REASON=... [TO=N]  move the champion alias back, recorded (who, when, why)"
	@echo "make champion-history  every move of the champion alias: gate, approvals, rollbacks"
	@echo "make status      health, PIDs and memory of the running stack"
	@echo "make test        set up and run the linter and the test suite"
	@echo "make lint        ruff check, ruff format --check, lint-imports (layers, no cycles)"
	@echo "make bench       measure every stage at 10k, 50k and 182k pairs (BENCH_ARGS=--full adds 1.1M)"
	@echo "make bench-stack the server stack's figures: make up time, idle memory, a Celery run, serving"
	@echo "make lock        re-resolve requirements*.txt from requirements*.in"
	@echo "make real-data   import the public ESCI/SQID files into data/raw with DVC (MIRROR=url: a mirror)"
	@echo "make sample-data regenerate the bundled sample and push it to the bundled DVC remote"
	@echo "make clean       remove $(MMSEARCH_HOME) (Airflow home, MLflow store, run outputs)"
	@echo "make distclean   clean, and remove the environments in $(VENVS)"

$(UV): requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

# One stamp per environment: rebuilt only when its lock file or the package changes.
$(AIRFLOW_VENV)/.stamp: requirements.txt pyproject.toml | $(UV)
	[ -x $(AIRFLOW_VENV)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(AIRFLOW_VENV)
	VIRTUAL_ENV=$(AIRFLOW_VENV) $(UV) pip sync --quiet --compile-bytecode requirements.txt
	VIRTUAL_ENV=$(AIRFLOW_VENV) $(UV) pip install --quiet --no-deps -e .
	touch $@

$(ML_VENV)/.stamp: requirements-ml.txt pyproject.toml | $(UV)
	[ -x $(ML_VENV)/bin/python ] || $(UV) venv --quiet --python $(PYTHON) $(ML_VENV)
	VIRTUAL_ENV=$(ML_VENV) $(UV) pip sync --quiet --compile-bytecode requirements-ml.txt
	VIRTUAL_ENV=$(ML_VENV) $(UV) pip install --quiet --no-deps -e .
	touch $@

envs: $(AIRFLOW_VENV)/.stamp $(ML_VENV)/.stamp

lock: | $(UV)
	$(UV) pip compile --quiet --python-version 3.11 requirements.in -o requirements.txt
	$(UV) pip compile --quiet --python-version 3.11 requirements-ml.in -o requirements-ml.txt

$(AIRFLOW_HOME)/airflow.db: $(AIRFLOW_VENV)/.stamp
	mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/db-migrate.log; exit 1; }

# CONF: the DAG run's conf as JSON, e.g. make run CONF='{"feature_set": "query", "epochs": 5}';
# DATE: the run's logical date (default: now), e.g. DATE=2026-01-01T02:00:00+00:00
CONF ?= {}
DATE ?=
run: envs $(AIRFLOW_HOME)/airflow.db
	$(AIRFLOW_BIN)/mmsearch run-dag --conf '$(CONF)' $(if $(DATE),--logical-date '$(DATE)')

# MLflow's UI on the store `make run` writes (MMSEARCH_HOME's), on a free port, until Ctrl-C.
mlflow-ui: envs
	$(AIRFLOW_BIN)/mmsearch mlflow-ui

# The local server stack (no Docker): PostgreSQL, Airflow 3, MLflow with basic auth; with
# EXECUTOR=celery, Redis and WORKERS Celery workers. Ports: MMSEARCH_{AIRFLOW,MLFLOW,POSTGRES,
# REDIS,LOG_SERVER,SERVE}_PORT (README lists them); MMSEARCH_ADMIN_PASSWORD fixes Airflow's.
EXECUTOR ?= local
WORKERS  ?= 2
up: envs system-deps
	$(AIRFLOW_BIN)/mmsearch stack up --executor $(EXECUTOR) --workers $(WORKERS)

# The champion (models:/mmsearch-esci@champion) as a re-ranking service on 127.0.0.1.
serve:
	$(AIRFLOW_BIN)/mmsearch stack serve

# One query of data/raw and its judged products re-ranked; the request stays for curl -d @file.
serve-example:
	$(AIRFLOW_BIN)/mmsearch serve-example

down:
	$(AIRFLOW_BIN)/mmsearch stack down

# The champion alias moved back (TO=VERSION, default: the champion before), with who and why recorded;
# on the running stack's registry, else make run's. The re-ranking service follows within its poll.
REASON ?=
TO     ?=
rollback: envs
	$(ML_VENV)/bin/mmsearch champion rollback --reason '$(REASON)' $(if $(TO),--to $(TO))

# Every move of the champion alias: the gate's, approvals, rollbacks.
champion-history: envs
	$(ML_VENV)/bin/mmsearch champion history

status:
	$(AIRFLOW_BIN)/mmsearch stack status

# Debian packages the stack (PostgreSQL, Redis), the browser test and the compose check need.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

RUFF := $(TOOLS_VENV)/bin/ruff

# Style first (ruff, configured in pyproject.toml), the import layers (import-linter, same), then
# the suite in both environments, selected by marker: Airflow, DVC and data tests in one,
# TensorFlow in the other.
lint: $(UV)
	$(RUFF) check .
	$(RUFF) format --check .
	PYTHONPATH=include $(TOOLS_VENV)/bin/lint-imports --no-cache

# The Airflow suite's modules run side by side (pytest-xdist, a module per worker, so each keeps
# its module fixtures: one stack, one DVC repository): they spend most of their time waiting on
# servers and schedulers (a quarter of two cores one after another, a third three at a time). TEST_WORKERS=1
# runs them in one process. --durations: the slowest tests in the log, where CI's time goes.
TEST_WORKERS ?= 4
test: envs system-deps lint
	$(AIRFLOW_BIN)/python -m pytest -m "not ml" -n $(TEST_WORKERS) --dist loadfile --durations=25 tests
	$(ML_VENV)/bin/python -m pytest -m "ml" --durations=10 tests

# A benchmark, not a test: prints and writes the table under $(MMSEARCH_HOME)/bench/.
BENCH_ARGS ?=
bench: envs
	$(AIRFLOW_BIN)/mmsearch bench $(BENCH_ARGS)

# The public ESCI and SQID files (1 GB), imported into data/raw with `dvc import-url` at the
# revisions data/sources.yaml pins; MIRROR=http://host/path serves them from a mirror.
MIRROR ?=
real-data: envs
	$(AIRFLOW_BIN)/mmsearch real-data $(if $(MIRROR),--base-url $(MIRROR))

# The server stack's figures (start-up, idle memory, a Celery run, the served champion's latency
# and throughput): a benchmark on real processes, in a temporary home with free ports.
bench-stack: envs system-deps
	$(AIRFLOW_BIN)/mmsearch bench-stack

sample-data: envs
	$(AIRFLOW_BIN)/mmsearch sample-data --out data/raw
	$(AIRFLOW_BIN)/dvc add data/raw
	$(AIRFLOW_BIN)/dvc push

# DVC's workspace copy and cache are rebuilt by the next pull.
clean:
	if [ -f $(MMSEARCH_HOME)/stack/pids.json ]; then $(AIRFLOW_BIN)/mmsearch stack down; fi
	rm -rf $(MMSEARCH_HOME) data/raw .dvc/cache .dvc/tmp test-artifacts

distclean: clean
	rm -rf $(VENVS)
