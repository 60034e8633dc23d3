# workflow-audit — the two commands users need are `make demo` and `make test`.
#
# Airflow 3.3 and Prefect 3.9 pin disjoint fastapi ranges, so the project keeps two
# virtualenvs; the core's tests run in both. Each venv is rebuilt only when pyproject.toml
# changes (a stamp file records the last install).

PYTHON ?= python3
AIRFLOW_VENV := .venv-airflow
PREFECT_VENV := .venv-prefect
# Extras each venv installs; the adapters add theirs (airflow, prefect) here.
AIRFLOW_EXTRAS := dev,airflow,airflow-fab,otlp,s3,postgres,web,evidence
PREFECT_EXTRAS := dev,prefect,postgres,otlp,web,evidence
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: all demo test test-airflow test-prefect test-packages lint bench venvs clean screenshots
all: test

$(AIRFLOW_VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -e '.[$(AIRFLOW_EXTRAS)]'
	touch $@

$(PREFECT_VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(PREFECT_VENV)
	$(PREFECT_VENV)/bin/python -m pip install -q --upgrade pip
	$(PREFECT_VENV)/bin/python -m pip install -q -e '.[$(PREFECT_EXTRAS)]'
	touch $@

venvs: $(AIRFLOW_VENV)/.stamp $(PREFECT_VENV)/.stamp

## demo: run the example DAGs with `airflow dags test` in a throw-away AIRFLOW_HOME and the
## example flows in a throw-away PREFECT_HOME (.demo/), each on its own chain of one ledger,
## then checkpoint, verify, health, report, prove one record, catch a tampered copy, and make and
## check an evidence pack (~1.5 min; WeasyPrint's pango and DejaVu fonts apt-installed if missing).
demo: $(AIRFLOW_VENV)/.stamp $(PREFECT_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/python -c "import testkit.pdf as f; f.ensure_packages(tools=False)"
	$(AIRFLOW_VENV)/bin/python scripts/demo.py

## screenshots: the audit trail inside Airflow's UI, light and dark, into docs/screenshots/
## (a throw-away Airflow home, runs of the example DAGs, headless Debian Chromium; ~1 min).
screenshots: $(AIRFLOW_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/python scripts/screenshots.py

## test: lint, install the Debian packages the tests use, then each virtualenv's suite (the core
## tests in both). Run side by side on 2 cores they took as long in all (25 min) and contend.
test: lint test-packages test-airflow test-prefect

## test-packages: PostgreSQL 15 + pgaudit, chromium + chromium-driver, and poppler-utils with
## WeasyPrint's pango, harfbuzz-subset and DejaVu fonts (apt, as root, when missing), once,
## before the suites (a suite that starts a server installs nothing itself then).
test-packages: $(AIRFLOW_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/python -c "import testkit.postgres as p, testkit.browser as b, testkit.pdf as f; p.ensure_packages(); b.ensure_packages(); f.ensure_packages()"

test-airflow: $(AIRFLOW_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/python -m pytest tests/core tests/airflow tests/shipping tests/postgres audit_core airflow_audit testkit --doctest-modules --durations=15 $(PYTEST_ARGS)

test-prefect: $(PREFECT_VENV)/.stamp
	$(PREFECT_VENV)/bin/python -m pytest tests/core tests/prefect audit_core prefect_audit --doctest-modules --durations=15 $(PYTEST_ARGS)

# mypy checks each adapter in the venv that has its orchestrator.
lint: $(AIRFLOW_VENV)/.stamp $(PREFECT_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/ruff check .
	$(AIRFLOW_VENV)/bin/ruff format --check .
	$(AIRFLOW_VENV)/bin/mypy --strict audit_core airflow_audit
	$(PREFECT_VENV)/bin/mypy --strict prefect_audit

## bench: print the numbers in BENCHMARKS.md (core, then Merkle tree and checkpoints).
bench: $(AIRFLOW_VENV)/.stamp $(PREFECT_VENV)/.stamp
	$(AIRFLOW_VENV)/bin/python bench/bench_core.py
	$(AIRFLOW_VENV)/bin/python bench/bench_merkle.py
	$(AIRFLOW_VENV)/bin/python bench/bench_anchor.py
	$(AIRFLOW_VENV)/bin/python bench/bench_parallel.py
	$(AIRFLOW_VENV)/bin/python bench/bench_airflow.py
	$(AIRFLOW_VENV)/bin/python bench/bench_ship_otlp.py
	$(AIRFLOW_VENV)/bin/python bench/bench_ship_s3.py
	$(AIRFLOW_VENV)/bin/python bench/bench_postgres.py
	$(AIRFLOW_VENV)/bin/python bench/bench_witness.py
	$(AIRFLOW_VENV)/bin/python bench/bench_ingest.py
	$(AIRFLOW_VENV)/bin/python bench/bench_eventlog.py
	$(AIRFLOW_VENV)/bin/python bench/bench_access.py
	$(AIRFLOW_VENV)/bin/python bench/bench_keys.py
	$(AIRFLOW_VENV)/bin/python bench/bench_index.py
	$(AIRFLOW_VENV)/bin/python bench/bench_ui.py --postgres
	$(AIRFLOW_VENV)/bin/python bench/bench_evidence.py
	$(AIRFLOW_VENV)/bin/python bench/bench_model.py
	$(AIRFLOW_VENV)/bin/python bench/bench_privacy.py
	$(PREFECT_VENV)/bin/python bench/bench_prefect_overhead.py
	$(PREFECT_VENV)/bin/python bench/bench_follow.py

clean:
	rm -rf $(AIRFLOW_VENV) $(PREFECT_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
