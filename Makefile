# The two commands a fresh machine needs:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit bench setup setup-demo setup-test system-packages clean-demo

# Two stamps, so each command installs only what it needs, and each is redone when setup.cfg changes:
# the daemon alone for the demo (`pip install -e .`), then the test extras on top (torch, linters, ...).
# Going from a demo venv to `make test` finds no test stamp and installs the extras.
$(BIN)/.installed-daemon: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-daemon setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup-demo: $(BIN)/.installed-daemon
setup-test: $(BIN)/.installed-test
setup: setup-test

# Debian packages the tests drive for real: a headless browser for the links page, a reverse proxy in
# front of the storage, PostgreSQL for the shared ledger (tests/postgres.py starts a throwaway cluster).
# Installed only when missing (apt-get as root, else through sudo).
TEST_DEB_PACKAGES := chromium nginx-light postgresql
system-packages:
	@missing=$$(for p in $(TEST_DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:" $$missing; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Render the bundled example on the embedded defaults (built-in model, embedded storage).
demo: setup-demo
	$(BIN)/python -m daemon.demo

# Unit and functional tests are CPU-bound and share no fixed port or path: TEST_WORKERS processes run
# them, one test file per process at a time (module fixtures are made once; test_journald's journald is
# started by one process only). The end-to-end tests time real daemons and run alone, after them.
# PYTEST_ARGS set: one plain run of what it names, as before.
TEST_WORKERS ?= 2
test: setup-test system-packages lint
ifeq ($(strip $(PYTEST_ARGS)),)
	failed=0; \
	$(BIN)/pytest -q -ra -n $(TEST_WORKERS) --dist loadfile tests/unit tests/functional || failed=1; \
	$(BIN)/pytest -q -ra tests/e2e || failed=1; \
	exit $$failed
else
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)
endif

lint: setup-test
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy daemon tests

unit: setup-test
	$(BIN)/pytest -q tests/unit

bench: setup-test system-packages
	$(BIN)/lipsyncd bench

clean-demo:
	rm -rf outputs state inbox/done inbox/failed inbox/.claimed inbox/media
