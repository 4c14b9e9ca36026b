#!/usr/bin/env bash
# shellcheck disable=SC2317  # stop_stack (and the say in it) runs from a trap
# `make run`: the whole stack in the foreground on http://127.0.0.1:8000 with the SQLite store.
# Creates .venv and installs the project if needed (scripts/venv.sh run: no test tools), creates an API key if there is none (and prints
# it with a curl example), then runs supervisord (backend + frontend) in the foreground.
# Ctrl-C: supervisord stops both programs; the backend drains, so every accepted article is stored.
# supervisord runs silently (its log is var/log/supervisord.log); scripts/stack_watch.py says on the
# terminal when the stack is ready, what supervisord did that matters, and the drain's progress.
# Whatever way this script ends, it stops supervisord first, and nothing outlives supervisord.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="${VENV:-$ROOT/.venv}"
[[ "$VENV" == /* ]] || VENV="$ROOT/$VENV"   # absolute: it goes on supervisord's PATH
PYTHON="${PYTHON:-python3}"

say() { printf 'run: %s\n' "$*" >&2; }
die() { printf 'run: error: %s\n' "$*" >&2; exit 1; }

# -- the virtualenv: Python >= 3.11 checked first; only what running needs (`make test` adds the test tools)
VENV="$VENV" PYTHON="$PYTHON" bash "$ROOT/scripts/venv.sh" run
export PATH="$VENV/bin:$PATH"

# -- settings: defaults for a laptop; anything already set wins ------------------------------
export INGEST_VAR_DIR="${INGEST_VAR_DIR:-$ROOT/var}"
mkdir -p "$INGEST_VAR_DIR"
INGEST_VAR_DIR="$(cd "$INGEST_VAR_DIR" && pwd)"   # absolute: the programs run from the repo root
export INGEST_LOG_DIR="${INGEST_LOG_DIR:-$INGEST_VAR_DIR/log}"
export INGEST_BIND="${INGEST_BIND:-127.0.0.1:8000}"
export INGEST_STORE="${INGEST_STORE:-sqlite:///$INGEST_VAR_DIR/ingest.db}"
cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
export INGEST_WORKERS="${INGEST_WORKERS:-$(( cores > 1 ? cores - 1 : 1 ))}"
export INGEST_SAVERS="${INGEST_SAVERS:-1}"
export INGEST_FRONTEND_WORKERS="${INGEST_FRONTEND_WORKERS:-2}"
export INGEST_MANAGER_ADDRESS="${INGEST_MANAGER_ADDRESS:-127.0.0.1:50000}"
export INGEST_API_KEYS_FILE="${INGEST_API_KEYS_FILE:-$INGEST_VAR_DIR/api_keys}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$INGEST_LOG_DIR"

# -- both ports must be free, or supervisord would respawn a program that cannot bind ----------
port_in_use() {
    "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex((host.strip("[]") or "127.0.0.1", int(port))) == 0 else 1)
PY
}
for address in "$INGEST_BIND" "$INGEST_MANAGER_ADDRESS"; do
    if port_in_use "$address"; then
        die "$address is already in use (another 'make run'?); stop it or set INGEST_BIND / INGEST_MANAGER_ADDRESS"
    fi
done

# -- an API key -------------------------------------------------------------------------
KEY=""
if [[ -n "${INGEST_API_KEYS:-}" ]]; then
    KEY="${INGEST_API_KEYS%%,*}"
    KEY_NOTE="from INGEST_API_KEYS"
elif [[ -s "$INGEST_API_KEYS_FILE" ]]; then
    KEY="$( (grep -v '^#' "$INGEST_API_KEYS_FILE" || true) | head -n 1 | tr -d '[:space:]')"
    KEY_NOTE="from $INGEST_API_KEYS_FILE"
fi
if [[ -z "$KEY" ]]; then
    KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    (umask 077 && printf '%s\n' "$KEY" > "$INGEST_API_KEYS_FILE")
    chmod 600 "$INGEST_API_KEYS_FILE"
    KEY_NOTE="new, written to $INGEST_API_KEYS_FILE (0600)"
fi

URL="http://$INGEST_BIND"
WORKERS_NOTE="$INGEST_WORKERS NER worker$( [[ "$INGEST_WORKERS" == 1 ]] || echo s)"
cat <<EOF

  ingestiond: $URL   (store $INGEST_STORE, $WORKERS_NOTE)
  API key ($KEY_NOTE):

      $KEY

  Try it once "run: ready at $URL" appears below (spaCy loads for a few seconds first):

      curl -s -X POST $URL/post/enqueue -H "X-API-Key: $KEY" \\
           -H 'Content-Type: application/json' \\
           -d '{"publication": "The Daily Planet", "content": "Lois Lane met Bruce Wayne in Metropolis."}'
      curl -s $URL/publications

  Dashboard: $URL/   Logs: $INGEST_LOG_DIR/{backend,frontend,supervisord}.log
  Ctrl-C stops both programs; the backend first stores every accepted article.

EOF

# supervisord runs as our child, so this script stops what it started on any way out: Ctrl-C,
# SIGTERM, a closed terminal. A pipe closed early (`make run | head -c 1`) must not kill this
# script before the stack is stopped; the programs themselves die with supervisord (PDEATHSIG).
trap '' PIPE
# -s: supervisord logs to its file only (its "CRIT Supervisor is running as root" and "running
# without any HTTP authentication checking" are about its own socket, 0700 in $INGEST_VAR_DIR).
supervisord -n -s -c "$ROOT/supervisord.conf" &
SUPERVISORD=$!
"$VENV/bin/python" "$ROOT/scripts/stack_watch.py" "$URL" "$INGEST_LOG_DIR" "$INGEST_MANAGER_ADDRESS" \
    "${INGEST_AUTHKEY_FILE:-$INGEST_VAR_DIR/authkey}" &
WATCH=$!
stop_watch() {
    kill -TERM "$WATCH" 2>/dev/null || true
    wait "$WATCH" 2>/dev/null || true
}
stop_stack() {
    trap '' INT TERM HUP
    kill -USR1 "$WATCH" 2>/dev/null || true   # show the drain's progress
    kill -TERM "$SUPERVISORD" 2>/dev/null || true
    wait "$SUPERVISORD"
    code=$?
    stop_watch   # after its last look at the logs
    if [[ $code -eq 0 ]]; then say "stopped"; else say "supervisord exited with $code; see $INGEST_LOG_DIR"; fi
}
trap 'stop_stack; exit' INT TERM HUP
set +e
wait "$SUPERVISORD"
code=$?
set -e
stop_watch
exit "$code"
