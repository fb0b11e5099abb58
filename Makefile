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
export NO_COLOR := 1
DEMO_DATE ?= $(shell date -u +%F)
# What the demo writes (state folder, logs, exports, snapshots, passwords) is readable by its owner only.
PRIVATE := umask 077 &&
DEMO_CONF ?= {}

.PHONY: venv clients services stop demo cluster demo-cluster test lock airflow-ui bench bench-scale bench-nightly bench-serving bench-rescore bench-automl bench-experiment clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu) or use uv"; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install -q -p $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps -e .
	touch $@

# The front-end lookup clients' dependencies (clients/js: ioredis, pinned by package-lock.json).
clients: clients/js/node_modules/.installed

clients/js/node_modules/.installed: clients/js/package.json clients/js/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js >= 18 and npm (apt-get install nodejs npm)"; exit 1; }
	npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
	touch $@

lock:
	$(BIN)/uv pip compile requirements.in -p 3.11 -o requirements.txt --no-header -q
	sed -i '1i # Pinned by `make lock` (uv pip compile requirements.in). Python 3.11.' requirements.txt

services: venv
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PRIVATE) $(BIN)/python -m churn.dev.services start > $(CHURN_STATE_DIR)/services.env
	@echo "embedded Postgres and Redis running; connection exports in $(CHURN_STATE_DIR)/services.env"

stop:
	@test ! -x $(BIN)/python || { $(BIN)/python -m churn.dev.stack stop; $(BIN)/python -m churn.dev.services stop; }

# The main job the way production runs it: embedded Postgres/Redis, then Airflow's scheduler (LocalExecutor),
# dag-processor, api-server and triggerer as processes; churn_nightly triggered through the REST API and
# watched task by task; the UI stays up afterwards (`make stop` ends everything).
demo: venv
	$(PRIVATE) $(BIN)/python -m churn.dev.stack start --executor local
	$(PRIVATE) source <($(BIN)/python -m churn.dev.services env) && $(BIN)/python -m churn.demo load --as-of $(DEMO_DATE)
	$(PRIVATE) $(BIN)/python -m churn.dev.stack run --as-of $(DEMO_DATE) --conf '$(DEMO_CONF)'
	$(PRIVATE) $(BIN)/python -m churn.demo report --run-key $(DEMO_DATE)
	@$(BIN)/python -m churn.dev.stack status --login

# Scale-out topology on this machine: CeleryExecutor with Celery workers (broker: Redis db CHURN_CELERY_BROKER_DB)
# and a Dask scheduler + workers for the TPOT search. `make demo-cluster` runs churn_nightly on it.
cluster: venv
	$(PRIVATE) $(BIN)/python -m churn.dev.stack start --executor celery

demo-cluster: cluster
	$(PRIVATE) source <($(BIN)/python -m churn.dev.services env) && $(BIN)/python -m churn.demo load --as-of $(DEMO_DATE)
	$(PRIVATE) $(BIN)/python -m churn.dev.stack run --as-of $(DEMO_DATE) --conf '$(DEMO_CONF)'
	$(PRIVATE) $(BIN)/python -m churn.demo report --run-key $(DEMO_DATE)
	@$(BIN)/python -m churn.dev.stack status --login

# Only the Airflow components (LocalExecutor) and the UI, no run.
airflow-ui: venv
	$(PRIVATE) $(BIN)/python -m churn.dev.stack start --executor local

# Tests by tier (docs/development/testing.md); `make test` runs every tier and fails if any failed.
# Each tier has its own --basetemp: pytest keeps only the 3 newest basetemp folders, and a run that clears
# another's folder takes its embedded Postgres with it. -n 2 (pytest-xdist, one embedded Postgres/Valkey per
# worker, --dist loadfile keeps a module's fixtures on one worker) where measured safe; the scheduler and browser
# tiers run whole Airflow stacks and stay serial (docs/development/testing.md has the measurements).
.PHONY: test-unit test-integration test-e2e test-scheduler test-browser
TEST_TIERS := unit integration e2e scheduler browser
PYTEST := $(BIN)/python -m pytest -ra
PYTEST_TMP := $(CHURN_STATE_DIR)/pytest

test: venv
	@status=0; for tier in $(TEST_TIERS); do $(MAKE) --no-print-directory test-$$tier || status=1; done; exit $$status

test-unit: venv
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PYTEST) tests/unit -n 2 --dist loadfile --basetemp=$(PYTEST_TMP)-unit

test-integration: venv clients
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PYTEST) tests/integration -n 2 --dist loadfile --basetemp=$(PYTEST_TMP)-integration

test-e2e: venv
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PYTEST) tests/e2e -n 2 --dist loadfile --basetemp=$(PYTEST_TMP)-e2e

test-scheduler: venv
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PYTEST) tests/scheduler --basetemp=$(PYTEST_TMP)-scheduler

test-browser: venv
	@mkdir -p -m 700 $(CHURN_STATE_DIR)
	$(PYTEST) tests/browser --basetemp=$(PYTEST_TMP)-browser

# Starts its own Postgres/Redis on free ports in a temp dir (never the demo's); writes bench/results/publish.json.
bench: venv
	$(BIN)/python -m bench.run

# Scale: the whole nightly DAG (one process per task, 4 partitions) at 1M and 10M customers against its floors
# measured in the same run (psql COPY, psql \copy, redis-cli --pipe), ~25 min, writes
# bench/results/nightly_floor.json; then a 4M-customer population's scoring under LocalExecutor and two Celery
# workers with 1/2/4 partitions, writes bench/results/scale_out.json (docs/benchmarks.md, docs/guides/scaling.md).
bench-scale: bench-nightly
	$(BIN)/python -m bench.scale_out

bench-nightly: venv
	$(BIN)/python -m bench.nightly_floor --sizes 1000000,10000000

# Serving (issue 24): Redis bytes per customer of each layout at 1M and 10M with the redis-cli --pipe floor
# (bench/results/redis_memory.json), and open-loop lookup latency at 5k/20k/50k lookups/s, the JavaScript
# client against a C client at the same rate, during 1M-customer publishes and idle (lookup_latency.json).
bench-serving: venv clients
	$(BIN)/python -m bench.redis_memory --sizes 1000000,10000000
	$(BIN)/python -m bench.lookup_latency

# Event re-score latency (single events, bursts of 100 and 10,000) under LocalExecutor; writes
# bench/results/rescore.json (docs/benchmarks.md).
bench-rescore: venv
	$(BIN)/python -m bench.rescore

# AutoML quality (issue 14): the synthetic population against its oracle ceiling (100k and 1M customers) and
# the Telco file, 5 seeds x TPOT budgets 1/2/5 minutes (about 2 h 40 min on 2 cores; run on a quiet machine);
# writes bench/results/automl_synthetic.json and bench/results/telco_quality.json.
# Experiments (issue 27): does the analysis recover a planted effect? Coverage, split checks, power (a few minutes).
bench-experiment: venv
	PYTHONPATH=include $(BIN)/python -m bench.experiment

bench-automl: venv
	PYTHONPATH=include $(BIN)/python -m bench.automl_synthetic --customers 100000 1000000 --seeds 5 --budget-minutes 1 2 5
	$(BIN)/python bench/telco_quality.py --seeds 5 --budget-minutes 1 2 5

# The docs site (mkdocs.yml, docs/; reference pages generated by docs/hooks/generate.py) into site/; any warning fails.
.PHONY: docs
docs: venv
	$(BIN)/mkdocs build --strict --site-dir $(CURDIR)/site

# `services clean`: run as root, the Postgres data directory lives under /var/lib/churn-pg, outside the state folder.
clean: stop
	@test ! -x $(BIN)/python || $(BIN)/python -m churn.dev.services clean
	rm -rf $(CHURN_STATE_DIR)
