# make run   create .venv, install, run the default MPSL simulation (NODES, RUN_CONFIG)
# make test  same set-up, then the test suite, ruff check, ruff format --check and mypy
# make system-deps  nginx (mpsl-deploy's Fleet proxy) from the distribution, if missing
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NODES ?= 10
RUN_CONFIG ?=
FLWR_HOME ?= $(CURDIR)/.flwr-home
PYTEST_ARGS ?=

.PHONY: install system-deps run test lint clean

install: system-deps $(VENV)/.installed

# mpsl-deploy puts nginx in front of the SuperLink (docs/deployment.md); its tests need it.
# apt-get needs root: CI runs as root; elsewhere install nginx yourself or run this with sudo.
system-deps:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		(apt-get update && apt-get install -y --no-install-recommends nginx)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(PY) -m mpsl_flwr.cli run --nodes $(NODES) --run-config "$(RUN_CONFIG)" --flwr-home "$(FLWR_HOME)"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) lint

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy mpsl_flwr strategies clients

clean:
	rm -rf $(VENV) .flwr-home .pytest_cache .ruff_cache .mypy_cache
