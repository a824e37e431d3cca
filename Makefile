# The two commands a fresh machine needs:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit bench setup clean-demo

# A virtual environment with the project (editable) and its test extras; redone when setup.cfg changes.
$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# Render the bundled example on the embedded defaults (built-in model, embedded storage).
demo: setup
	$(BIN)/python -m daemon.demo

test: setup lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy daemon

unit: setup
	$(BIN)/pytest -q tests/unit

bench: setup
	$(BIN)/lipsyncd bench

clean-demo:
	rm -rf outputs state inbox/done inbox/failed inbox/.claimed inbox/media
