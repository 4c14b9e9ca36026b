"""The bounded input queue and the `multiprocessing.managers` server that exposes it.

The queue lives in the backend's main process (`Intake`). The frontend reaches it through
`IngestClient`, which puts posts all-or-nothing and reads depth and state. Full, draining and
unreachable are distinct exceptions, raised at once: the caller answers 503, nothing hangs.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from multiprocessing import connection, managers
from multiprocessing.managers import BaseManager
from typing import Callable, Iterable

log = logging.getLogger("ingest.queues")

Wire = tuple  # (publication, content): posts travel as plain tuples


class QueueFull(Exception):
    """The input queue has no room for the whole request."""


class Draining(Exception):
    """The backend is shutting down and accepts nothing more."""


class BackendUnavailable(Exception):
    """The backend's manager cannot be reached (not started, restarting, wrong authkey)."""


class Intake:
    """A bounded FIFO with an accepting/draining switch, shared by the manager and the hub."""

    COUNTERS = ("accepted", "rejected_full", "rejected_draining")  # status() keys that only grow

    def __init__(self, capacity: int, on_put: Callable[[], None] | None = None,
                 stats: Callable[[], dict] | None = None):
        self.capacity = capacity
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._accepting = True
        self._on_put = on_put or (lambda: None)
        self._stats = stats or (lambda: {})
        self.accepted = 0
        self.rejected_full = 0
        self.rejected_draining = 0

    # -- called by the frontend through the manager ---------------------
    def put_many(self, posts: list) -> int:
        """Enqueue every post or none; returns how many were accepted."""
        items = [(str(p[0]), str(p[1])) for p in posts]
        with self._lock:
            if not self._accepting:
                self.rejected_draining += len(items)
                raise Draining("backend is draining")
            if len(self._items) + len(items) > self.capacity:
                self.rejected_full += len(items)
                raise QueueFull(f"input queue full ({len(self._items)}/{self.capacity})")
            self._items.extend(items)
            self.accepted += len(items)
        self._on_put()
        return len(items)

    def put(self, publication: str, content: str) -> int:
        return self.put_many([(publication, content)])

    def status(self) -> dict:
        with self._lock:
            status = {
                "state": "accepting" if self._accepting else "draining",
                "depth": len(self._items),
                "capacity": self.capacity,
                "accepted": self.accepted,
                "rejected_full": self.rejected_full,
                "rejected_draining": self.rejected_draining,
            }
        status.update(self._stats())
        return status

    # -- called inside the backend --------------------------------------
    def take(self, n: int) -> list:
        with self._lock:
            count = min(n, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def push_front(self, items: Iterable) -> None:
        """Give back posts a dead worker never flushed; they go first, past the bound."""
        with self._lock:
            self._items.extendleft(reversed(list(items)))
        self._on_put()

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accepting(self) -> bool:
        return self._accepting


def _nodelay_client(address, family=None, authkey=None):
    """multiprocessing's Client with TCP_NODELAY: its handshake ends with two small writes in a row,
    which Nagle's algorithm and delayed ACKs turn into ~40 ms per new connection (~200 ms per proxy)."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = connection.Connection(sock.detach())
    if authkey is not None:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    return conn


SERIALIZER = "ingest-pickle"
managers.listener_client[SERIALIZER] = (connection.Listener, _nodelay_client)


class _ServerManager(BaseManager):
    pass


class _ClientManager(BaseManager):
    pass


_ClientManager.register("intake")


def serve(intake: Intake, address: tuple[str, int], authkey: bytes) -> threading.Thread:
    """Serve `intake` on `address` from a daemon thread of the calling process."""
    _ServerManager.register("intake", callable=lambda: intake, exposed=["put_many", "put", "status"])
    manager = _ServerManager(address=address, authkey=authkey, serializer=SERIALIZER)
    server = manager.get_server()  # binds now: an address in use fails here, loudly
    thread = threading.Thread(target=server.serve_forever, name="manager", daemon=True)
    thread.start()
    log.info("queue manager listening on %s:%d", *server.address)
    return thread


class IngestClient:
    """The frontend's handle on the backend queue; reconnects by itself after a backend restart."""

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
            proxy = manager.intake()
            self._local.proxy = proxy
        return proxy

    def _call(self, method: str, *args):
        for attempt in (1, 2):  # a stale connection after a backend restart fails once
            try:
                return getattr(self._proxy(), method)(*args)
            except (QueueFull, Draining):
                raise
            except Exception as exc:  # refused, reset, EOF, auth failure: all mean "not reachable"
                self._local.proxy = None
                if attempt == 2 or not isinstance(exc, (EOFError, BrokenPipeError, ConnectionResetError)):
                    raise BackendUnavailable(f"backend at {self.address[0]}:{self.address[1]} unreachable: {type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def put_many(self, posts: list) -> int:
        return self._call("put_many", [tuple(p) for p in posts])

    def put(self, publication: str, content: str) -> int:
        return self._call("put", publication, content)

    def status(self) -> dict:
        return self._call("status")
