# Two commands matter: `make demo` (whole job end to end) and `make test` (whole suite).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

export CHURN_STATE_DIR ?= $(CURDIR)/.state
export AIRFLOW_HOME ?= $(CHURN_STATE_DIR)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := False
export NO_COLOR := 1
DEMO_DATE ?= $(shell date -u +%F)

.PHONY: venv services stop demo test lock airflow-ui bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu) or use uv"; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q -p $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps -e .
	touch $@

lock:
	$(BIN)/uv pip compile requirements.in -p 3.11 -o requirements.txt --no-header -q
	sed -i '1i # Pinned by `make lock` (uv pip compile requirements.in). Python 3.11.' requirements.txt

services: venv
	@mkdir -p $(CHURN_STATE_DIR)
	$(BIN)/python -m churn.services start > $(CHURN_STATE_DIR)/services.env
	@echo "embedded Postgres and Redis running; connection exports in $(CHURN_STATE_DIR)/services.env"

stop:
	@test ! -x $(BIN)/python || $(BIN)/python -m churn.services stop

$(AIRFLOW_HOME)/.migrated: $(VENV)/.installed
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || { tail -40 $(AIRFLOW_HOME)/migrate.log; exit 1; }
	touch $@

demo: services $(AIRFLOW_HOME)/.migrated
	$(BIN)/python -m churn.demo load --as-of $(DEMO_DATE)
	@echo "running churn_nightly for $(DEMO_DATE) through Airflow (full log: $(CHURN_STATE_DIR)/demo-airflow.log)"
	source $(CHURN_STATE_DIR)/services.env && PATH=$(BIN):$$PATH $(BIN)/airflow dags test churn_nightly $(DEMO_DATE) \
	  > $(CHURN_STATE_DIR)/demo-airflow.log 2>&1 || { tail -60 $(CHURN_STATE_DIR)/demo-airflow.log; exit 1; }
	@grep -E "DAG TEST\] end task|stage .* took" $(CHURN_STATE_DIR)/demo-airflow.log | sed -E 's/^.*(end task task_id=[a-z_]+|stage [a-z_]+ of run [0-9-]+ took [0-9.]+ s).*$$/  \1/' || true
	@grep -q "state=success" $(CHURN_STATE_DIR)/demo-airflow.log || { echo "churn_nightly did not succeed: see $(CHURN_STATE_DIR)/demo-airflow.log"; exit 1; }
	$(BIN)/python -m churn.demo report --run-key $(DEMO_DATE)

airflow-ui: services $(AIRFLOW_HOME)/.migrated
	source $(CHURN_STATE_DIR)/services.env && PATH=$(BIN):$$PATH $(BIN)/airflow standalone

test: venv
	$(BIN)/python -m pytest -ra

# Starts its own Postgres/Redis on free ports in a temp dir (never the demo's); writes bench/results/publish.json.
bench: venv
	$(BIN)/python -m bench.run

clean: stop
	rm -rf $(CHURN_STATE_DIR)
