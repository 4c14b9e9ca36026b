#!/usr/bin/env bash
# Delete the VM and its firewall rule. Asks first; --yes skips the question, and without a
# terminal to ask on, --yes is required. Firestore data is left alone.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG --project ID --zone ZONE [options]

Deletes the VM made by create-vm.sh (with its boot disk) and its firewall rule. The data in
Firestore is not touched.

  --project ID           Google Cloud project (or \$INGEST_GCP_PROJECT)
  --zone ZONE            zone of the VM (or \$INGEST_GCP_ZONE)
  --instance NAME        VM name (default: \$INGEST_INSTANCE or ingestiond)
  --firewall-rule NAME   firewall rule (default: NAME-frontend)
  --keep-firewall-rule   delete only the VM
  --yes                  do not ask (required when stdin is not a terminal)
  --dry-run              print every command instead of running it
  -h, --help             this text
EOF
}

FIREWALL_RULE=""
KEEP_FIREWALL=0
YES=0

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --yes | -y) YES=1 ;;
        --project) need_arg "$@"; TARGET_PROJECT="$2"; shift ;;
        --zone) need_arg "$@"; TARGET_ZONE="$2"; shift ;;
        --instance) need_arg "$@"; TARGET_INSTANCE="$2"; shift ;;
        --firewall-rule) need_arg "$@"; FIREWALL_RULE="$2"; shift ;;
        --keep-firewall-rule) KEEP_FIREWALL=1 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

check_gcloud_target
FIREWALL_RULE="${FIREWALL_RULE:-$TARGET_INSTANCE-frontend}"
valid_gce_name "$FIREWALL_RULE" || usage_error "--firewall-rule '$FIREWALL_RULE' is not a valid rule name"
need_cmd gcloud "install the Google Cloud CLI"

what="VM $TARGET_INSTANCE (project $TARGET_PROJECT, zone $TARGET_ZONE) and its boot disk"
((KEEP_FIREWALL)) || what+=", firewall rule $FIREWALL_RULE"

if [[ "$YES" != 1 && "$DRY_RUN" != 1 ]]; then
    if [[ ! -t 0 ]]; then
        log "error: refusing to delete $what without --yes (stdin is not a terminal)"
        exit 2
    fi
    printf 'This deletes the %s.\nType the instance name (%s) to go on: ' "$what" "$TARGET_INSTANCE" >&2
    answer=""
    read -r answer || true
    if [[ "$answer" != "$TARGET_INSTANCE" ]]; then
        log "not confirmed: nothing deleted"
        exit 1
    fi
fi

run gcloud compute instances delete "$TARGET_INSTANCE" \
    "--project=$TARGET_PROJECT" "--zone=$TARGET_ZONE" --delete-disks=all --quiet
if ((!KEEP_FIREWALL)); then
    run gcloud compute firewall-rules delete "$FIREWALL_RULE" "--project=$TARGET_PROJECT" --quiet
fi
finish "deleted the $what"
