# Everything bootstraps itself: a virtual environment in .venv with what each
# target needs. Only python3 (>= 3.11) with venv is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: run test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[test]'
	touch $@

## make run [ARGS="--port 9000 --app echo"]: start the chat server on 127.0.0.1:8080
run: $(VENV)/.runtime
	$(BIN)/python -m wsnet $(ARGS)

## make test: lint, type-check, then the whole test suite
test: lint typecheck unit

lint: $(VENV)/.test
	$(BIN)/ruff check wsnet tests

typecheck: $(VENV)/.test
	$(BIN)/mypy wsnet

unit: $(VENV)/.test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
