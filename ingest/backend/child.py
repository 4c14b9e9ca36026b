"""What every child of the arbiter shares: boot, signals, hello, the request loop, exit codes.

A child answers exactly one message per request (see wire.py). SIGTERM and SIGINT are ignored:
the arbiter drives shutdown, so a signal to the whole process group cannot cut a drain short.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from .. import logs
from . import wire

log = logging.getLogger("ingest.child")


class BootFailure(Exception):
    """The child cannot work at all (no model, no store): the arbiter stops instead of respawning."""


class Child:
    role = "child"

    def __init__(self, conn, settings, number: int):
        self.conn = conn
        self.settings = settings
        self.number = number

    @property
    def name(self) -> str:
        return f"{self.role} {self.number}"

    def run(self) -> int:
        self.ignore_signals()
        try:
            self.boot()
        except BootFailure as exc:
            log.error("%s: %s", self.name, exc)
            self.conn.send((wire.BOOT_ERROR, str(exc)))
            return wire.EXIT_BOOT_ERROR
        self.conn.send((wire.READY, os.getpid()))
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    log.error("%s: the arbiter went away", self.name)
                    return 1
                if not self.handle(message):
                    return 0
        finally:
            self.teardown()

    def ignore_signals(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def boot(self) -> None:
        """Build the heavy state here, in the child (a model, a store client)."""

    def handle(self, message: tuple) -> bool:
        """Answer one request; False to exit."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what boot() built."""


def child_main(cls: type[Child], conn, settings, number: int) -> None:
    """Entry point of a spawned child process."""
    logs.setup(settings.log_level, f"{cls.role}-{number}")
    sys.exit(cls(conn, settings, number).run())
