#!/usr/bin/env bash
# Bootstrap a fresh VM: ship the wheel, supervisord.conf and the VM-side installer, then run
# deploy/vm-setup.sh install there as root (system packages, venv, env file, API keys,
# systemd unit), and wait until /readyz answers 200.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [target] (--api-keys-file PATH | --api-keys-secret NAME) [options]

Installs ingestiond on a VM made by create-vm.sh (or any Ubuntu/Debian host) and starts it
as the systemd service 'ingestiond' (supervisord with frontend and backend).

$TARGET_USAGE

API keys (one required; never kept in the repository):
  --api-keys-file PATH     local file, one key per line: copied over scp, installed 0600
  --api-keys-secret NAME   Secret Manager secret, read on the VM with its service account
  --secret-project ID      project of the secret (default: the VM's own project)

Options:
  --wheel PATH             the wheel to install (default: newest dist/ingestiond-*.whl)
  --supervisord-conf PATH  (default: supervisord.conf at the repository root)
  --store URL              INGEST_STORE (default: firestore://PROJECT of --project)
  --port N                 frontend port, bound on all interfaces (default 8000)
  --workers N              NER workers (default on the VM: cores - 1)
  --savers N               savers (default on the VM: cores / 4, 1 to 4)
  --frontend-workers N     gunicorn workers (default on the VM: cores / 4, 2 to 4)
  --env KEY=VALUE          extra setting for /etc/ingestiond/env (repeatable)
  --ready-timeout SECONDS  wait this long for /readyz (default 300)
  --dry-run                print every command instead of running it
  -h, --help               this text
EOF
}

WHEEL=""
SUPERVISORD_CONF="$REPO_DIR/supervisord.conf"
API_KEYS_FILE=""
API_KEYS_SECRET=""
SECRET_PROJECT=""
STORE=""
PORT=8000
READY_TIMEOUT=300
SETUP_ARGS=()

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
while (($#)); do
    target_option "$@"
    if ((TARGET_SHIFT)); then
        shift "$TARGET_SHIFT"
        continue
    fi
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --wheel) need_arg "$@"; WHEEL="$2"; shift ;;
        --supervisord-conf) need_arg "$@"; SUPERVISORD_CONF="$2"; shift ;;
        --api-keys-file) need_arg "$@"; API_KEYS_FILE="$2"; shift ;;
        --api-keys-secret) need_arg "$@"; API_KEYS_SECRET="$2"; shift ;;
        --secret-project) need_arg "$@"; SECRET_PROJECT="$2"; shift ;;
        --store) need_arg "$@"; STORE="$2"; shift ;;
        --port) need_arg "$@"; PORT="$2"; shift ;;
        --ready-timeout) need_arg "$@"; READY_TIMEOUT="$2"; shift ;;
        --workers | --savers | --frontend-workers)
            need_arg "$@"
            valid_positive_int "$2" || usage_error "$1 '$2' is not a positive integer"
            SETUP_ARGS+=("$1" "$2")
            shift
            ;;
        --env)
            need_arg "$@"
            [[ "$2" =~ ^[A-Z_][A-Z0-9_]*=.*$ ]] || usage_error "--env '$2' is not KEY=VALUE"
            SETUP_ARGS+=("$1" "$2")
            shift
            ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

check_target
[[ -n "$WHEEL" ]] || WHEEL="$(default_wheel)"
check_wheel "$WHEEL"
[[ -f "$SUPERVISORD_CONF" ]] || usage_error "supervisord.conf '$SUPERVISORD_CONF' does not exist"
if [[ -n "$API_KEYS_FILE" && -n "$API_KEYS_SECRET" ]]; then
    usage_error "give --api-keys-file or --api-keys-secret, not both"
elif [[ -n "$API_KEYS_FILE" ]]; then
    [[ -f "$API_KEYS_FILE" && -r "$API_KEYS_FILE" ]] || usage_error "--api-keys-file '$API_KEYS_FILE' is not a readable file"
    grep -q '^[^#[:space:]]' "$API_KEYS_FILE" || usage_error "--api-keys-file '$API_KEYS_FILE' holds no key"
elif [[ -n "$API_KEYS_SECRET" ]]; then
    [[ "$API_KEYS_SECRET" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || usage_error "--api-keys-secret '$API_KEYS_SECRET' is not a secret name"
else
    usage_error "API keys are required: --api-keys-file PATH or --api-keys-secret NAME"
fi
if [[ -z "$STORE" ]]; then
    [[ -n "$TARGET_PROJECT" ]] || usage_error "--store is required when no --project is given"
    STORE="firestore://$TARGET_PROJECT"
fi
[[ "$STORE" =~ ^(firestore(://[a-z][-a-z0-9:.]*)?|sqlite:///.+|none)$ ]] || usage_error "--store '$STORE' is not a store URL"
valid_port "$PORT" || usage_error "--port '$PORT' is not a port"
[[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--ready-timeout '$READY_TIMEOUT' is not a number of seconds"

log "bootstrapping $(target_name) with $(basename "$WHEEL"), store $STORE"

files=("$WHEEL" "$SUPERVISORD_CONF" "$DEPLOY_DIR/vm-setup.sh" "$DEPLOY_DIR/lib.sh" "$DEPLOY_DIR/ingestiond.service")
ship_stage "${files[@]}"

setup=(install
    --package "./$(basename "$WHEEL")"
    --supervisord-conf ./"$(basename "$SUPERVISORD_CONF")"
    --unit-template ./ingestiond.service
    --store "$STORE"
    --bind "0.0.0.0:$PORT"
    --ready-timeout "$READY_TIMEOUT")
if [[ -n "$API_KEYS_FILE" ]]; then
    # the keys travel as a file (never on a command line), already 0600 so scp creates the
    # remote copy 0600 too
    if [[ "$DRY_RUN" == 1 ]]; then
        keys_dir="${TMPDIR:-/tmp}/ingestiond-keys.XXXXXX"
    else
        keys_dir="$(mktemp -d "${TMPDIR:-/tmp}/ingestiond-keys.XXXXXX")"
        trap 'rm -rf "$keys_dir"' EXIT
    fi
    run install -m 0600 "$API_KEYS_FILE" "$keys_dir/api_keys"
    remote_copy "$keys_dir/api_keys" "$REMOTE_STAGE/"
    setup+=(--api-keys-file ./api_keys)
else
    setup+=(--api-keys-secret "$API_KEYS_SECRET")
    [[ -z "$SECRET_PROJECT" ]] || setup+=(--secret-project "$SECRET_PROJECT")
fi
setup+=("${SETUP_ARGS[@]+"${SETUP_ARGS[@]}"}")
remote_run "$(stage_command "${setup[@]}")"

finish "done: ingestiond runs on $(target_name), port $PORT (status: sudo systemctl status ingestiond)"
