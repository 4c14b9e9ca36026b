#!/usr/bin/env bash
# Runs ON the target machine (a Compute Engine VM via bootstrap.sh/rollout.sh, or the Vagrant
# VM via vagrant-provision.sh), as root: installs ingestiond into a venv and runs it under
# supervisord as the systemd service `ingestiond`.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG COMMAND [options]

Runs on the VM as root. Commands:
  install      system packages, user 'ingest', venv, the package, supervisord.conf,
               /etc/ingestiond/env (0600), API keys, systemd unit; enable, start, wait for /readyz
  upgrade      drain (systemctl stop), install the package, start, wait for /readyz
  render-unit  print the systemd unit for these paths
  render-env   print the environment file for these settings
  wait-ready   poll /readyz until it answers 200

Options:
  --package PATH            wheel (ingestiond-*.whl) or source directory to pip install
  --supervisord-conf PATH   supervisord.conf to install (default: next to this script or its parent)
  --unit-template PATH      systemd unit template (default: ingestiond.service next to this script)
  --store URL               INGEST_STORE, e.g. firestore://PROJECT (install: required)
  --bind HOST:PORT          frontend address (default 0.0.0.0:8000)
  --cores N                 size for N cores (default: nproc)
  --workers N               NER worker processes (default: cores - 1)
  --savers N                saver processes (default: cores / 4, between 1 and 4)
  --frontend-workers N      gunicorn workers (default: cores / 4, between 2 and 4)
  --env KEY=VALUE           extra line for the environment file (repeatable)
  --api-keys-file PATH      install this file as the API key file (one key per line)
  --api-keys-secret NAME    read the API keys from Secret Manager (latest version) on this VM
  --secret-project ID       project of that secret (default: the VM's project)
  --generate-api-key        write a random key if there is no API key file yet (dev VMs)
  --ready-timeout SECONDS   how long to wait for /readyz (default 300; 0 = do not wait)
  --python PY               interpreter for the venv (default python3)
  --pip-arg ARG             extra pip argument (repeatable)
  --user NAME               service user (default ingest)
  --root DIR                install under DIR instead of / (tests)
  --skip-packages           do not apt-get install system packages
  --no-systemd              do not install the unit or call systemctl
  --dry-run                 print every command instead of running it
  -h, --help                this text
EOF
}

export PIP_ROOT_USER_ACTION=ignore  # root installing into its own venv is the point here

COMMAND=""
PACKAGE=""
SUPERVISORD_CONF=""
UNIT_TEMPLATE="$DEPLOY_DIR/ingestiond.service"
STORE=""
BIND="0.0.0.0:8000"
CORES=""
WORKERS=""
SAVERS=""
FRONTEND_WORKERS=""
EXTRA_ENV=()
API_KEYS_FILE=""
API_KEYS_SECRET=""
SECRET_PROJECT=""
GENERATE_API_KEY=0
READY_TIMEOUT=300
PYTHON="python3"
PIP_ARGS=()
SERVICE_USER="ingest"
ROOT=""
SKIP_PACKAGES=0
NO_SYSTEMD=0

parse_args() {
    split_equals "$@"
    set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
    while (($#)); do
        case "$1" in
            -h | --help) usage; exit 0 ;;
            --dry-run) DRY_RUN=1 ;;
            --package) need_arg "$@"; PACKAGE="$2"; shift ;;
            --supervisord-conf) need_arg "$@"; SUPERVISORD_CONF="$2"; shift ;;
            --unit-template) need_arg "$@"; UNIT_TEMPLATE="$2"; shift ;;
            --store) need_arg "$@"; STORE="$2"; shift ;;
            --bind) need_arg "$@"; BIND="$2"; shift ;;
            --cores) need_arg "$@"; CORES="$2"; shift ;;
            --workers) need_arg "$@"; WORKERS="$2"; shift ;;
            --savers) need_arg "$@"; SAVERS="$2"; shift ;;
            --frontend-workers) need_arg "$@"; FRONTEND_WORKERS="$2"; shift ;;
            --env) need_arg "$@"; EXTRA_ENV+=("$2"); shift ;;
            --api-keys-file) need_arg "$@"; API_KEYS_FILE="$2"; shift ;;
            --api-keys-secret) need_arg "$@"; API_KEYS_SECRET="$2"; shift ;;
            --secret-project) need_arg "$@"; SECRET_PROJECT="$2"; shift ;;
            --generate-api-key) GENERATE_API_KEY=1 ;;
            --ready-timeout) need_arg "$@"; READY_TIMEOUT="$2"; shift ;;
            --python) need_arg "$@"; PYTHON="$2"; shift ;;
            --pip-arg) [[ $# -ge 2 ]] || usage_error "option $1 needs a value"; PIP_ARGS+=("$2"); shift ;;
            --user) need_arg "$@"; SERVICE_USER="$2"; shift ;;
            --root) need_arg "$@"; ROOT="$2"; shift ;;
            --skip-packages) SKIP_PACKAGES=1 ;;
            --no-systemd) NO_SYSTEMD=1 ;;
            -*) usage_error "unknown option '$1'" ;;
            *)
                [[ -z "$COMMAND" ]] || usage_error "unexpected argument '$1'"
                COMMAND="$1"
                ;;
        esac
        shift
    done
}

check_args() {
    case "$COMMAND" in
        install | upgrade | render-unit | render-env | wait-ready) ;;
        "") usage_error "no command given" ;;
        *) usage_error "unknown command '$COMMAND'" ;;
    esac
    local n
    for n in "$CORES" "$WORKERS" "$SAVERS" "$FRONTEND_WORKERS"; do
        [[ -z "$n" ]] || valid_positive_int "$n" || usage_error "'$n' is not a positive integer"
    done
    [[ -z "$ROOT" || -d "$ROOT" ]] || usage_error "--root '$ROOT' is not a directory"
    [[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || usage_error "--ready-timeout '$READY_TIMEOUT' is not a number of seconds"
    if ! [[ "$BIND" =~ ^[^:]+:([0-9]+)$ ]] || ! valid_port "${BASH_REMATCH[1]}"; then
        usage_error "--bind '$BIND' is not HOST:PORT"
    fi
    local kv
    for kv in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do
        [[ "$kv" =~ ^[A-Z_][A-Z0-9_]*=[^$'\n']*$ ]] || usage_error "--env '$kv' is not KEY=VALUE"
    done
    local sources=0
    [[ -n "$API_KEYS_FILE" ]] && sources=$((sources + 1))
    [[ -n "$API_KEYS_SECRET" ]] && sources=$((sources + 1))
    ((GENERATE_API_KEY)) && sources=$((sources + 1))
    ((sources <= 1)) || usage_error "give at most one of --api-keys-file, --api-keys-secret, --generate-api-key"
    [[ -z "$API_KEYS_SECRET" || "$API_KEYS_SECRET" =~ ^[A-Za-z0-9_-]{1,255}$ ]] ||
        usage_error "--api-keys-secret '$API_KEYS_SECRET' is not a secret name"
    if [[ "$COMMAND" == install || "$COMMAND" == upgrade ]]; then
        [[ -n "$PACKAGE" ]] || usage_error "--package is required"
        [[ -e "$PACKAGE" || "$DRY_RUN" == 1 ]] || usage_error "--package '$PACKAGE' does not exist"
        [[ -z "$API_KEYS_FILE" || -f "$API_KEYS_FILE" ]] || usage_error "--api-keys-file '$API_KEYS_FILE' does not exist"
        if [[ -z "$ROOT" && "$DRY_RUN" != 1 && "$EUID" -ne 0 ]]; then
            die "run as root (sudo), or give --root DIR"
        fi
    fi
    if [[ "$COMMAND" == install || "$COMMAND" == render-env ]]; then
        [[ -n "$STORE" ]] || usage_error "--store is required (e.g. firestore://PROJECT)"
    fi
}

set_paths() {
    if [[ -n "$ROOT" ]]; then
        ROOT="$(cd "$ROOT" && pwd)"
    fi
    VENV="$ROOT/opt/ingestiond/venv"
    ETC="$ROOT/etc/ingestiond"
    VAR="$ROOT/var/lib/ingestiond"
    LOGS="$ROOT/var/log/ingestiond"
    UNIT="$ROOT/etc/systemd/system/ingestiond.service"
    if [[ -z "$SUPERVISORD_CONF" ]]; then
        SUPERVISORD_CONF="$DEPLOY_DIR/supervisord.conf"
        [[ -f "$SUPERVISORD_CONF" ]] || SUPERVISORD_CONF="$REPO_DIR/supervisord.conf"
    fi
}

# ---------------------------------------------------------------------------------------
# Sizing: NER workers take every core but one (the frontend, savers and the arbiter share
# it); savers and gunicorn workers mostly wait on I/O, so a few suffice.

clamp() { local v=$1 lo=$2 hi=$3; ((v < lo)) && v=$lo; ((v > hi)) && v=$hi; printf '%s' "$v"; }

size_processes() {
    local cores="${CORES:-$(nproc)}"
    WORKERS="${WORKERS:-$(clamp $((cores - 1)) 1 100000)}"
    SAVERS="${SAVERS:-$(clamp $((cores / 4)) 1 4)}"
    FRONTEND_WORKERS="${FRONTEND_WORKERS:-$(clamp $((cores / 4)) 2 4)}"
}

render_env() {
    size_processes
    cat <<EOF
# ingestiond settings, read by systemd (EnvironmentFile=) for supervisord and both programs.
# Written by deploy/vm-setup.sh: re-run deploy/bootstrap.sh to change it. No secrets here:
# API keys are in INGEST_API_KEYS_FILE, the manager authkey is generated into INGEST_VAR_DIR.
INGEST_STORE=$STORE
INGEST_VAR_DIR=$VAR
INGEST_LOG_DIR=$LOGS
INGEST_BIND=$BIND
INGEST_WORKERS=$WORKERS
INGEST_SAVERS=$SAVERS
INGEST_FRONTEND_WORKERS=$FRONTEND_WORKERS
INGEST_API_KEYS_FILE=$ETC/api_keys
OPENBLAS_NUM_THREADS=1
OMP_NUM_THREADS=1
EOF
    local kv
    for kv in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do
        printf '%s\n' "$kv"
    done
}

# systemd must outwait supervisord, which waits up to stopwaitsecs per program for the
# backend's drain; programs may be stopped one after another, so add them up.
stop_timeout() {
    local total=0
    if [[ -f "$SUPERVISORD_CONF" ]]; then
        total="$(awk -F= '/^[[:space:]]*stopwaitsecs[[:space:]]*=/ {
                     gsub(/[[:space:]]/, "", $2); if ($2 ~ /^[0-9]+$/) t += $2 }
                 END { print t + 0 }' "$SUPERVISORD_CONF")"
    fi
    ((total > 0)) || total=600
    printf '%s' $((total + 60))
}

render_unit() {
    [[ -f "$UNIT_TEMPLATE" ]] || die "unit template '$UNIT_TEMPLATE' does not exist"
    sed -e "s|@VENV@|$VENV|g" -e "s|@ETC@|$ETC|g" -e "s|@VAR@|$VAR|g" -e "s|@LOGS@|$LOGS|g" \
        -e "s|@USER@|$SERVICE_USER|g" -e "s|@STOP_TIMEOUT@|$(stop_timeout)|g" "$UNIT_TEMPLATE"
}

# ---------------------------------------------------------------------------------------
# Install steps

as_root() { [[ "$EUID" -eq 0 ]]; }

install_system_packages() {
    ((SKIP_PACKAGES)) && return 0
    # a fresh VM's unattended-upgrades may hold the dpkg lock for a while: wait for it
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    run "${apt[@]}" update -q
    run "${apt[@]}" install -y -q --no-install-recommends \
        python3 python3-venv python3-pip curl ca-certificates
}

ensure_user() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        return 0
    fi
    run useradd --system --home-dir "$VAR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
}

make_dirs() {
    run install -d -m 0755 "$ROOT/opt/ingestiond" "$ETC"
    if as_root; then
        run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$VAR" "$LOGS"
    else
        run install -d -m 0750 "$VAR" "$LOGS"
    fi
}

# Two steps: the first brings in dependencies, the second replaces our own code even when
# the version number did not change (a rebuilt 0.1.0 wheel is still new code).
install_package() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        run "$PYTHON" -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check install)
    run "${pip[@]}" "${PIP_ARGS[@]+"${PIP_ARGS[@]}"}" "$PACKAGE"
    run "${pip[@]}" --no-deps --force-reinstall "${PIP_ARGS[@]+"${PIP_ARGS[@]}"}" "$PACKAGE"
}

smoke_check() {
    run_quiet "$VENV/bin/ingestiond" --help
    run_quiet "$VENV/bin/ingest-frontend" --help
    run_quiet "$VENV/bin/python" -m supervisor.supervisord --version
}

install_supervisord_conf() {
    [[ -f "$SUPERVISORD_CONF" ]] || die "supervisord.conf '$SUPERVISORD_CONF' does not exist"
    run install -m 0644 "$SUPERVISORD_CONF" "$ETC/supervisord.conf"
}

# Written to a 0600 temporary file first so no one can read it half-written or world-readable.
install_env_file() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '# write %s (0600):\n' "$ETC/env"
        render_env | sed 's/^/#   /'
        return 0
    fi
    local tmp
    tmp="$(umask 077 && mktemp "$ETC/.env.XXXXXX")"
    render_env >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$ETC/env"
    log "wrote $ETC/env (0600)"
}

# The API key file belongs to the service user (the frontend reads it), mode 0600.
own_key_file() {
    run chmod 0600 "$1"
    if as_root; then
        run chown "$SERVICE_USER:$SERVICE_USER" "$1"
    fi
}

install_api_keys() {
    local dest="$ETC/api_keys"
    if [[ -n "$API_KEYS_FILE" ]]; then
        run install -m 0600 "$API_KEYS_FILE" "$dest"
        own_key_file "$dest"
    elif [[ -n "$API_KEYS_SECRET" ]]; then
        fetch_secret "$dest"
    elif ((GENERATE_API_KEY)) && ! has_keys "$dest"; then
        if [[ "$DRY_RUN" == 1 ]]; then
            printf '# generate a random API key into %s (0600)\n' "$dest"
            return 0
        fi
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$dest")
        own_key_file "$dest"
        log "generated an API key into $dest (read it with: sudo cat $dest)"
    fi
    if [[ "$DRY_RUN" != 1 ]] && ! has_keys "$dest"; then
        log "warning: no API key in $dest: every POST will get 401 until you add one"
    fi
}

has_keys() { [[ -f "$1" ]] && grep -q '^[^#[:space:]]' "$1"; }

# Runs on the VM with the VM's service account; the value goes straight into a 0600 file.
fetch_secret() {
    local dest="$1" flags=()
    [[ -n "$SECRET_PROJECT" ]] && flags+=("--project=$SECRET_PROJECT")
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%s > %s\n' "$(quote_cmd gcloud secrets versions access latest "--secret=$API_KEYS_SECRET" \
            "${flags[@]+"${flags[@]}"}")" "$(printf '%q' "$dest")"
        return 0
    fi
    command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed on this VM: cannot read the secret"
    local tmp
    tmp="$(umask 077 && mktemp "$ETC/.api_keys.XXXXXX")"
    if ! gcloud secrets versions access latest "--secret=$API_KEYS_SECRET" "${flags[@]+"${flags[@]}"}" >"$tmp"; then
        rm -f "$tmp"
        die "could not read secret '$API_KEYS_SECRET' (does the VM's service account have roles/secretmanager.secretAccessor and the cloud-platform scope?)"
    fi
    has_keys "$tmp" || { rm -f "$tmp"; die "secret '$API_KEYS_SECRET' holds no key"; }
    printf '\n' >>"$tmp"
    own_key_file "$tmp"
    mv -f "$tmp" "$dest"
    log "installed API keys from secret '$API_KEYS_SECRET' into $dest"
}

install_unit() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '# write %s:\n' "$UNIT"
        render_unit | sed 's/^/#   /'
    else
        mkdir -p "$(dirname "$UNIT")"
        render_unit >"$UNIT.tmp"
        chmod 0644 "$UNIT.tmp"
        mv -f "$UNIT.tmp" "$UNIT"
        log "wrote $UNIT"
    fi
    ((NO_SYSTEMD)) || run systemctl daemon-reload
}

bind_port() { printf '%s' "${BIND##*:}"; }

wait_ready() {
    ((READY_TIMEOUT > 0)) || return 0
    local url
    url="http://127.0.0.1:$(bind_port)/readyz"
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '# poll %s until 200 (at most %ss)\n' "$url" "$READY_TIMEOUT"
        return 0
    fi
    local start=$SECONDS code=""
    log "waiting up to ${READY_TIMEOUT}s for $url"
    while ((SECONDS - start < READY_TIMEOUT)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
        if [[ "$code" == 200 ]]; then
            log "ready after $((SECONDS - start))s"
            return 0
        fi
        sleep 2
    done
    die "not ready after ${READY_TIMEOUT}s (last answer: ${code:-none}); see: journalctl -u ingestiond -n 100; $LOGS"
}

check_installed() {
    [[ -x "$VENV/bin/python" && -f "$ETC/env" ]] || die "ingestiond is not installed here: run bootstrap first"
}

# If the new version cannot be installed, start what is there rather than leave it down.
restart_after_failure() {
    local rc=$?
    if ((rc != 0)); then
        log "upgrade failed: starting the service again with what is installed"
        systemctl start ingestiond || true
    fi
    exit "$rc"
}

do_install() {
    install_system_packages
    ensure_user
    make_dirs
    install_package
    smoke_check
    install_supervisord_conf
    install_env_file
    install_api_keys
    install_unit
    ((NO_SYSTEMD)) && return 0
    run systemctl enable ingestiond
    run systemctl restart ingestiond
    wait_ready
}

do_upgrade() {
    check_installed
    # the running service keeps its listening port until stop returns
    BIND="$(sed -n 's/^INGEST_BIND=//p' "$ETC/env" | tail -n 1)"
    BIND="${BIND:-0.0.0.0:8000}"
    if ((NO_SYSTEMD)); then
        install_package
        smoke_check
        install_supervisord_conf
        install_unit
        return 0
    fi
    # drain: supervisord forwards TERM to the backend, which finishes and stores every
    # accepted article; systemctl returns when it has exited (TimeoutStopSec above that)
    run systemctl stop ingestiond
    [[ "$DRY_RUN" == 1 ]] || trap restart_after_failure EXIT
    install_package
    smoke_check
    install_supervisord_conf
    install_unit
    run systemctl start ingestiond
    trap - EXIT
    wait_ready
}

main() {
    parse_args "$@"
    check_args
    set_paths
    case "$COMMAND" in
        install) do_install ;;
        upgrade) do_upgrade ;;
        render-unit) render_unit ;;
        render-env) render_env ;;
        wait-ready) wait_ready ;;
    esac
}

main "$@"
