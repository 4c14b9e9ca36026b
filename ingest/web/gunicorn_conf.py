"""gunicorn's settings for ingest-frontend, made from its FrontendSettings (`options(settings)`).

Nothing here reads the environment: the command validated every setting once before gunicorn
started, so a bad value is one line, not a traceback in every worker.
"""

from __future__ import annotations

from ..config import FrontendSettings

_FORMAT = "%(asctime)s %(levelname)-7s [frontend %(process)d] %(name)s: %(message)s"


def options(settings: FrontendSettings) -> dict:
    """gunicorn's settings by name."""
    level = settings.log_level
    return {
        "bind": [settings.bind],  # loopback unless told otherwise
        "workers": settings.frontend_workers,
        # an asyncio loop reads whole requests (deadlines on headers and body, a bound on connections);
        # only complete requests reach the app threads, so a slow or idle client never holds one
        "worker_class": "ingest.web.server.BufferingWorker",
        # threads: a request mostly waits on the queue manager or the store, so a few per worker pay off
        "threads": settings.frontend_threads,
        "timeout": settings.frontend_timeout,
        "graceful_timeout": 30,  # SIGTERM: stop accepting, finish in-flight requests for up to this long
        "keepalive": 5,
        "preload_app": False,  # each worker builds its own app after the fork: no shared sockets or DB handles
        "proc_name": "ingest-frontend",
        # gunicorn >= 22 silently drops header names with underscores; the course client sends
        # `access_token`. "dangerous" maps it as older gunicorn did (`access-token` lands in the same
        # environ key, and duplicates are joined with a comma, so a mixed pair never matches a key).
        "header_map": "dangerous",
        # request line, status, size, milliseconds: never headers (they carry the API key) nor bodies
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
        "errorlog": "-",
        "loglevel": level.lower(),
        "logconfig_dict": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"ingest": {"format": _FORMAT}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "ingest",
                                    "stream": "ext://sys.stderr"}},
            "root": {"level": level, "handlers": ["stderr"]},
            "loggers": {
                "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
                "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
            },
        },
        "on_starting": on_starting,
        "child_exit": child_exit,
    }


def on_starting(server):
    # import now, in the master and before any fork: child_exit runs inside gunicorn's SIGCHLD
    # handler, and a first import there can be interrupted by the next signal half-way through
    from . import metrics  # noqa: F401

    server.log.info("ingest-frontend starting on %s with %d workers", ",".join(server.cfg.bind), server.cfg.workers)


def child_exit(server, worker):
    """A dead worker's live gauges must not linger in the multiprocess metrics directory."""
    from . import metrics  # already imported by on_starting: a dictionary lookup

    metrics.worker_exited(worker.pid)
