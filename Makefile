# Herald: `make run` starts everything on SQLite and an embedded broker; `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run install migrate test ci lint format services-up services-down test-services clean bench bench-postgres

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Herald needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py setup_schedules

run: migrate
	$(BIN)/python manage.py seed_demo --if-empty
	$(BIN)/python manage.py ensure_dev_superuser --if-debug
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

# Fast suite: SQLite, embedded broker, no servers. Tests that need PostgreSQL, Redis or a
# browser are deselected here (not skipped) and run by `make ci`.
test: install
	$(BIN)/pytest -q -m "not postgres and not redis and not browser"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The marked tests against a real PostgreSQL 15, Redis and Debian's chromium, started in a
# temporary folder by .ci/services.sh and stopped afterwards, pass or fail; and the
# engine's fast tests again on PostgreSQL, whose claims, pacing and bulk writes take
# their own SQL there (both run; either failing fails the target).
ENGINE_TESTS := tests/notifications tests/triggers tests/cadence tests/production_runs tests/kiosks
test-services: install
	.ci/services.sh install
	@set -e; eval "$$(.ci/services.sh start)"; \
	trap '.ci/services.sh stop' EXIT; \
	case "$$DATABASE_URL" in postgres://*) ;; *) echo "services did not start" >&2; exit 1;; esac; \
	failed=0; \
	$(BIN)/pytest -q -m "postgres or redis or browser" || failed=1; \
	$(BIN)/pytest -q -m "not postgres and not redis and not browser" $(ENGINE_TESTS) || failed=1; \
	exit $$failed

ci: lint test test-services

# Benchmarks (issue 10): the seven workloads against their baselines, side by side, on a
# throw-away SQLite file; prints the figures and writes bench/results.json. The bench extra
# (django-post-office, the baseline of workloads 1 and 2) is installed here only.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# The same on a throw-away PostgreSQL, with Redis for workload 3's Celery workers.
bench-postgres: $(BENCH_STAMP)
	.ci/services.sh install
	@set -e; eval "$$(.ci/services.sh start)"; \
	trap '.ci/services.sh stop' EXIT; \
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var test-artifacts
