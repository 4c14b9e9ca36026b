#!/usr/bin/env bash
# System packages some tests need: Chromium (dashboard), shellcheck, ruby, vagrant, systemd-analyze
# (deploy scripts), a JRE
# and Google's Firestore emulator; podman, runc and mmdebstrap (the container image, tests/test_container.py).
# Installed with apt-get when we are root; otherwise each missing piece
# is named, and the tests that need it skip with a loud reason.
set -uo pipefail

if [ -n "${INGEST_SKIP_SYSTEM_DEPS:-}" ]; then
    echo "system-deps: INGEST_SKIP_SYSTEM_DEPS is set: installing nothing; tests needing Chromium, Java, the emulator, shellcheck, vagrant or podman will skip loudly" >&2
    exit 0
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v ruby >/dev/null 2>&1 || missing+=(ruby)
command -v vagrant >/dev/null 2>&1 || missing+=(vagrant)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
sdk_root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || echo /usr/lib/google-cloud-sdk)
[ -f "$sdk_root/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" ] || missing+=(google-cloud-cli-firestore-emulator)
compgen -G "$sdk_root/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar" >/dev/null || missing+=(google-cloud-cli-pubsub-emulator)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
why() {
    case "$1" in
        chromium|chromium-driver) echo "the dashboard's browser tests" ;;
        shellcheck|ruby|vagrant|systemd|curl) echo "the deploy scripts' tests" ;;
        default-jre-headless|google-cloud-cli-*) echo "the Firestore and Pub/Sub emulator tests" ;;
        podman|runc|mmdebstrap) echo "the container image's tests" ;;
        *) echo "tests" ;;
    esac
}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    {
        echo "system-deps: installing system packages some tests need, with apt-get (a few minutes the first time):"
        for pkg in "${missing[@]}"; do echo "system-deps:   $pkg  (for $(why "$pkg"))"; done
        echo "system-deps: to install nothing, run INGEST_SKIP_SYSTEM_DEPS=1 make test (those tests then skip, saying why)"
    } >&2
    apt-get update -qq >/dev/null 2>&1 || true
    for pkg in "${missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
            || echo "system-deps: WARNING: could not install $pkg; the tests that need it will skip" >&2
    done
else
    echo "system-deps: WARNING: missing ${missing[*]} (install them with apt-get as root, or run make test as root); the tests that need them will skip" >&2
fi
exit 0
