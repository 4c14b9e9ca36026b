"""The frontend's handle on the backend's intake, over the `multiprocessing.managers` protocol.

It reconnects by itself after a backend restart; every failure to reach the backend is one
exception, `BackendUnavailable`, so the caller answers 503 and nothing hangs.
"""

from __future__ import annotations

import threading
from multiprocessing.managers import BaseManager
from typing import Callable

from .core.protocol import INTAKE, SERIALIZER, BackendUnavailable, Draining, QueueFull, TooLarge

__all__ = ["IngestClient", "BackendUnavailable", "Draining", "QueueFull", "TooLarge"]


class _ClientManager(BaseManager):
    pass


_ClientManager.register(INTAKE)


class IngestClient:
    def __init__(self, address: tuple[str, int], authkey: bytes | Callable[[], bytes]):
        self.address = address
        self._authkey = authkey
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

    def _call(self, method: str, *args):
        for attempt in (1, 2):  # a stale connection after a backend restart fails once
            try:
                return getattr(self._proxy(), method)(*args)
            except (QueueFull, Draining, TooLarge):
                raise
            except Exception as exc:  # refused, reset, EOF, auth failure: all mean "not reachable"
                self._forget()
                if attempt == 2 or not isinstance(exc, (EOFError, BrokenPipeError, ConnectionResetError)):
                    raise BackendUnavailable(
                        f"backend at {self.address[0]}:{self.address[1]} unreachable: {type(exc).__name__}") from None
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

    def put_many(self, posts: list) -> dict:
        """All or nothing; returns {"accepted": n, "duplicates": m}."""
        return self._call("put_many", [tuple(p) for p in posts])

    def put(self, publication: str, content: str, id: str | None = None) -> dict:
        return self.put_many([(publication, content, id)])

    def status(self) -> dict:
        return self._call("status")
