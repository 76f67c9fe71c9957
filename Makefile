# make demo: run the product end to end on the built-in Bitbucket sandbox.
# make test: lint (ruff, with the layering rules), types (mypy --strict), the whole pytest suite.
# make test-fast: the fast tier of the suite alone (no browser, wheel, demo, subprocess-heavy tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
# Installs come from the lock files in requirements/ (pinned versions, resolved for every platform
# and Python >= 3.11). uv installs them; it is itself pinned in requirements/bootstrap.lock and
# installed with the venv's pip, so the machine's pip configuration still applies to that step.
export UV_LINK_MODE ?= copy
export UV_NO_PROGRESS ?= 1
LOCK_FLAGS := --universal --python-version 3.11 --custom-compile-command "make lock" --quiet $(if $(UPGRADE),--upgrade)
PORT ?=

.PHONY: demo test test-fast lint types pytest bench clean install browser postgres lock screenshots

$(UV): requirements/bootstrap.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements/bootstrap.lock
	touch $(UV)

# The project itself is installed editable; every dependency comes pinned from the lock.
$(STAMP): pyproject.toml requirements/dev.lock $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -r requirements/dev.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# make lock: add what pyproject.toml gained, keep every other pin.
# make lock UPGRADE=1: move every pin to the newest release pyproject.toml allows.
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/dev.lock
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/prod.lock

demo: $(STAMP)
	$(BIN)/lowerplane-bitbucket demo $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench

types: $(STAMP)
	$(BIN)/mypy app

# The dashboard tests drive Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the dashboard tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The tests run on SQLite and on PostgreSQL: a throwaway cluster (initdb in a temporary folder,
# tests/pgcluster.py) of Debian's postgresql, installed here where it is missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the tests on the second store"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# The suite spends most of its time waiting on loopback servers and subprocesses, so it runs on
# JOBS workers (pytest-xdist) even on 2 cores. JOBS=0 runs it in one process.
JOBS ?= 4
pytest: $(STAMP) browser postgres
	$(BIN)/pytest -q -p no:cacheprovider -n $(JOBS)

test: lint types pytest

# The tests marked slow (tests/conftest.py SLOW_FILES) are left out; `make test` runs them all.
test-fast: $(STAMP) postgres
	$(BIN)/pytest -q -p no:cacheprovider -n $(JOBS) -m "not slow"

# Retake the README's screenshots (docs/screenshots); a plain test run writes them to a tmp folder.
screenshots: $(STAMP) browser
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/web/test_dashboard.py -k end_to_end
	UPDATE_SCREENSHOTS=1 $(BIN)/pytest -q -p no:cacheprovider tests/web/test_pass_progress.py

bench: $(STAMP)
	$(BIN)/python bench/full_read.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/api_economy.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/scaleout.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
