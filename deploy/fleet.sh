#!/usr/bin/env bash
# A fleet (docs/pubsub.md): the Pub/Sub topic, its subscription and dead-letter topic; an instance
# template and a regional managed instance group of backend VMs autoscaled on the subscription's
# backlog; a front door on every VM behind one HTTP load balancer. `fleet.sh teardown` removes it
# all but the topic, the subscription and the data.
set -euo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $PROG [create|teardown] --project ID --region REGION --wheel-url gs://BUCKET/ingestiond.whl [options]

create (the default) makes, in this order: the topic NAME, the dead-letter topic NAME-dead (with a
subscription NAME-dead-keep that keeps what lands there 7 days: \`ingestiond dead-letters list|replay\`
reads it), the subscription NAME-backends (ack deadline 60 s, dead-letter policy of 100 delivery
attempts: only a message that kills backends), the Pub/Sub service agent's rights on them, an
instance template, a regional managed instance group autoscaled on
pubsub.googleapis.com/subscription/num_undelivered_messages, a health check and an HTTP load
balancer in front of the frontend port of every VM. Each VM runs both programs: the frontend
publishes to the topic, the backend pulls from the subscription and stores in Firestore.
API keys come from Secret Manager (--api-keys-secret), never from a command line.

Required:
  --project ID            Google Cloud project (or \$INGEST_GCP_PROJECT)
  --region REGION         e.g. europe-west1 (or \$INGEST_GCP_REGION)
  --wheel-url URL         the built wheel, copied to Cloud Storage (deploy/build.sh, then
                          gcloud storage cp dist/*.whl gs://BUCKET/)
  --api-keys-secret NAME  Secret Manager secret holding the write keys, one a line

Options:
  --name NAME             prefix of every resource (default ingest)
  --machine-type TYPE     default e2-standard-16
  --min N / --max N       instances (default 1 / 10)
  --backlog-per-vm N      undelivered messages per instance the autoscaler aims at (default 5000)
  --layout LAYOUT         Firestore layout: packed (default) or entities
  --service-account EMAIL the VMs' service account (needs roles/datastore.user, roles/pubsub.publisher,
                          roles/pubsub.subscriber, roles/pubsub.viewer (a backend reads its subscriptions'
                          settings at start), roles/secretmanager.secretAccessor)
  --port N                frontend port (default 8000)
  --dry-run               print every command instead of running it
  -h, --help              this text
EOF
}

ACTION=create
PROJECT="${INGEST_GCP_PROJECT:-}"
REGION="${INGEST_GCP_REGION:-}"
WHEEL_URL=""
API_KEYS_SECRET=""
NAME=ingest
MACHINE_TYPE=e2-standard-16
MIN=1
MAX=10
BACKLOG=5000
LAYOUT=packed
SERVICE_ACCOUNT=""
PORT=8000

split_equals "$@"
set -- "${SPLIT_ARGS[@]+"${SPLIT_ARGS[@]}"}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    ACTION="$1"
    shift
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) need_arg "$@"; PROJECT="$2"; shift ;;
        --region) need_arg "$@"; REGION="$2"; shift ;;
        --wheel-url) need_arg "$@"; WHEEL_URL="$2"; shift ;;
        --api-keys-secret) need_arg "$@"; API_KEYS_SECRET="$2"; shift ;;
        --name) need_arg "$@"; NAME="$2"; shift ;;
        --machine-type) need_arg "$@"; MACHINE_TYPE="$2"; shift ;;
        --min) need_arg "$@"; MIN="$2"; shift ;;
        --max) need_arg "$@"; MAX="$2"; shift ;;
        --backlog-per-vm) need_arg "$@"; BACKLOG="$2"; shift ;;
        --layout) need_arg "$@"; LAYOUT="$2"; shift ;;
        --service-account) need_arg "$@"; SERVICE_ACCOUNT="$2"; shift ;;
        --port) need_arg "$@"; PORT="$2"; shift ;;
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage_error "unknown option: $1" ;;
    esac
    shift
done

[[ "$ACTION" == create || "$ACTION" == teardown ]] || usage_error "unknown action '$ACTION' (create or teardown)"
[[ -n "$PROJECT" ]] || usage_error "--project is required"
valid_project "$PROJECT" || usage_error "--project '$PROJECT' is not a valid project id"
[[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || usage_error "--region '$REGION' is not a region (e.g. europe-west1)"
if ! valid_gce_name "$NAME" || [[ ${#NAME} -gt 40 ]]; then
    usage_error "--name '$NAME' is not a valid resource name (at most 40 characters)"
fi
valid_port "$PORT" || usage_error "--port '$PORT' is not a port"
if [[ "$ACTION" == create ]]; then
    [[ "$WHEEL_URL" =~ ^gs://[a-z0-9._-]+/.+\.whl$ ]] || usage_error "--wheel-url must be gs://BUCKET/PATH.whl"
    [[ "$API_KEYS_SECRET" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || usage_error "--api-keys-secret NAME is required"
    if ! valid_positive_int "$MIN" || ! valid_positive_int "$MAX" || ((MIN > MAX)); then
        usage_error "--min/--max: 1 <= min <= max"
    fi
    valid_positive_int "$BACKLOG" || usage_error "--backlog-per-vm '$BACKLOG' is not a positive number"
    [[ "$LAYOUT" == packed || "$LAYOUT" == entities ]] || usage_error "--layout is packed or entities"
fi
need_cmd gcloud "install the Google Cloud CLI"

TOPIC="$NAME"
DEAD="$NAME-dead"
SUB="$NAME-backends"
TEMPLATE="$NAME-backend"
GROUP="$NAME-backends"
HEALTH="$NAME-healthz"
SERVICE="$NAME-frontends"
P=("--project=$PROJECT")

project_number() {
    if [[ "$DRY_RUN" == 1 ]]; then
        printf 'PROJECT_NUMBER'
    else
        gcloud projects describe "$PROJECT" --format='value(projectNumber)'
    fi
}

create_pubsub() {
    run_quiet gcloud pubsub topics create "$TOPIC" "${P[@]}"
    run_quiet gcloud pubsub topics create "$DEAD" "${P[@]}"
    # what lands on the dead-letter topic is lost unless a subscription keeps it: NAME-dead-keep (the name
    # `ingestiond dead-letters` looks for), never expiring however long nobody reads it
    run_quiet gcloud pubsub subscriptions create "$DEAD-keep" "${P[@]}" --topic="$DEAD" --ack-deadline=60 \
        --message-retention-duration=7d --expiration-period=never
    # The policy is only for a message that kills backends (100 attempts, the most Pub/Sub allows). A backend
    # never hands a message back for want of room; it hands back what it held when it stops (a drain, an
    # autoscaler's scale-in, a recreated VM) and a killed backend's leases expire, and each counts as an
    # attempt: a healthy message can meet several in a churning fleet, and 5 would dead-letter it. A message
    # that kills workers, or that no backend can read, a backend dead-letters itself at once (?dead_letter=).
    run_quiet gcloud pubsub subscriptions create "$SUB" "${P[@]}" --topic="$TOPIC" --ack-deadline=60 \
        --message-retention-duration=7d --expiration-period=never \
        --dead-letter-topic="$DEAD" --max-delivery-attempts=100
    # dead-lettering is done by Pub/Sub's own service agent: it must publish there and ack here
    local agent
    agent="serviceAccount:service-$(project_number)@gcp-sa-pubsub.iam.gserviceaccount.com"
    run_quiet gcloud pubsub topics add-iam-policy-binding "$DEAD" "${P[@]}" --member="$agent" --role=roles/pubsub.publisher
    run_quiet gcloud pubsub subscriptions add-iam-policy-binding "$SUB" "${P[@]}" --member="$agent" \
        --role=roles/pubsub.subscriber
}

create_group() {
    local metadata="ingest-wheel-url=$WHEEL_URL,ingest-api-keys-secret=$API_KEYS_SECRET"
    metadata+=",ingest-intake-topic=pubsub://$PROJECT/$TOPIC,ingest-intake-subscription=pubsub://$PROJECT/$SUB?dead_letter=$DEAD"
    metadata+=",ingest-store=firestore://$PROJECT?layout=$LAYOUT,ingest-port=$PORT"
    local account=()
    [[ -n "$SERVICE_ACCOUNT" ]] && account=("--service-account=$SERVICE_ACCOUNT")
    run_quiet gcloud compute instance-templates create "$TEMPLATE" "${P[@]}" --machine-type="$MACHINE_TYPE" \
        --image-family=ubuntu-2404-lts-amd64 --image-project=ubuntu-os-cloud --boot-disk-size=50GB \
        --scopes=cloud-platform --tags="$NAME-frontend" "${account[@]+"${account[@]}"}" \
        --metadata="$metadata" --metadata-from-file="startup-script=$DEPLOY_DIR/fleet-startup.sh"
    run_quiet gcloud compute health-checks create http "$HEALTH" "${P[@]}" --port="$PORT" --request-path=/healthz
    run_quiet gcloud compute instance-groups managed create "$GROUP" "${P[@]}" --region="$REGION" \
        --template="$TEMPLATE" --size="$MIN" --health-check="$HEALTH" --initial-delay=300
    run_quiet gcloud compute instance-groups managed set-named-ports "$GROUP" "${P[@]}" --region="$REGION" \
        --named-ports="http:$PORT"
    # the backlog per VM: a VM drains ~180-300 articles/s; 5,000 messages of 10 articles is ~3 minutes of it
    run_quiet gcloud compute instance-groups managed set-autoscaling "$GROUP" "${P[@]}" --region="$REGION" \
        --min-num-replicas="$MIN" --max-num-replicas="$MAX" --cool-down-period=300 \
        --update-stackdriver-metric=pubsub.googleapis.com/subscription/num_undelivered_messages \
        --stackdriver-metric-filter="resource.type = \"pubsub_subscription\" AND resource.labels.subscription_id = \"$SUB\"" \
        --stackdriver-metric-single-instance-assignment="$BACKLOG"
}

create_balancer() {
    run_quiet gcloud compute firewall-rules create "$NAME-lb-health" "${P[@]}" --allow="tcp:$PORT" \
        --source-ranges=130.211.0.0/22,35.191.0.0/16 --target-tags="$NAME-frontend"
    run_quiet gcloud compute backend-services create "$SERVICE" "${P[@]}" --global --protocol=HTTP \
        --port-name=http --health-checks="$HEALTH" --timeout=60s
    run_quiet gcloud compute backend-services add-backend "$SERVICE" "${P[@]}" --global \
        --instance-group="$GROUP" --instance-group-region="$REGION" --balancing-mode=UTILIZATION
    run_quiet gcloud compute url-maps create "$NAME-lb" "${P[@]}" --default-service="$SERVICE"
    run_quiet gcloud compute target-http-proxies create "$NAME-lb" "${P[@]}" --url-map="$NAME-lb"
    run_quiet gcloud compute forwarding-rules create "$NAME-lb" "${P[@]}" --global --target-http-proxy="$NAME-lb" \
        --ports=80
}

teardown() {
    run_quiet gcloud compute forwarding-rules delete "$NAME-lb" "${P[@]}" --global --quiet
    run_quiet gcloud compute target-http-proxies delete "$NAME-lb" "${P[@]}" --quiet
    run_quiet gcloud compute url-maps delete "$NAME-lb" "${P[@]}" --quiet
    run_quiet gcloud compute backend-services delete "$SERVICE" "${P[@]}" --global --quiet
    # deleting the group SIGTERMs every VM: each drains and hands back what it did not commit
    run_quiet gcloud compute instance-groups managed delete "$GROUP" "${P[@]}" --region="$REGION" --quiet
    run_quiet gcloud compute health-checks delete "$HEALTH" "${P[@]}" --quiet
    run_quiet gcloud compute instance-templates delete "$TEMPLATE" "${P[@]}" --quiet
    run_quiet gcloud compute firewall-rules delete "$NAME-lb-health" "${P[@]}" --quiet
}

if [[ "$ACTION" == create ]]; then
    create_pubsub
    create_group
    create_balancer
    finish "fleet $NAME created: topic $TOPIC, subscription $SUB, group $GROUP ($MIN-$MAX VMs in $REGION);" \
        "the load balancer's address: gcloud compute forwarding-rules describe $NAME-lb --global --project=$PROJECT;" \
        "dead letters: ingestiond dead-letters list --intake 'pubsub://$PROJECT/$SUB?dead_letter=$DEAD'"
else
    teardown
    finish "fleet $NAME removed; the topic, the subscription and the Firestore data stay"
fi
