# Two commands: `make demo` (set up and run the main job) and `make test` (set up, lint, test).
# Both create .venv and install the project plus every adapter under adapters/ in editable mode.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ADAPTERS := $(sort $(dir $(wildcard adapters/*/pyproject.toml)))
EXAMPLES := $(sort $(dir $(wildcard examples/*/pyproject.toml)))

.PHONY: demo test lint typecheck pytest bench install clean

$(STAMP): pyproject.toml $(wildcard adapters/*/pyproject.toml) $(wildcard examples/*/pyproject.toml)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]' \
		$(foreach adapter,$(ADAPTERS),-e '$(adapter)[test]') $(foreach example,$(EXAMPLES),-e $(example))
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sds-plugins demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy sds_plugins $(wildcard adapters/*/sds_plugins_*) $(EXAMPLES)

pytest: install
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/lookups.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/warm_path.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/patients.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
