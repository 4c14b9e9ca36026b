"""`ingest-frontend`: the Flask app under gunicorn, behind the asyncio HTTP layer (server.py).

Every setting is read and validated here, once, before gunicorn starts (a bad one is one line and
exit status 2); gunicorn's own settings are made from them (gunicorn_conf.py), and the app and
the worker class get the same FrontendSettings object through the application (`settings`).
Prometheus' multiprocess mode needs PROMETHEUS_MULTIPROC_DIR before prometheus_client is first
imported, so main() settles it (a fresh temporary directory when unset) before importing the app.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from gunicorn.app.base import BaseApplication

from ..config import ConfigError, FrontendSettings, load_frontend_settings
from ..core.exitcodes import ExitCode
from ..lifetime import die_with_parent
from .gunicorn_conf import options

METRIC_FILE_PREFIXES = ("counter_", "gauge_", "histogram_", "summary_")


class FrontendApplication(BaseApplication):
    """gunicorn driven from code, with the settings the command validated."""

    def __init__(self, settings: FrontendSettings, argv: Sequence[str] = ()):
        self.settings = settings
        self.argv = argv
        self.loaded = False
        super().__init__()

    def load_config(self):
        """At start and on SIGHUP: the variables and flags again (a key file may have changed);
        on a reload a bad value is logged and the running settings stay."""
        if self.loaded:
            try:
                self.settings = load_frontend_settings(self.argv)
            except ConfigError as exc:
                print(f"ingest-frontend: reload kept the running settings: {exc}", file=sys.stderr)
        self.loaded = True
        for name, value in options(self.settings).items():
            self.cfg.set(name, value)

    def load(self):
        from .app import create_app

        return create_app(self.settings)


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
    argv = sys.argv[1:] if argv is None else argv
    try:  # fail here, clearly, rather than in every gunicorn worker
        settings = load_frontend_settings(argv)
    except ConfigError as exc:
        print(f"ingest-frontend: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    problem = bind_problem(settings.bind)
    if problem:
        print(f"ingest-frontend: error: cannot listen on {settings.bind}: {problem} (set --bind or INGEST_BIND)",
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
        FrontendApplication(settings, argv).run()
    finally:
        # gunicorn's forked workers unwind through here too: only the master cleans up
        if temporary and os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
