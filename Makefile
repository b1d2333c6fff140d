# Every target creates .venv on first use and installs the project into it, so a fresh
# clone needs nothing but Python >= 3.11 and these commands.
# The first interpreter that really runs and is >= 3.11 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "gpumesh needs Python >= 3.11 (python3 on PATH)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	@# Compile the scheduler's numba kernel into its cache now, once: otherwise the first
	@# nodes of a fresh clone would each spend seconds compiling it while they start.
	$(PY) -c 'from consensus.market.chain_kernel import warm_up; warm_up()'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gpumesh demo

# One pytest worker per core (at most 4: the integration tests start swarms of real
# processes of their own); worksteal keeps the long tests from piling up on one worker.
# On CI's 2 cores this takes the suite from about 12 to about 8.5 minutes.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

bench: $(STAMP)
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b; done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check p2p node consensus sim_harness
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
