#!/usr/bin/env bash
# Build the distribution: one ingestiond wheel in dist/ (dependencies, the spaCy model
# included, are installed from PyPI on the VM). supervisord.conf is not in the wheel:
# bootstrap.sh and rollout.sh ship it next to the wheel.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [options]

Builds dist/ingestiond-VERSION-py3-none-any.whl from the repository (older ingestiond wheels
in the output directory are removed first, so "the newest wheel" is never ambiguous).

Options:
  --out DIR      output directory (default: dist/ in the repository)
  --python PY    interpreter whose pip builds the wheel (default: \$PYTHON, else the
                 repository's .venv/bin/python if there is one, else python3)
  --no-build-isolation
                 build with the setuptools already installed for PY (offline, faster)
  --dry-run      print every command instead of running it
  -h, --help     this text
EOF
}

OUT="$REPO_DIR/dist"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    PY=python3
    [[ -x "$REPO_DIR/.venv/bin/python" ]] && PY="$REPO_DIR/.venv/bin/python"
fi
PIP_FLAGS=()

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --out) need_arg "$@"; OUT="$2"; shift ;;
        --python) need_arg "$@"; PY="$2"; shift ;;
        --no-build-isolation) PIP_FLAGS+=(--no-build-isolation) ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

need_cmd "$PY"
run mkdir -p "$OUT"
run find "$OUT" -maxdepth 1 -name 'ingestiond-*.whl' -delete
run "$PY" -m pip wheel --no-deps "${PIP_FLAGS[@]+"${PIP_FLAGS[@]}"}" \
    --disable-pip-version-check -q -w "$OUT" "$REPO_DIR"
if [[ "$DRY_RUN" != 1 ]]; then
    wheel="$(find "$OUT" -maxdepth 1 -name 'ingestiond-*.whl' | head -n 1)"
    [[ -n "$wheel" ]] || die "pip did not produce an ingestiond wheel in $OUT"
    printf '%s\n' "$wheel"
fi
