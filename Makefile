# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test quick lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

PY_DIRS := $(wildcard src tests benchmarks examples)

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

# While working: lint and the tests that take no seconds each (not the process-killing
# ones marked slow, which `make test` runs).
quick: lint
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/fleet.py
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/requests.py

clean:
	-$(BIN)/python examples/demo.py --stop 2>/dev/null
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
