"""What every child of the arbiter shares: boot, signals, hello, the request loop, exit codes.

A child answers exactly one message per request (see wire.py). SIGTERM and SIGINT are ignored:
the arbiter drives shutdown, so a signal to the whole process group cannot cut a drain short.
A child never outlives the arbiter: Linux SIGKILLs it when the arbiter dies (PR_SET_PDEATHSIG), so
a saver can never go on writing under the arbiter's writer name after a `kill -9` of the arbiter
alone; the next start (a new arbiter) owns that name and replays the journal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

from .. import logs
from ..core.exitcodes import ExitCode
from . import wire

log = logging.getLogger("ingest.child")

PR_SET_PDEATHSIG = 1


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
            return ExitCode.BOOT_ERROR
        self.conn.send((wire.READY, os.getpid()))
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    log.error("%s: the arbiter went away", self.name)
                    return ExitCode.UNFINISHED
                if not self.handle(message):
                    return ExitCode.OK
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


def die_with_arbiter(arbiter_pid: int | None) -> bool:
    """Ask Linux to SIGKILL us when the arbiter dies; then make sure it has not died already (a
    parent that died before the prctl call sends nothing). True if the signal is set (Linux)."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if arbiter_pid is not None and os.getppid() != arbiter_pid:
        os._exit(ExitCode.UNFINISHED)  # the arbiter is gone (we were reparented): do nothing on its behalf
    return armed


def child_main(cls: type[Child], conn, settings, number: int, arbiter_pid: int | None = None) -> None:
    """Entry point of a spawned child process. The signal is bound to the thread that spawned us:
    the arbiter spawns children from its main thread only."""
    die_with_arbiter(arbiter_pid)
    logs.setup(settings.log_level, f"{cls.role}-{number}")
    sys.exit(cls(conn, settings, number).run())
