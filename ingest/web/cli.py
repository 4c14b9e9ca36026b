"""`ingest-frontend`: the Flask app under gunicorn, configured by ingest.web.gunicorn_conf.

Prometheus' multiprocess mode needs PROMETHEUS_MULTIPROC_DIR before prometheus_client is first
imported, so main() settles it (a fresh temporary directory when unset) before importing the app.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gunicorn.app.base import BaseApplication

from ..config import ConfigError, load_frontend_settings
from ..core.argtypes import positive_int
from ..core.exitcodes import ExitCode
from ..lifetime import die_with_parent

METRIC_FILE_PREFIXES = ("counter_", "gauge_", "histogram_", "summary_")


class FrontendApplication(BaseApplication):
    """gunicorn driven from code: settings from gunicorn_conf, then the command line."""

    def __init__(self, overrides: dict):
        self.overrides = overrides
        super().__init__()

    def load_config(self):
        from . import gunicorn_conf

        for name in dir(gunicorn_conf):
            if name in self.cfg.settings:
                self.cfg.set(name, getattr(gunicorn_conf, name))
        for name, value in self.overrides.items():
            self.cfg.set(name, value)

    def load(self):
        from .app import create_app

        return create_app()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingest-frontend",
        description="The ingestiond HTTP front door (Flask under gunicorn).",
        epilog="It reads INGEST_MANAGER_ADDRESS, INGEST_AUTHKEY, INGEST_STORE, INGEST_API_KEYS, "
               "INGEST_READ_API_KEYS, INGEST_MAX_BATCH and INGEST_MAX_BODY_BYTES like the backend.",
    )
    p.add_argument("--bind", default=os.environ.get("INGEST_BIND", "127.0.0.1:8000"),
                   help="HOST:PORT to listen on (env INGEST_BIND, default 127.0.0.1:8000)")
    p.add_argument("--workers", type=positive_int, default=os.environ.get("INGEST_FRONTEND_WORKERS", "2"),
                   help="gunicorn worker processes (env INGEST_FRONTEND_WORKERS, default 2)")
    return p


def metrics_dir() -> tuple[Path, bool]:
    """The multiprocess metrics directory, emptied of a previous run's files; (path, is_temporary)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        path = Path(tempfile.mkdtemp(prefix="ingest-frontend-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return path, True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        if stale.name.startswith(METRIC_FILE_PREFIXES):
            stale.unlink()
    return path, False


def bind_problem(address: str) -> str | None:
    """Why gunicorn could not listen on HOST:PORT, said before it retries five times and exits."""
    import errno
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return "not HOST:PORT" if not address.startswith("unix:") else None
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            return "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        workers = positive_int(str(args.workers))
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--workers: {exc}")
    try:  # fail here, clearly, rather than in every gunicorn worker
        load_frontend_settings()
    except ConfigError as exc:
        print(f"ingest-frontend: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    problem = bind_problem(args.bind)
    if problem:
        print(f"ingest-frontend: error: cannot listen on {args.bind}: {problem} (set --bind or INGEST_BIND)",
              file=sys.stderr)
        return ExitCode.USAGE
    try:
        path, temporary = metrics_dir()
    except OSError as exc:
        print(f"ingest-frontend: error: metrics directory: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if os.environ.get("SUPERVISOR_ENABLED"):  # started by supervisord: never outlive it
        die_with_parent()
    master = os.getpid()
    try:
        FrontendApplication({"bind": [args.bind], "workers": workers}).run()
    finally:
        # gunicorn's forked workers unwind through here too: only the master cleans up
        if temporary and os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
