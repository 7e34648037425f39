# The two commands of the quick start: `make demo` and `make test`. Both set up .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.8
# Spark's s3a jars for an S3 warehouse (hadoop-aws 3.3.1 + AWS SDK bundle, the only installable
# copy). The package pins pyspark 3.3: it goes without dependencies into a folder of its own,
# outside site-packages, where lambda_arch.runtime.spark.s3a_jars() finds it (see pyproject.toml).
S3A_JARS := sagemaker-pyspark==1.4.5

.PHONY: demo test test-fast install lint format check-python check-java chromium postgres clean

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "lambda-arch needs Python 3.11 or 3.12 as '$(PYTHON)' (set PYTHON=/path/to/python3.11)"; exit 1; }

$(BIN)/python: | check-python
	$(PYTHON) -m venv $(VENV)

# uv installs the pinned set about twice as fast as pip; --compile-bytecode keeps imports fast
# where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --target $(VENV)/s3a-jars $(S3A_JARS)
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

check-java: install
	@$(BIN)/python -m lambda_arch.runtime.java

# Debian's Chromium for the browser test of the Dagster UI (tests/ui), which Playwright drives
# (never `playwright install`). Installed only when missing (about 25 s, needs root); the package
# lists are refreshed only when the first try fails.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

chromium: $(CHROMIUM)

# Debian's PostgreSQL server (the scale-out tests start a cluster of their own from its binaries;
# the machine's cluster is never used) and its JDBC driver for a Hive metastore on PostgreSQL
# (LAMBDA_ARCH_METASTORE_URL). Installed only when missing, like Chromium.
PG_BIN := /usr/lib/postgresql/15/bin/pg_ctl
PG_JDBC := /usr/share/java/postgresql.jar

$(PG_BIN) $(PG_JDBC):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql libpostgresql-jdbc-java || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql libpostgresql-jdbc-java; }

postgres: $(PG_BIN) $(PG_JDBC)

# The demo keeps the counts query (landing and every count view) running as a continuous query
# (10-minute runs, a micro-batch every 2 s): answers seconds behind the topic. LAMBDA_ARCH_SPEED_STREAM_S=0 turns
# that off (availableNow speed runs only, as everywhere else by default).
demo: install check-java
	LAMBDA_ARCH_SPEED_STREAM_S=$${LAMBDA_ARCH_SPEED_STREAM_S:-600} $(BIN)/lambda-arch up

# The import boundaries (core without Dagster, no import cycles) are a test of their own, under a
# second: part of lint so an edit that breaks them fails before any JVM starts.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --no-header -p no:cacheprovider tests/test_architecture.py

# Two test processes (pytest-xdist; a file's tests stay in one process, so module fixtures are
# shared as before): most of the wall time is waiting on stacks, sensor ticks and brokers.
# tests/conftest.py schedules the files in lanes (tests/xdist_lanes.py).
test: install check-java chromium postgres lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The edit loop: every test that needs neither a JVM nor a broker (marks set in tests/conftest.py),
# about a minute. `make test` stays the whole suite.
test-fast: install
	$(BIN)/python -m pytest -m "not jvm and not broker"

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Regenerate the lock after changing pyproject.toml dependencies.
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .lambda-arch .pytest_cache
