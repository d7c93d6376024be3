# The single entry point. Every target bootstraps .venv on first use, so a
# fresh clone needs nothing but Python >= 3.11 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=
# Test processes for `make test` (pytest-xdist; `auto`: two per core, tests/conftest.py). Each has its
# own embedded Postgres and migrated template; the secret-leak check joins every process's logbook at the end.
TEST_JOBS ?= auto
BENCH_STORE_ARGS ?=
COMPARE_ARGS ?=
MINUTES ?=
SOAK ?=
CHAOS_ARGS ?=

.PHONY: help venv pgbouncer run demo test test-unit test-integration test-migration-1m chaos lint fmt bench bench-quick bench-compare bench-store bench-word-search bench-scale bench-receiver schema-doc clean

help:
	@echo "make run               run the demo: simulator + embedded Postgres, one sync pass"
	@echo "make test              run the whole test suite (unit + integration, embedded Postgres; TEST_JOBS=auto"
	@echo "                       processes, TEST_JOBS=0 for one)"
	@echo "make test-unit         tests without a database"
	@echo "make test-integration  database tests (SYNC_TEST_DATABASE_URL=... for another server)"
	@echo "make test-migration-1m migration 0006 in place on 1,000,000 v1 rows, timed (JSON line)"
	@echo "make chaos             seeded fault schedules against the worker, invariants I1-I5 (CI mode:"
	@echo "                       200 schedules, <= 4 min; MINUTES=N: long mode, I5; SOAK=N: soak mode, daemon +"
	@echo "                       receiver for N minutes, figures and chart in docs/images; docs/testing.md)"
	@echo "make lint              ruff + mypy --strict on sync_worker/, tests/ and bench/"
	@echo "make bench             full benchmark run, results in bench/README.md"
	@echo "make bench-quick       a short benchmark run for development"
	@echo "make bench-compare     issue 14 before (9cc31ed) / after in one run, every side a whole process"
	@echo "                       (~15 min; COMPARE_ARGS=--quick for ~3 min, --baseline REV, --only STEP)"
	@echo "make schema-doc        regenerate docs/schema.md's tables and query plans from a migrated database"
	@echo "make bench-store       history store before (v1) / after (v2): bytes, Postgres CPU, 30M rows"
	@echo "                       (BENCH_STORE_ARGS=--quick for a short run)"
	@echo "make bench-word-search the opt-in word-search index: bytes/message, insert CPU (~5 min; WORD_SEARCH_ARGS=...)"
	@echo "make bench-scale       replicas sharing 1,000 accounts, one killed halfway (~4 min; SCALE_ARGS=...)"
	@echo "make bench-receiver    the callback receiver under wrk: plain, beside 1,000 stalled clients, a held"
	@echo "                       lock (~2 min; results in bench/README.md; RECEIVER_ARGS=..., installs wrk)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

venv: $(STAMP)

# promtool (tests/unit/test_alert_rules.py evaluates deploy/prometheus/alerts.yml with it): the one on
# the PATH, else the binary alone from Debian's `prometheus` package (apt-get download, no root, no
# Prometheus server installed or started). Best effort: without it that test skips and says so.
PROMTOOL := $(BIN)/promtool
$(PROMTOOL): | $(STAMP)
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; else \
		tmp=$$(mktemp -d) && \
		(cd $$tmp && apt-get download prometheus >/dev/null 2>&1) && \
		dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb | tar -x -C $$tmp ./usr/bin/promtool && \
		cp $$tmp/usr/bin/promtool $@; rm -rf $$tmp; \
		test -x $@ || echo "promtool unavailable (apt-get download prometheus failed): the alert rule tests will skip"; \
	fi

# PgBouncer from Debian's packages, for tests/integration/test_pgbouncer.py and `chaos --pgbouncer`
# (tests/fixtures/pgbouncer.py starts its own processes; the package's service is not used). Best
# effort, like promtool: a fresh clone needs only Python and make, and without PgBouncer (no apt-get,
# not root) those tests skip and say so.
pgbouncer:
	@command -v pgbouncer >/dev/null || apt-get install -y pgbouncer || \
		echo "pgbouncer unavailable (apt-get install pgbouncer failed): the PgBouncer tests will skip"

run demo: $(STAMP)
	$(BIN)/sync-worker demo

# Bytecode caches on even where the shell turns them off: the suite starts many Python processes
# (xdist workers, `python -m sync_worker` subprocesses), and without caches each one compiles the
# package and rewrites every test module's asserts again. worksteal: an idle process takes queued
# tests from a busy one, so a long test near the end leaves no tail.
test: $(STAMP) $(PROMTOOL) pgbouncer
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

test-unit: $(STAMP) $(PROMTOOL)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) pgbouncer
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The in-place migration test at the size the issue names; prints (and appends to
# MIGRATION_REPORT) one JSON line with the migration's time per million rows.
MIGRATION_REPORT ?= bench/results/migration-1m.jsonl
test-migration-1m: $(STAMP)
	SYNC_TEST_MIGRATION_ROWS=1000000 SYNC_TEST_MIGRATION_REPORT=$(MIGRATION_REPORT) \
		$(BIN)/python -m pytest tests/integration/test_migration_v2.py -s -k resumes --timeout=3600 $(PYTEST_ARGS)

# The chaos machine (tests/chaos): CI mode by default; MINUTES=60 for a long run (with a daemon and a
# receiver beside the schedules for I5); SOAK=60 for the soak mode (daemon + receiver under a slow
# schedule; its chart needs matplotlib, from the bench extra); CHAOS_ARGS for anything else (--seed S
# to replay, --schedule FILE, --jobs N; python -m tests.chaos --help).
chaos: $(STAMP) pgbouncer $(if $(SOAK),$(BENCH_STAMP))
	$(BIN)/python -m tests.chaos $(if $(MINUTES),--minutes $(MINUTES)) $(if $(SOAK),--soak $(SOAK)) $(CHAOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sync_worker tests bench
	$(BIN)/ruff format --check sync_worker tests bench
	$(BIN)/mypy sync_worker tests bench

fmt: $(STAMP)
	$(BIN)/ruff format sync_worker tests bench
	$(BIN)/ruff check --fix sync_worker tests bench

schema-doc: $(STAMP)
	SYNC_WRITE_SCHEMA_DOC=1 $(BIN)/python -m pytest -q tests/integration/test_schema_doc.py tests/integration/test_analyst_queries.py

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --quick

bench-compare: $(BENCH_STAMP)
	$(BIN)/python -m bench.compare $(COMPARE_ARGS)

bench-store: $(BENCH_STAMP)
	$(BIN)/python -m bench.history_store $(BENCH_STORE_ARGS)

bench-word-search: $(BENCH_STAMP)
	$(BIN)/python -m bench.word_search $(WORD_SEARCH_ARGS)

# SCALE_ARGS="--accounts 10000 --interval 120 ..." scales it (python -m bench.scale --help).
bench-scale: $(BENCH_STAMP)
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# wrk comes from Debian's packages. SYNC_BENCH_DATABASE_URL=postgresql://... measures against that
# server (e.g. the PostgreSQL 15 service) instead of the embedded one.
RECEIVER_ARGS ?= --readme
bench-receiver: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y wrk
	$(BIN)/python -m bench.receiver $(RECEIVER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
