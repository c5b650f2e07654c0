# engram: `make demo` shows the main job, `make test` runs the tests.
# Both set themselves up; only Python (>= 3.11), pip and make are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench completions man check clean

setup: $(STAMP)

# Reinstall only when the project metadata changed: `make setup` is cheap.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engram_cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engramd engram_cli tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/engram bench

completions: $(STAMP)
	$(BIN)/python -m engram_cli.docgen completions completions

man: $(STAMP)
	$(BIN)/python -m engram_cli.docgen man man

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
