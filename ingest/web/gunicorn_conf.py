"""gunicorn settings for ingest-frontend (read by frontend_cli; also usable with `gunicorn -c`).

Everything comes from the environment so one supervisord.conf serves a laptop and a VM:
INGEST_BIND, INGEST_FRONTEND_WORKERS, INGEST_FRONTEND_THREADS, INGEST_FRONTEND_TIMEOUT,
INGEST_LOG_LEVEL.
"""

import os

bind = os.environ.get("INGEST_BIND", "127.0.0.1:8000")  # loopback unless told otherwise
workers = int(os.environ.get("INGEST_FRONTEND_WORKERS", "2"))
# an asyncio loop reads whole requests (deadlines on headers and body, a bound on connections);
# only complete requests reach the app threads, so a slow or idle client never holds one
worker_class = "ingest.web.server.BufferingWorker"
# threads: a request mostly waits on the queue manager or the store, so a few per worker pay off
threads = int(os.environ.get("INGEST_FRONTEND_THREADS", "4"))
timeout = int(os.environ.get("INGEST_FRONTEND_TIMEOUT", "30"))
graceful_timeout = 30  # SIGTERM: stop accepting, finish in-flight requests for up to this long
keepalive = 5
preload_app = False  # each worker builds its own app after the fork: no shared sockets or DB handles
proc_name = "ingest-frontend"

# gunicorn >= 22 silently drops header names with underscores; the course client sends
# `access_token`. "dangerous" maps it as older gunicorn did (`access-token` lands in the same
# environ key, and duplicates are joined with a comma, so a mixed pair never matches a key).
header_map = "dangerous"

# request line, status, size, milliseconds: never headers (they carry the API key) nor bodies
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
loglevel = os.environ.get("INGEST_LOG_LEVEL", "INFO").lower()

_FORMAT = "%(asctime)s %(levelname)-7s [frontend %(process)d] %(name)s: %(message)s"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"ingest": {"format": _FORMAT}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ingest", "stream": "ext://sys.stderr"}},
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}


def on_starting(server):
    # import now, in the master and before any fork: child_exit runs inside gunicorn's SIGCHLD
    # handler, and a first import there can be interrupted by the next signal half-way through
    from ingest.web import metrics  # noqa: F401

    server.log.info("ingest-frontend starting on %s with %d workers", ",".join(server.cfg.bind), server.cfg.workers)


def child_exit(server, worker):
    """A dead worker's live gauges must not linger in the multiprocess metrics directory."""
    from ingest.web import metrics  # already imported by on_starting: a dictionary lookup

    metrics.worker_exited(worker.pid)
