# The two set-up commands: `make run` (the stack on 127.0.0.1:8000) and `make test` (the whole test suite).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test test-fast install data bench clean

run:
	bash scripts/run.sh

test: install
	bash scripts/test.sh

test-fast: install
	bash scripts/test.sh -m "not slow"

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip "setuptools>=70.1" wheel
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

data: install
	bash scripts/make_data.sh

bench: install data
	$(VENV)/bin/python benchmarks/bench.py

clean:
	rm -rf var build dist *.egg-info test-artifacts
