#!/usr/bin/env bash
# A local stand-in for an official python:3.x-slim image, built from Debian packages, for machines that
# cannot pull from an image registry (ours): mmdebstrap makes a minimal Debian root file system with
# Python 3 and venv, `podman import` turns it into an image. Prints the image's name on stdout, e.g.
#
#     podman build --build-arg BASE="$(scripts/container-base.sh)" -t ingestiond .
#
# Cached twice, keyed by a hash of this recipe (this file and the settings below): the image tag
# localhost/ingestiond-base:SUITE-HASH in podman's store, and the root file system's tarball in
# ${XDG_CACHE_HOME:-~/.cache}/ingestiond/container-base/ (so a wiped podman store costs an import, not
# a download). A second run is instant. Needs podman and mmdebstrap (apt-get install podman runc
# mmdebstrap); run as root, or where mmdebstrap's unshare mode works.
#   INGEST_BASE_SUITE   Debian release (default bookworm: Python 3.11)
#   INGEST_BASE_MIRROR  Debian mirror (default: mmdebstrap's, i.e. the one apt uses here)
set -euo pipefail

SUITE="${INGEST_BASE_SUITE:-bookworm}"
MIRROR="${INGEST_BASE_MIRROR:-}"
# what python:3.x-slim has that we need: python3 (also as `python`), venv/ensurepip, CA certificates,
# /etc/services and /etc/protocols, time zones
PACKAGES="python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata"

say() { printf 'container-base: %s\n' "$*" >&2; }
die() { printf 'container-base: error: %s\n' "$*" >&2; exit 1; }

command -v podman >/dev/null 2>&1 || die "podman is not installed (apt-get install podman runc)"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hash="$( { cat "$here/container-base.sh"; printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES"; } | sha256sum | cut -c1-12)"
tag="localhost/ingestiond-base:$SUITE-$hash"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ingestiond/container-base"
tarball="$cache/$SUITE-$hash.tar"

if podman image exists "$tag"; then
    say "cached: $tag"
    printf '%s\n' "$tag"
    exit 0
fi

if [[ ! -s "$tarball" ]]; then
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    mkdir -p "$cache"
    say "building a Debian $SUITE root file system with $PACKAGES (once; cached in $cache)"
    tmp="$cache/.partial-$$-$SUITE-$hash.tar"
    trap 'rm -rf "$tmp"' EXIT
    # like Debian's own slim images: no manual pages, no docs but the copyright files, no translations
    mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$tmp" ${MIRROR:+"$MIRROR"} >&2
    mv "$tmp" "$tarball"
    trap - EXIT
fi

say "importing $tarball as $tag"
podman import --quiet \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "ingestiond base: Debian $SUITE minbase + $PACKAGES (scripts/container-base.sh)" \
    "$tarball" "$tag" >/dev/null
printf '%s\n' "$tag"
