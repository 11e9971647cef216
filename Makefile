# Everything bootstraps itself: a virtual environment in .venv with what each
# target needs. Only python3 (>= 3.11) with venv is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
ARGS   ?=

.PHONY: run test lint typecheck unit clean bench bench-quick browser redis nginx

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv \
		&& $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

## make run [ARGS="--port 9000 --app echo"]: start the chat server on 127.0.0.1:8080
run: $(VENV)/.runtime
	$(BIN)/python -m wsnet $(ARGS)

## make test: lint, type-check, then the whole test suite
test: lint typecheck unit

lint: $(VENV)/.test
	$(BIN)/ruff check wsnet tests bench

typecheck: $(VENV)/.test
	$(BIN)/mypy wsnet tests bench

# The browser test drives Debian's Chromium (Playwright's own browser download is
# neither needed nor possible here). Installing it needs root, as apt-get does.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Tests of the Redis backplane and of --workers, and the benchmark's scale scenario,
# start their own redis-server (a throwaway one each, on a free port, nothing
# written to disk).
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

# The reverse-proxy tests run Debian's nginx in front of the server (started by
# the test on a free port, with contrib/nginx.conf).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }

unit: $(VENV)/.test browser redis nginx
	$(BIN)/python -m pytest -q

## make bench [ARGS="--servers wsnet,websockets --scenarios idle"]: the full benchmark
## (wsnet and its peers, every scenario; tens of minutes; results in bench/results/)
bench: $(VENV)/.bench redis
	$(BIN)/python bench/run.py $(ARGS)

## make bench-quick: every scenario at small scale (under 2 minutes), a smoke check
bench-quick: $(VENV)/.bench redis
	$(BIN)/python bench/run.py --quick $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
