"""A handle made on first use in each process: what must never cross a fork.

gunicorn forks its workers after the app may have been built, and a SQLite connection, a gRPC
channel or the pipes to a child process do not survive a fork: a copy inherited from the parent
would be shared with it. `PerProcess` makes its value lazily in the process (and, if asked, the
thread) that uses it, and forgets a value made by another process without touching it.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get()` the value made by `make()` for this process (or this thread of it, `per_thread`)."""

    def __init__(self, make: Callable[[], T], *, per_thread: bool = False,
                 close: Callable[[T], None] | None = None):
        self._make = make
        self._close = close
        self._local = threading.local() if per_thread else None
        self._shared: tuple[int, T] | None = None  # (pid, value) when one value serves all threads
        self._lock = threading.Lock()

    def _slot(self) -> tuple[int, T] | None:
        return getattr(self._local, "made", None) if self._local is not None else self._shared

    def _set(self, made: tuple[int, T] | None) -> None:
        if self._local is not None:
            self._local.made = made
        else:
            self._shared = made

    def get(self) -> T:
        made = self._slot()
        if made is not None and made[0] == os.getpid():
            return made[1]
        with self._lock:
            made = self._slot()
            if made is None or made[0] != os.getpid():  # never made here, or the parent's: make ours
                made = (os.getpid(), self._make())
                self._set(made)
        return made[1]

    def made(self) -> bool:
        """True when this process (thread) holds a value."""
        made = self._slot()
        return made is not None and made[0] == os.getpid()

    def drop(self) -> None:
        """Close this process's (thread's) value, if any; the next `get()` makes a new one."""
        with self._lock:
            made = self._slot()
            self._set(None)
        if made is not None and made[0] == os.getpid() and self._close is not None:
            self._close(made[1])
