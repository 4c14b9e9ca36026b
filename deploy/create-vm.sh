#!/usr/bin/env bash
# Create the Compute Engine VM for ingestiond and a firewall rule that opens the frontend
# port to one source range only. The VM's service account gets the Datastore scope
# (Firestore) and logging/monitoring writes; nothing else.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATASTORE_SCOPE="https://www.googleapis.com/auth/datastore"
LOGGING_SCOPE="https://www.googleapis.com/auth/logging.write"
MONITORING_SCOPE="https://www.googleapis.com/auth/monitoring.write"
CLOUD_PLATFORM_SCOPE="https://www.googleapis.com/auth/cloud-platform"

usage() {
    cat <<EOF
Usage: $PROG --project ID --zone ZONE --source-range CIDR [options]

Creates an Ubuntu 24.04 VM (16 vCPUs by default) and a firewall rule for the frontend port.
Then run bootstrap.sh.

Required:
  --project ID            Google Cloud project (or \$INGEST_GCP_PROJECT)
  --zone ZONE             zone, e.g. europe-west1-b (or \$INGEST_GCP_ZONE)
  --source-range CIDR     who may reach the frontend port, e.g. 203.0.113.7/32 (repeatable or
                          comma-separated); 0.0.0.0/0 is refused unless --allow-any is given

Options:
  --instance NAME         VM name (default: \$INGEST_INSTANCE or ingestiond)
  --machine-type TYPE     default e2-standard-16 (16 vCPUs, 64 GB); n2-standard-16 is faster per core
  --service-account EMAIL service account for the VM (default: the project's Compute Engine
                          default account); it needs roles/datastore.user
  --secret-access         add the cloud-platform scope so the VM can read Secret Manager
                          (bootstrap.sh --api-keys-secret); IAM still limits what it may do
  --port N                frontend port to open (default 8000)
  --network NAME          VPC network (default: default)
  --tag TAG               network tag tying the firewall rule to the VM (default: NAME-frontend)
  --firewall-rule NAME    firewall rule name (default: NAME-frontend)
  --boot-disk-size SIZE   default 50GB
  --image-family FAMILY   default ubuntu-2404-lts-amd64 (project ubuntu-os-cloud)
  --allow-any             allow --source-range 0.0.0.0/0 (the whole internet)
  --dry-run               print every command instead of running it
  -h, --help              this text
EOF
}

MACHINE_TYPE="e2-standard-16"
SERVICE_ACCOUNT=""
SECRET_ACCESS=0
PORT=8000
NETWORK="default"
TAG=""
FIREWALL_RULE=""
BOOT_DISK_SIZE="50GB"
IMAGE_FAMILY="ubuntu-2404-lts-amd64"
IMAGE_PROJECT="ubuntu-os-cloud"
ALLOW_ANY=0
SOURCE_RANGES=()

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1 ;;
        --project) need_arg "$@"; TARGET_PROJECT="$2"; shift ;;
        --zone) need_arg "$@"; TARGET_ZONE="$2"; shift ;;
        --instance) need_arg "$@"; TARGET_INSTANCE="$2"; shift ;;
        --machine-type) need_arg "$@"; MACHINE_TYPE="$2"; shift ;;
        --service-account) need_arg "$@"; SERVICE_ACCOUNT="$2"; shift ;;
        --secret-access) SECRET_ACCESS=1 ;;
        --source-range)
            need_arg "$@"
            IFS=',' read -r -a given <<<"$2"
            SOURCE_RANGES+=("${given[@]}")
            shift
            ;;
        --port) need_arg "$@"; PORT="$2"; shift ;;
        --network) need_arg "$@"; NETWORK="$2"; shift ;;
        --tag) need_arg "$@"; TAG="$2"; shift ;;
        --firewall-rule) need_arg "$@"; FIREWALL_RULE="$2"; shift ;;
        --boot-disk-size) need_arg "$@"; BOOT_DISK_SIZE="$2"; shift ;;
        --image-family) need_arg "$@"; IMAGE_FAMILY="$2"; shift ;;
        --allow-any) ALLOW_ANY=1 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
    shift
done

check_gcloud_target
TAG="${TAG:-$TARGET_INSTANCE-frontend}"
FIREWALL_RULE="${FIREWALL_RULE:-$TARGET_INSTANCE-frontend}"
[[ "$MACHINE_TYPE" =~ ^[a-z][a-z0-9]*-[a-z0-9-]+$ ]] || usage_error "--machine-type '$MACHINE_TYPE' is not a machine type"
valid_port "$PORT" || usage_error "--port '$PORT' is not a port"
valid_gce_name "$NETWORK" || usage_error "--network '$NETWORK' is not a network name"
valid_gce_name "$TAG" || usage_error "--tag '$TAG' is not a valid network tag"
valid_gce_name "$FIREWALL_RULE" || usage_error "--firewall-rule '$FIREWALL_RULE' is not a valid rule name"
[[ "$BOOT_DISK_SIZE" =~ ^[0-9]+(GB|TB)$ ]] || usage_error "--boot-disk-size '$BOOT_DISK_SIZE' is not like 50GB"
[[ "$IMAGE_FAMILY" =~ ^[a-z][-a-z0-9]*$ ]] || usage_error "--image-family '$IMAGE_FAMILY' is not an image family"
[[ -z "$SERVICE_ACCOUNT" || "$SERVICE_ACCOUNT" =~ ^[^@[:space:]]+@[^@[:space:]]+$ ]] ||
    usage_error "--service-account '$SERVICE_ACCOUNT' is not an e-mail address"

((${#SOURCE_RANGES[@]})) || usage_error "--source-range is required (the addresses that may reach port $PORT)"
for cidr in "${SOURCE_RANGES[@]}"; do
    if [[ "$cidr" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]]; then
        for i in 1 2 3 4; do
            ((BASH_REMATCH[i] <= 255)) || usage_error "--source-range '$cidr' is not an IPv4 CIDR"
        done
        ((BASH_REMATCH[5] <= 32)) || usage_error "--source-range '$cidr' has a prefix over /32"
        prefix="${BASH_REMATCH[5]}"
    elif [[ "$cidr" =~ ^[0-9a-fA-F:]+/([0-9]{1,3})$ ]] && ((BASH_REMATCH[1] <= 128)); then
        prefix="${BASH_REMATCH[1]}"
    else
        usage_error "--source-range '$cidr' is not a CIDR range like 203.0.113.7/32"
    fi
    if ((prefix == 0 && !ALLOW_ANY)); then
        usage_error "--source-range $cidr opens port $PORT to the whole internet; add --allow-any if you mean it"
    fi
done
need_cmd gcloud "install the Google Cloud CLI"

scopes="$DATASTORE_SCOPE,$LOGGING_SCOPE,$MONITORING_SCOPE"
((SECRET_ACCESS)) && scopes+=",$CLOUD_PLATFORM_SCOPE"
sa_flags=()
[[ -z "$SERVICE_ACCOUNT" ]] || sa_flags=("--service-account=$SERVICE_ACCOUNT")
ranges="$(IFS=,; printf '%s' "${SOURCE_RANGES[*]}")"

log "creating $TARGET_INSTANCE ($MACHINE_TYPE) in $TARGET_PROJECT/$TARGET_ZONE; port $PORT open to $ranges"
run gcloud compute instances create "$TARGET_INSTANCE" \
    "--project=$TARGET_PROJECT" \
    "--zone=$TARGET_ZONE" \
    "--machine-type=$MACHINE_TYPE" \
    "--image-family=$IMAGE_FAMILY" \
    "--image-project=$IMAGE_PROJECT" \
    "--boot-disk-size=$BOOT_DISK_SIZE" \
    "--boot-disk-type=pd-balanced" \
    "--network=$NETWORK" \
    "--tags=$TAG" \
    "${sa_flags[@]+"${sa_flags[@]}"}" \
    "--scopes=$scopes" \
    "--shielded-secure-boot" \
    "--shielded-vtpm" \
    "--shielded-integrity-monitoring" \
    "--labels=app=ingestiond"

run gcloud compute firewall-rules create "$FIREWALL_RULE" \
    "--project=$TARGET_PROJECT" \
    "--network=$NETWORK" \
    "--direction=INGRESS" \
    "--action=ALLOW" \
    "--rules=tcp:$PORT" \
    "--source-ranges=$ranges" \
    "--target-tags=$TAG" \
    "--description=ingestiond frontend on $TARGET_INSTANCE"

finish "next: deploy/build.sh, then deploy/bootstrap.sh --project $TARGET_PROJECT --zone $TARGET_ZONE --instance $TARGET_INSTANCE --api-keys-file PATH"
