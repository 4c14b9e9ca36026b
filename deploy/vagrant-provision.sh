#!/usr/bin/env bash
# Provision the Vagrant dev VM (runs inside it as root): install ingestiond from the synced
# checkout and run it under supervisord as the systemd service `ingestiond`, exactly as
# bootstrap.sh does on Compute Engine, with a SQLite store instead of Firestore and a random
# API key (sudo cat /etc/ingestiond/api_keys). Re-run with `vagrant provision` after changes.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--dry-run] [SOURCE_DIR]

SOURCE_DIR is the synced checkout (default /vagrant). Runs as root inside the VM.
USAGE
}

SRC=/vagrant
DRY=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY=(--dry-run) ;;
        -*) echo "$(basename "$0"): error: unknown option '$1'" >&2; usage >&2; exit 2 ;;
        *) SRC="$1" ;;
    esac
    shift
done
[[ -f "$SRC/setup.py" ]] || { echo "$(basename "$0"): error: no checkout at $SRC" >&2; exit 2; }

# Build from a copy: keeps pip's build files out of the host's tree, and the host's .venv,
# data and var out of the build.
copy=(tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./data
    --exclude=./dist --exclude=./build --exclude='*.egg-info' --exclude=./test-artifacts -cf - .)
if ((${#DRY[@]})); then
    BUILD=/tmp/ingestiond-src.XXXXXX
    printf '%q ' "${copy[@]}"
    printf '| tar -C %q -xf -\n' "$BUILD"
else
    BUILD="$(mktemp -d /tmp/ingestiond-src.XXXXXX)"
    trap 'rm -rf "$BUILD"' EXIT
    "${copy[@]}" | tar -C "$BUILD" -xf -
fi

bash "$SRC/deploy/vm-setup.sh" install "${DRY[@]+"${DRY[@]}"}" \
    --package "$BUILD" \
    --supervisord-conf "$SRC/supervisord.conf" \
    --unit-template "$SRC/deploy/ingestiond.service" \
    --store "sqlite:////var/lib/ingestiond/ingest.db" \
    --bind 0.0.0.0:8000 \
    --generate-api-key \
    --ready-timeout 600

echo "ingestiond is up: on the host, curl http://127.0.0.1:8000/readyz"
echo "API key: vagrant ssh -c 'sudo cat /etc/ingestiond/api_keys'"
