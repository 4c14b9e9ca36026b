# shellcheck shell=bash
# shellcheck disable=SC2034  # the globals set here are read by the scripts that source this
# Shared helpers for the deploy/ scripts. Sourced, never run.
#
# Every command that changes something goes through `run`, so `--dry-run` can print the
# whole plan instead of carrying it out. Command lines never carry secrets: API keys travel
# as files (scp) or are read from Secret Manager on the VM itself.

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
DRY_RUN=0
PROG="$(basename "$0")"

# Where bootstrap.sh and rollout.sh stage files on the VM (relative to the ssh user's home,
# created 0700 so nothing else on the VM can read the API key file before it is installed).
REMOTE_STAGE="ingestiond-stage"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

die() {
    log "error: $*"
    exit 1
}

# A usage error: say what was wrong, show the usage, exit 2 (like argparse).
usage_error() {
    log "error: $*"
    usage >&2
    exit 2
}

# `need_arg "$@"` inside an option loop: the option in $1 needs a value in $2.
need_arg() {
    if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
        usage_error "option $1 needs a value"
    fi
}

# Split `--flag=value` into `--flag value` so the option loops handle one form.
# Usage: split_equals "$@"; set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
split_equals() {
    SPLIT_ARGS=()
    local a
    for a in "$@"; do
        if [[ "$a" == --*=* ]]; then
            SPLIT_ARGS+=("${a%%=*}" "${a#*=}")
        else
            SPLIT_ARGS+=("$a")
        fi
    done
}

# Print a command as a shell would need it typed (one line, safely quoted).
quote_cmd() {
    local out="" a
    for a in "$@"; do
        out+="$(printf '%q' "$a") "
    done
    printf '%s' "${out% }"
}

# Run a command, or only print it under --dry-run. The plan goes to stdout in dry-run
# mode (so it can be saved and read) and to stderr as a trace otherwise.
run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%s\n' "$(quote_cmd "$@")"
        return 0
    fi
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
}

# Like run, but the command's own output is not wanted (the plan still is, under --dry-run).
run_quiet() {
    if [[ "$DRY_RUN" == 1 ]]; then
        run "$@"
    else
        run "$@" >/dev/null
    fi
}

# The closing line: what was done, or that nothing was.
finish() {
    if [[ "$DRY_RUN" == 1 ]]; then
        log "dry run: nothing was done"
    else
        log "$*"
    fi
}

need_cmd() {
    [[ "$DRY_RUN" == 1 ]] && return 0
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH${2:+ ($2)}"
}

# GCE names (instances, firewall rules, network tags): RFC 1035 labels.
valid_gce_name() {
    [[ "$1" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]
}

valid_project() {
    [[ "$1" =~ ^[a-z][-a-z0-9:.]{4,61}[a-z0-9]$ ]]
}

valid_zone() {
    [[ "$1" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]]
}

valid_port() {
    [[ "$1" =~ ^[0-9]{1,5}$ ]] && (("$1" >= 1 && "$1" <= 65535))
}

valid_positive_int() {
    [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]
}

# ---------------------------------------------------------------------------------------
# Reaching the VM: `gcloud compute ssh/scp` (by instance, project, zone) or plain ssh/scp
# (--host). Scripts set TARGET_* through target_option and call check_target once.

TARGET_PROJECT="${INGEST_GCP_PROJECT:-}"
TARGET_ZONE="${INGEST_GCP_ZONE:-}"
TARGET_INSTANCE="${INGEST_INSTANCE:-ingestiond}"
TARGET_HOST=""
TARGET_IAP=0

TARGET_USAGE="Where the VM is (one of):
  --project ID          Google Cloud project (or \$INGEST_GCP_PROJECT)
  --zone ZONE           Compute Engine zone, e.g. europe-west1-b (or \$INGEST_GCP_ZONE)
  --instance NAME       VM name (default: \$INGEST_INSTANCE or ingestiond)
  --iap                 tunnel ssh through Identity-Aware Proxy (VM without an external IP)
or
  --host [USER@]HOST    any machine reachable with plain ssh/scp (your ~/.ssh/config applies)"

# target_option "$@": if $1 is a target option, take it (and its value); TARGET_SHIFT says how
# many arguments were used, 0 when $1 is not a target option.
target_option() {
    TARGET_SHIFT=0
    case "$1" in
        --project) need_arg "$@"; TARGET_PROJECT="$2"; TARGET_SHIFT=2 ;;
        --zone) need_arg "$@"; TARGET_ZONE="$2"; TARGET_SHIFT=2 ;;
        --instance) need_arg "$@"; TARGET_INSTANCE="$2"; TARGET_SHIFT=2 ;;
        --host) need_arg "$@"; TARGET_HOST="$2"; TARGET_SHIFT=2 ;;
        --iap) TARGET_IAP=1; TARGET_SHIFT=1 ;;
    esac
}

check_gcloud_target() {
    [[ -n "$TARGET_PROJECT" ]] || usage_error "--project is required"
    [[ -n "$TARGET_ZONE" ]] || usage_error "--zone is required"
    valid_project "$TARGET_PROJECT" || usage_error "--project '$TARGET_PROJECT' is not a valid project id"
    valid_zone "$TARGET_ZONE" || usage_error "--zone '$TARGET_ZONE' is not a valid zone (e.g. europe-west1-b)"
    valid_gce_name "$TARGET_INSTANCE" || usage_error "--instance '$TARGET_INSTANCE' is not a valid instance name"
}

check_target() {
    if [[ -n "$TARGET_HOST" ]]; then
        [[ "$TARGET_HOST" =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+$ ]] ||
            usage_error "--host '$TARGET_HOST' is not [USER@]HOST"
        if [[ -n "$TARGET_PROJECT" ]]; then
            valid_project "$TARGET_PROJECT" || usage_error "--project '$TARGET_PROJECT' is not a valid project id"
        fi
        need_cmd ssh
        need_cmd scp
    else
        check_gcloud_target
        need_cmd gcloud "install the Google Cloud CLI"
    fi
}

target_name() {
    if [[ -n "$TARGET_HOST" ]]; then
        printf '%s' "$TARGET_HOST"
    else
        printf '%s (project %s, zone %s)' "$TARGET_INSTANCE" "$TARGET_PROJECT" "$TARGET_ZONE"
    fi
}

gcloud_target_flags() {
    GCLOUD_FLAGS=("--project=$TARGET_PROJECT" "--zone=$TARGET_ZONE")
    if [[ "$TARGET_IAP" == 1 ]]; then
        GCLOUD_FLAGS+=("--tunnel-through-iap")
    fi
}

# remote_run CMD: run one shell command line on the VM as the ssh user.
remote_run() {
    if [[ -n "$TARGET_HOST" ]]; then
        run ssh "$TARGET_HOST" "$1"
    else
        gcloud_target_flags
        run gcloud compute ssh "$TARGET_INSTANCE" "${GCLOUD_FLAGS[@]}" "--command=$1"
    fi
}

# remote_copy SRC... DEST: copy local files to DEST (relative to the ssh user's home).
remote_copy() {
    local dest="${*: -1}"
    local srcs=("${@:1:$#-1}")
    if [[ -n "$TARGET_HOST" ]]; then
        run scp -q "${srcs[@]}" "$TARGET_HOST:$dest"
    else
        gcloud_target_flags
        run gcloud compute scp "${GCLOUD_FLAGS[@]}" "${srcs[@]}" "$TARGET_INSTANCE:$dest"
    fi
}

# The newest built wheel in dist/ (build.sh puts exactly one there).
default_wheel() {
    local w newest=""
    for w in "$REPO_DIR"/dist/ingestiond-*.whl; do
        [[ -f "$w" ]] || continue
        if [[ -z "$newest" || "$w" -nt "$newest" ]]; then
            newest="$w"
        fi
    done
    printf '%s' "$newest"
}

check_wheel() {
    [[ -n "$1" ]] || usage_error "no wheel: run deploy/build.sh first or give --wheel PATH"
    [[ -f "$1" ]] || usage_error "wheel '$1' does not exist"
    [[ "$(basename "$1")" == ingestiond-*.whl ]] || usage_error "'$1' is not an ingestiond wheel"
}

# Ship the files vm-setup.sh needs into a fresh 0700 stage directory on the VM.
ship_stage() {
    remote_run "rm -rf $REMOTE_STAGE && mkdir -m 0700 $REMOTE_STAGE"
    remote_copy "$@" "$REMOTE_STAGE/"
}

# The remote command line that runs vm-setup.sh as root from the stage and then removes
# the stage (the API key file with it), keeping vm-setup.sh's exit status.
stage_command() {
    # shellcheck disable=SC2016  # $? and $rc are for the remote shell
    printf 'cd %s && sudo -n bash ./vm-setup.sh %s; rc=$?; cd && rm -rf %s; exit $rc' \
        "$REMOTE_STAGE" "$(quote_cmd "$@")" "$REMOTE_STAGE"
}
