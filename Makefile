# engram: `make demo` shows the main job, `make test` runs the tests.
# Both set themselves up; only Python (>= 3.11), pip and make are needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP := --quiet --disable-pip-version-check
UV_VERSION := 0.13.9

.PHONY: setup demo cluster-demo screenshots test test-latest lock lint bench bench-install bench-compare completions man fasttable check clean

setup: $(STAMP)

# A fresh venv from the lock (exact versions, checked against their hashes)
# whenever the lock or the project metadata changed; otherwise instant.
# (PYTHONWARNINGS: setuptools warns about every editable install, to no purpose.)
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP) --require-hashes -r $(LOCK)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install $(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m engram_cli.bench.demo

# Two engram machines on a 3-node NATS JetStream cluster, all on loopback (cluster mode).
cluster-demo: $(STAMP)
	$(BIN)/python -m engram_cli.bench.clusterdemo

# Each view of the web console (engram gateway's /ui) at 1280x800, and Now at 390 px, into docs/screenshots/,
# from a throwaway daemon filled as the demo fills it; needs Debian's chromium.
screenshots: $(STAMP)
	$(BIN)/python -m tools.screenshots

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

# The suite against the newest releases pyproject.toml's ranges allow, in a venv
# of its own: the next upstream change shows up here before a user meets it.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install $(PIP) --upgrade pip
	PYTHONWARNINGS=ignore .venv-latest/bin/python -m pip install $(PIP) --upgrade \
		--upgrade-strategy eager -e '.[dev,mcp,http,semantic,cluster]'
	.venv-latest/bin/python -m pip list --format=freeze
	.venv-latest/bin/python -m pytest -q -n auto --maxprocesses 4

# Refresh requirements.lock to the newest versions the ranges allow (uv: fast,
# resolves for every platform and Python >= 3.11 at once, hashes every file), and
# deploy/requirements.lock, the container image's (run time, the gateway and cluster mode).
lock:
	test -x .venv-tools/bin/uv || { $(PYTHON) -m venv .venv-tools && \
		.venv-tools/bin/python -m pip install $(PIP) uv==$(UV_VERSION); }
	.venv-tools/bin/uv pip compile --quiet --upgrade --universal --python-version 3.11 \
		--generate-hashes --extra dev --extra mcp --extra http --extra semantic --extra cluster \
		--custom-compile-command 'make lock' \
		pyproject.toml requirements-build.in -o $(LOCK)
	.venv-tools/bin/uv pip compile --quiet --upgrade --universal --python-version 3.11 \
		--generate-hashes --extra http --extra cluster --custom-compile-command 'make lock' \
		pyproject.toml requirements-build.in -o deploy/requirements.lock

lint: $(STAMP)
	$(BIN)/ruff check engramd engram_cli tools tests
	$(BIN)/mypy

# The bench runs from a regular (non-editable) install of this tree in a venv of
# its own: an editable install's import hook adds its cost to every start of the
# CLI, which the CLI rows would count. BENCH_ARGS passes options (--only, --scale).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): $(LOCK)
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install $(PIP) --require-hashes -r $(LOCK)
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m pip install $(PIP) --no-deps --no-build-isolation \
		--force-reinstall .

bench: bench-install
	$(BENCH_VENV)/bin/engram bench $(BENCH_ARGS)

# The bench on REF (default: the last commit) and on this tree, back to back.
REF ?= HEAD
bench-compare: bench-install
	$(BENCH_VENV)/bin/engram bench --compare $(REF) $(BENCH_ARGS)

fasttable: $(STAMP)
	$(BIN)/python -m tools.docgen fast engram_cli/cli/fasttable.py

completions: $(STAMP)
	$(BIN)/python -m tools.docgen completions completions

man: $(STAMP)
	$(BIN)/python -m tools.docgen man man

check: lint test

clean:
	rm -rf $(VENV) .venv-latest .venv-tools $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
