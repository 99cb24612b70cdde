# Two commands: `make demo` (set up and run the main job) and `make test` (set up, lint, test).
#
# Set-up is uv's: the development environment (.venv) is exactly what uv.lock says, for the
# project, every adapter under adapters/ and the example under examples/ (a uv workspace, all
# editable). `--locked` makes a uv.lock that no longer matches a pyproject.toml an error rather
# than a silent re-resolve: moving the lock is `make lock`, a change reviewed like any other.
# uv itself is pinned below and installed into .tools/ with the machine's own Python and pip.

PYTHON     ?= python3
UV_VERSION := 0.13.10
TOOLS      := .tools/uv-$(UV_VERSION)
UV         := $(TOOLS)/bin/uv
VENV       := .venv
BIN        := $(VENV)/bin
# Pytest workers: the suite mostly waits on sockets, brokers and subprocesses, so twice the
# cores of CI's machine (measured: 150 s with 4, 235 s with 2, on 2 cores);
# `make test PYTEST_WORKERS=0` runs in-process.
PYTEST_WORKERS ?= 4

# Never download a Python: use the one the machine has (3.11 or newer), or fail saying so.
export UV_PYTHON_DOWNLOADS := never
# The lock is used as written: uv never moves it on its own.
SYNC := $(UV) sync --locked --all-packages --all-extras --python $(PYTHON)

.PHONY: demo test lint typecheck pytest bench install lock upgrade clean

$(UV):
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

# Cheap when nothing changed (uv compares the environment with the lock), so it runs every time:
# an environment someone changed by hand is put back to what the lock says.
install: $(UV)
	@$(SYNC) || { echo >&2; echo "uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock" >&2; exit 1; }

demo: install
	$(BIN)/sds-plugins demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy sds_plugins $(wildcard adapters/*/sds_plugins_*) $(wildcard examples/*/)

pytest: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

test: lint typecheck pytest

# Move every locked version to the newest the ranges allow, then prove the suite still passes.
lock: $(UV)
	$(UV) lock --upgrade
	$(MAKE) test

upgrade: lock

bench: install
	$(BIN)/python bench/lookups.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/warm_path.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/patients.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache .import_linter_cache
