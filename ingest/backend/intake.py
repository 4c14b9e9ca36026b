"""The input queue and the `multiprocessing.managers` server that exposes it to the frontend.

`Intake` lives in the backend's main process: the manager's threads call `put_many` and `status`,
the arbiter's loop calls `take` and `push_front`. It holds `Entry`s in order; the hub takes
them out and gives back the ones a dead worker never flushed. Nothing is answered before the
journal has it on disk.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from dataclasses import dataclass
from multiprocessing.managers import BaseManager
from typing import Callable, Iterable

from ..core.protocol import INTAKE, SERIALIZER, Draining, QueueFull

log = logging.getLogger("ingest.intake")


@dataclass(slots=True)
class Entry:
    """One accepted article inside the backend."""

    seq: int
    publication: str
    content: str
    kills: int = 0  # workers that died while this article was in their micro-batch

    def post(self) -> tuple[str, str]:
        return (self.publication, self.content)


class Intake:
    """A bounded FIFO with an accepting/draining switch, shared by the manager and the hub."""

    def __init__(self, capacity: int, on_put: Callable[[], None] | None = None):
        self.capacity = capacity
        self._items: collections.deque[Entry] = collections.deque()
        self._lock = threading.Lock()
        self._accepting = True
        self._on_put = on_put or (lambda: None)
        self._status: dict = {}
        self._seq = itertools.count(1)
        self.accepted = 0
        self.duplicates = 0
        self.rejected_full = 0
        self.rejected_draining = 0

    def put_many(self, posts: list) -> dict:
        """Enqueue every post or none: {"accepted": n, "duplicates": m}."""
        items = [(str(p[0]), str(p[1])) for p in posts]
        with self._lock:
            if not self._accepting:
                self.rejected_draining += len(items)
                raise Draining("backend is draining")
            if len(self._items) + len(items) > self.capacity:
                self.rejected_full += len(items)
                raise QueueFull(f"input queue full ({len(self._items)}/{self.capacity})")
            self._items.extend(Entry(next(self._seq), pub, content) for pub, content in items)
            self.accepted += len(items)
        self._on_put()
        return {"accepted": len(items), "duplicates": 0}

    def status(self) -> dict:
        with self._lock:
            status = {
                "state": "accepting" if self._accepting else "draining",
                "depth": len(self._items),
                "capacity": self.capacity,
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected_full": self.rejected_full,
                "rejected_draining": self.rejected_draining,
            }
        status.update(self._status)
        return status

    def publish(self, snapshot: dict) -> None:
        self._status = snapshot

    def take(self, n: int) -> list[Entry]:
        with self._lock:
            count = min(n, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def contents(self, entries):
        return [(e.publication, e.content) for e in entries]

    def push_front(self, items: Iterable[Entry]) -> None:
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


class _ServerManager(BaseManager):
    pass


def serve(intake: Intake, address: tuple[str, int], authkey: bytes) -> threading.Thread:
    """Serve `intake` on `address` from a daemon thread of the calling process."""
    _ServerManager.register(INTAKE, callable=lambda: intake, exposed=["put_many", "status"])
    manager = _ServerManager(address=address, authkey=authkey, serializer=SERIALIZER)
    server = manager.get_server()  # binds now: an address in use fails here, loudly
    thread = threading.Thread(target=server.serve_forever, name="manager", daemon=True)
    thread.start()
    log.info("queue manager listening on %s:%d", *server.address)
    return thread
