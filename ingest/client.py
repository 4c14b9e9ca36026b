"""The frontend's handle on the backend's intake, over the `multiprocessing.managers` protocol.

It reconnects by itself after a backend restart, and every answer it gives is true:

- `BackendUnavailable`: the put was certainly not enqueued (refused or failed before it was sent,
  or the backend answered with an error), like `QueueFull`, `Draining` and `TooLarge`: a 503/413.
- A call that breaks after the put may have been sent (EOF, reset, broken pipe: the backend died
  between journaling it and answering) is sent again under the same request token until
  `deadline` seconds have passed: the backend answers a token it already journaled with the first
  answer and adds nothing. The first answer from a backend is the truth.
- `OutcomeUnknown`: the backend stayed away past the deadline after the put may have reached it
  (the frontend answers 504 `outcome_unknown`).
"""

from __future__ import annotations

import secrets
import threading
import time
from multiprocessing.managers import BaseManager
from typing import Callable

from .core.protocol import (INTAKE, SERIALIZER, BackendUnavailable, Draining, OutcomeUnknown, QueueFull, TooLarge,
                            set_io_timeout)

__all__ = ["IngestClient", "BackendUnavailable", "Draining", "OutcomeUnknown", "QueueFull", "TooLarge", "new_token"]

DEFAULT_DEADLINE = 30.0   # seconds a put that may have been sent is retried for before OutcomeUnknown
STATUS_TIMEOUT = 5.0      # seconds a status call (/readyz, /metrics) waits for a backend that stopped answering
RETRY_PAUSE = (0.05, 0.5)  # first and longest pause between two attempts of such a put
ANSWERED = (QueueFull, Draining, TooLarge)  # the backend's own answers: nothing was enqueued


class _ClientManager(BaseManager):
    pass


_ClientManager.register(INTAKE)


def new_token() -> str:
    """A request's name for the backend's journal: 128 random bits."""
    return secrets.token_hex(16)


class IngestClient:
    def __init__(self, address: tuple[str, int], authkey: bytes | Callable[[], bytes],
                 deadline: float = DEFAULT_DEADLINE):
        self.address = address
        self._authkey = authkey
        self.deadline = deadline
        self._local = threading.local()

    def _proxy(self):
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            authkey = self._authkey() if callable(self._authkey) else self._authkey
            manager = _ClientManager(address=self.address, authkey=authkey, serializer=SERIALIZER)
            manager.connect()
            proxy = getattr(manager, INTAKE)()
            self._local.proxy = proxy
        return proxy

    def _connected(self):
        """A proxy with an open connection, made without sending a put: whatever fails here, the
        put was not sent. A cached connection the backend has closed (it restarted; an idle
        manager connection has nothing to read otherwise) is dropped and made again first."""
        proxy = self._proxy()
        conn = getattr(getattr(proxy, "_tls", None), "connection", None)
        if conn is not None:
            try:
                stale = conn.poll(0)
            except (OSError, EOFError, ValueError):
                stale = True
            if stale:
                self._forget()
                proxy = self._proxy()
        if getattr(getattr(proxy, "_tls", None), "connection", None) is None:
            proxy._connect()
        return proxy

    def _unreachable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"backend at {self.address[0]}:{self.address[1]} unreachable: {type(exc).__name__}")

    def _timed(self, proxy, seconds: float):
        """The proxy, its connection's reads and writes bounded by `seconds`: a backend that is alive
        but does not answer (stopped, swapping) fails the call instead of holding the thread."""
        conn = getattr(getattr(proxy, "_tls", None), "connection", None)
        if conn is not None:
            set_io_timeout(conn, max(0.001, seconds))
        return proxy

    def _call(self, method: str, *args):
        for attempt in (1, 2):  # a stale connection after a backend restart fails once
            try:
                return getattr(self._timed(self._connected(), STATUS_TIMEOUT), method)(*args)
            except ANSWERED:
                raise
            except Exception as exc:  # refused, reset, EOF, auth failure: all mean "not reachable"
                self._forget()
                if attempt == 2 or not isinstance(exc, (EOFError, BrokenPipeError, ConnectionResetError)):
                    raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def _forget(self) -> None:
        """Drop the proxy and its connection. multiprocessing caches one connection per (address,
        thread) for every proxy, and never drops a broken one: a restarted backend on the same
        address would be unreachable from this thread forever."""
        proxy, self._local.proxy = getattr(self._local, "proxy", None), None
        tls = getattr(proxy, "_tls", None)
        conn = getattr(tls, "connection", None)
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
            del tls.connection

    def put_many(self, posts: list, token: str | None = None) -> dict:
        """All or nothing; returns {"accepted": n, "duplicates": m}.

        `token` names the request (one is made when not given); raises BackendUnavailable,
        QueueFull, Draining or TooLarge when nothing was enqueued, OutcomeUnknown when the put may
        have been enqueued and the backend did not answer again within `deadline` seconds."""
        posts = [tuple(p) for p in posts]
        token = token or new_token()
        give_up = time.monotonic() + self.deadline
        pause, sent, attempts = RETRY_PAUSE[0], False, 0
        while True:
            attempts += 1
            try:
                proxy = self._connected()
            except Exception as exc:  # refused, auth failure, timeout: this attempt sent nothing
                self._forget()
                if not sent:
                    raise self._unreachable(exc) from None
                failure = exc
            else:
                try:
                    return self._timed(proxy, max(0.001, give_up - time.monotonic())).put_many(posts, token)
                except ANSWERED:
                    raise
                except (EOFError, OSError) as exc:  # broken after sending: it may have been journaled
                    self._forget()
                    sent, failure = True, exc
                except Exception as exc:  # an error answered by the backend: its put_many enqueued nothing
                    self._forget()
                    raise self._unreachable(exc) from None
            left = give_up - time.monotonic()
            if left <= 0:
                raise OutcomeUnknown(
                    f"backend at {self.address[0]}:{self.address[1]} broke off after the request may have reached it "
                    f"and did not answer again within {self.deadline:g}s ({attempts} attempts, last: "
                    f"{type(failure).__name__})")
            time.sleep(min(pause, left))
            pause = min(pause * 2, RETRY_PAUSE[1])

    def put(self, publication: str, content: str, id: str | None = None, token: str | None = None) -> dict:
        return self.put_many([(publication, content, id)], token)

    def status(self) -> dict:
        return self._call("status")
