#!/usr/bin/env bash
# The test command behind `make test` (and CI): the linter, system packages, then pytest on the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# ruff (configured in pyproject.toml) first, with or without pytest arguments: a second, and a lint error fails the run
if ! .venv/bin/python -m ruff check .; then
    echo "test.sh: ruff check . failed (above): fix those lines (ruff check --fix . fixes some); no tests were run" >&2
    exit 1
fi
bash scripts/system-deps.sh
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
mkdir -p test-artifacts
if [ $# -eq 0 ]; then
    echo "test: the whole suite: real workers, servers, emulators, Chromium (about 13 minutes on 2 cores; make test-fast: the tests that need none)" >&2
fi
set +e
.venv/bin/python -m pytest -ra --durations=15 "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$code"
