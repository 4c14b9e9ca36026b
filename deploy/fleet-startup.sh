#!/usr/bin/env bash
# The startup script of a fleet VM (deploy/fleet.sh puts it in the instance template): installs the
# wheel named in the instance metadata and runs the backend (pulling from the subscription) and the
# frontend (publishing to the topic) as two systemd services. Runs as root at every boot; idempotent.
set -euo pipefail

usage() {
    cat <<EOF
Usage: fleet-startup.sh

The startup script of the instance template made by deploy/fleet.sh; Compute Engine runs it as root
at every boot. It reads the instance metadata (ingest-wheel-url, ingest-api-keys-secret,
ingest-intake-topic, ingest-intake-subscription, ingest-store, ingest-port), installs the wheel
into /opt/ingestiond/venv and runs ingest-backend.service and ingest-frontend.service. No options.
EOF
}

case "${1:-}" in
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fleet-startup.sh: error: unknown option: $1" >&2; usage >&2; exit 2 ;;
esac

meta() {
    curl -fsS -H 'Metadata-Flavor: Google' "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}

WHEEL_URL=$(meta ingest-wheel-url)
SECRET=$(meta ingest-api-keys-secret)
TOPIC_URL=$(meta ingest-intake-topic)
SUB_URL=$(meta ingest-intake-subscription)
STORE=$(meta ingest-store)
PORT=$(meta ingest-port)
VENV=/opt/ingestiond/venv

id ingest >/dev/null 2>&1 || useradd --system --home /var/lib/ingestiond --create-home ingest
install -d -m 0750 -o ingest -g ingest /var/lib/ingestiond /etc/ingestiond
if [[ ! -x "$VENV/bin/ingestiond" ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
    wheel="/tmp/$(basename "$WHEEL_URL")"
    gcloud storage cp "$WHEEL_URL" "$wheel"
    "$VENV/bin/pip" install --quiet "$wheel"
fi
# the write keys from Secret Manager, straight into a 0600 file (never a command line or the log)
umask 077
gcloud secrets versions access latest --secret="$SECRET" >/etc/ingestiond/api_keys
chown ingest /etc/ingestiond/api_keys

cpus=$(nproc)
cat >/etc/ingestiond/backend.env <<EOF
INGEST_VAR_DIR=/var/lib/ingestiond
INGEST_STORE=$STORE
INGEST_INTAKE=$SUB_URL
INGEST_WORKERS=$((cpus > 1 ? cpus - 1 : 1))
INGEST_SAVERS=$((cpus / 4 > 1 ? cpus / 4 : 1))
EOF
cat >/etc/ingestiond/frontend.env <<EOF
INGEST_VAR_DIR=/var/lib/ingestiond
INGEST_STORE=$STORE
INGEST_INTAKE=$TOPIC_URL
INGEST_BACKEND_HEALTH=/var/lib/ingestiond/backend-health.json
INGEST_API_KEYS_FILE=/etc/ingestiond/api_keys
INGEST_BIND=0.0.0.0:$PORT
INGEST_FRONTEND_WORKERS=$((cpus / 4 > 1 ? cpus / 4 : 1))
EOF
for role in backend frontend; do
    exe=ingestiond
    [[ "$role" == frontend ]] && exe=ingest-frontend
    cat >"/etc/systemd/system/ingest-$role.service" <<EOF
[Unit]
Description=ingestiond $role (fleet)
After=network-online.target
Wants=network-online.target

[Service]
User=ingest
EnvironmentFile=/etc/ingestiond/$role.env
ExecStart=$VENV/bin/$exe
Restart=on-failure
RestartPreventExitStatus=2 3
KillMode=mixed
TimeoutStopSec=660

[Install]
WantedBy=multi-user.target
EOF
done
systemctl daemon-reload
systemctl enable --now ingest-backend.service ingest-frontend.service
