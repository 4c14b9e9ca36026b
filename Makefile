# The two set-up commands: `make run` (the stack on 127.0.0.1:8000) and `make test` (the whole test suite).
# Both need Python >= 3.11 (PYTHON=python3.11 to pick one); scripts/venv.sh checks it before making .venv.
VENV ?= .venv
PYTHON ?= python3
export VENV PYTHON

.PHONY: run test test-fast install install-run data bench clean clean-data

# installs only what running needs (`pip install -e .`), then runs the stack in the foreground
run:
	bash scripts/run.sh

# installs the test tools too (`pip install -e '.[dev]'`) and, as root, the system packages some
# tests need (scripts/system-deps.sh says which; INGEST_SKIP_SYSTEM_DEPS=1 skips them)
test: install
	bash scripts/test.sh

# the tests that need no daemon, server, emulator or child process (about 20 s on 2 cores)
test-fast: install
	bash scripts/test.sh -m "not slow"

install:
	bash scripts/venv.sh dev

install-run:
	bash scripts/venv.sh run

data: install
	bash scripts/make_data.sh

bench: install data
	$(VENV)/bin/python benchmarks/bench.py

# build and test artifacts only; your keys and data in var/ stay (see clean-data)
clean:
	rm -rf build dist *.egg-info test-artifacts .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# deletes var/: the API keys, the authkey, the SQLite store with every count, the journal, the logs
clean-data:
	@if [ -e var ]; then echo "clean-data: deleting var/ (API keys, authkey, store var/ingest.db, journal, logs)"; rm -rf var; \
	else echo "clean-data: no var/ here"; fi
