"""Prometheus metrics for the front door, plus the backend's status() rendered at scrape time.

gunicorn runs several worker processes, so the front-end counters live in prometheus_client's
multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set (ingest-frontend sets it before any
worker starts). The backend's numbers are not copied into the front: a custom collector asks
the backend for status() on every scrape, so /metrics is one view of front and back.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client import multiprocess  # now, not in gunicorn's SIGCHLD handler (a half-done import there failed)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY

from ..core.status import COUNTERS

log = logging.getLogger("ingest.web.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # *_created samples double the output and tell nobody anything here

HTTP_REQUESTS = Counter(
    "ingest_frontend_http_requests", "HTTP requests answered by the frontend",
    ["method", "endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "ingest_frontend_http_request_duration_seconds", "Time to answer a request, by endpoint",
    ["endpoint"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACCEPTED = Counter("ingest_frontend_accepted_articles", "Articles accepted (202) and put on the input queue")
REJECTED = Counter(
    "ingest_frontend_rejected_requests", "Write requests rejected, by reason (the JSON error code)", ["reason"],
)

PACED_READS = Counter(
    "ingest_frontend_paced_reads", "Reads without a key held by the read limit: served after the wait, or refused 429",
    ["outcome"],
)

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class BackendCollector:
    """Renders the backend's status() dict as ingest_backend_* metrics at scrape time."""

    def __init__(self, status: Callable[[], dict]):
        self._status = status

    def describe(self):
        return []  # dynamic: do not call status() at registration time

    def collect(self):
        up = GaugeMetricFamily("ingest_backend_up", "1 when the backend's queue manager answered this scrape")
        try:
            status = self._status()
        except Exception as exc:  # unreachable, draining manager gone, auth: the scrape still succeeds
            log.info("backend status unavailable for /metrics: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        accepting = GaugeMetricFamily("ingest_backend_accepting", "1 while the backend accepts posts, 0 while draining")
        accepting.add_metric([], 1 if status.get("state") == "accepting" else 0)
        yield accepting
        yield from _families(status)


def _families(status: dict, prefix: str = "ingest_backend_"):
    for key, value in sorted(status.items()):
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            continue  # strings (state), nested structures: not a number to export
        name = prefix + _NAME_RE.sub("_", str(key))
        if key in COUNTERS:  # only ever grow (named in the hub); the rest are gauges
            family = CounterMetricFamily(name, f"backend status '{key}' (since the backend started)")
        else:
            family = GaugeMetricFamily(name, f"backend status '{key}'")
        family.add_metric([], value)
        yield family


def render(status: Callable[[], dict]) -> bytes:
    """The text exposition: front-end metrics (all gunicorn workers) followed by the backend's."""
    directory = multiprocess_dir()
    if directory:
        text = _front_multiprocess(directory)
    else:
        text = generate_latest(REGISTRY)
    back = CollectorRegistry(auto_describe=False)
    back.register(BackendCollector(status))
    return text + generate_latest(back)


def _front_multiprocess(directory: str, attempts: int = 5) -> bytes:
    """All gunicorn workers' metrics. A worker that has just created its metrics file but not yet
    written its header makes the reader fail (struct.error on an empty mmap): read again shortly."""
    import struct
    import time

    for attempt in range(attempts):
        front = CollectorRegistry()
        multiprocess.MultiProcessCollector(front, path=directory)
        try:
            return generate_latest(front)
        except (struct.error, ValueError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def worker_exited(pid: int) -> None:
    """gunicorn child_exit hook: drop a dead worker's live gauges (its counters stay summed)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
