#!/usr/bin/env bash
# Roll out a new build to a bootstrapped VM: drain (systemctl stop: supervisord sends TERM,
# the backend stores every accepted article and exits), install the new wheel, start, and
# wait until /readyz answers 200. Settings and API keys on the VM are left as they are.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [target] [options]

Installs a new ingestiond wheel on a VM set up by bootstrap.sh. POSTs are refused (503 or
connection refused) from the moment the drain starts until the new version is ready.

$TARGET_USAGE

Options:
  --wheel PATH             the wheel to install (default: newest dist/ingestiond-*.whl)
  --supervisord-conf PATH  (default: supervisord.conf at the repository root)
  --ready-timeout SECONDS  wait this long for /readyz after the start (default 300)
  --dry-run                print every command instead of running it
  -h, --help               this text
EOF
}

WHEEL=""
SUPERVISORD_CONF="$REPO_DIR/supervisord.conf"
READY_TIMEOUT=300

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
        --ready-timeout) need_arg "$@"; READY_TIMEOUT="$2"; shift ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

check_target
[[ -n "$WHEEL" ]] || WHEEL="$(default_wheel)"
check_wheel "$WHEEL"
[[ -f "$SUPERVISORD_CONF" ]] || usage_error "supervisord.conf '$SUPERVISORD_CONF' does not exist"
[[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--ready-timeout '$READY_TIMEOUT' is not a number of seconds"

log "rolling out $(basename "$WHEEL") to $(target_name)"
ship_stage "$WHEEL" "$SUPERVISORD_CONF" "$DEPLOY_DIR/vm-setup.sh" "$DEPLOY_DIR/lib.sh" "$DEPLOY_DIR/ingestiond.service"
remote_run "$(stage_command upgrade \
    --package "./$(basename "$WHEEL")" \
    --supervisord-conf ./"$(basename "$SUPERVISORD_CONF")" \
    --unit-template ./ingestiond.service \
    --ready-timeout "$READY_TIMEOUT")"
finish "done: $(basename "$WHEEL") is live on $(target_name)"
