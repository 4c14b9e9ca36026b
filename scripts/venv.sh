#!/usr/bin/env bash
# The project's virtualenv, for `make run` (scripts/run.sh) and `make test`:
#   scripts/venv.sh run   what running needs: `pip install -e .` (stamp $VENV/.installed)
#   scripts/venv.sh dev   and the test tools too: `pip install -e '.[dev]'` (stamp $VENV/.installed-dev)
# Python >= 3.11 is checked before anything is made; a venv made with an older (or a removed)
# Python is rebuilt. PYTHON (default python3) picks the interpreter, VENV (default .venv) the place.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"
NEED=3.11
what="${1:-run}"

say() { printf 'venv: %s\n' "$*" >&2; }
die() { printf 'venv: error: %s\n' "$*" >&2; exit 1; }

# "3.11" from an interpreter, or nothing if it does not run
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
at_least() { [[ "$(printf '%s\n%s\n' "$NEED" "$1" | sort -V | head -n 1)" == "$NEED" ]]; }

case "$what" in
    run) stamp="$VENV/.installed"; target="."
         note="the project and what running needs (spaCy and its English model, Flask, gunicorn, supervisord; a few minutes the first time)" ;;
    dev) stamp="$VENV/.installed-dev"; target=".[dev]"
         note="the test tools too (pytest, hypothesis, psutil, selenium, schemathesis; about a minute)" ;;
    *) die "usage: scripts/venv.sh run|dev" ;;
esac

if [[ -e "$VENV" ]]; then
    found="$(version_of "$VENV/bin/python")"
    if [[ -z "$found" ]]; then
        say "$VENV has no working python (made with a Python since removed?): rebuilding it"
        rm -rf "$VENV"
    elif ! at_least "$found"; then
        say "$VENV was made with Python $found; Python >= $NEED is needed: rebuilding it"
        rm -rf "$VENV"
    fi
fi
if [[ ! -e "$VENV" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: Python >= $NEED is needed (set PYTHON=python3.11)"
    found="$(version_of "$PYTHON")"
    [[ -n "$found" ]] || die "$PYTHON does not run"
    at_least "$found" || die "Python >= $NEED is needed; $PYTHON is Python $found (install python$NEED and set PYTHON=python$NEED)"
    say "creating $VENV with $PYTHON (Python $found)"
    "$PYTHON" -m venv "$VENV"
    rm -f "$VENV/.installed" "$VENV/.installed-dev"
fi

if [[ ! -f "$stamp" || setup.py -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    say "installing into $VENV: $note"
    "$VENV/bin/python" -m pip install --quiet --quiet --disable-pip-version-check --upgrade pip "setuptools>=70.1" wheel
    "$VENV/bin/python" -m pip install --quiet --quiet --disable-pip-version-check -e "$target"
    touch "$stamp"
    [[ "$what" == dev ]] && touch "$VENV/.installed"   # .[dev] includes everything running needs
fi
exit 0
