"""The `multiprocessing.managers` server that exposes the intake, hardened for an open port.

The stdlib server starts a thread per accepted connection before authentication and answers a
failed handshake with a pickled traceback. Here a connection is authenticated first, by a small
pool with a deadline (SO_RCVTIMEO/SO_SNDTIMEO), newest first, with a bound on connections
waiting; a client that fails, stalls or sends garbage is closed without a word. Only an authenticated connection gets
its own thread, and those are bounded too.
"""

from __future__ import annotations

import collections
import logging
import threading
from multiprocessing import connection
from multiprocessing.managers import BaseManager, Server
from traceback import format_exc

from ..core.protocol import INTAKE, SERIALIZER, set_io_timeout
from .intake import Intake

log = logging.getLogger("ingest.manager")

# seconds an unauthenticated client may take to prove it has the key: the manager listens on
# loopback, where a real client answers in a millisecond; a silent one holds a thread this long
HANDSHAKE_TIMEOUT = 0.5
CROWDED_HANDSHAKE_TIMEOUT = 0.1  # ... while other connections wait for a handshake thread
HANDSHAKE_THREADS = 32
HANDSHAKES_WAITING = 1024      # beyond this, the oldest waiting connection is closed
MAX_CLIENTS = 512           # authenticated connections (frontend threads x workers, with room)
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn; a burst of connects must not drop SYNs


class IntakeServer(Server):
    def __init__(self, registry, address, authkey, serializer):
        super().__init__(registry, address, authkey, serializer)
        try:
            self.listener._listener._socket.listen(BACKLOG)  # the stdlib's backlog is 16
        except AttributeError:  # another Python's internals: keep its backlog
            pass
        self._pending: collections.deque = collections.deque()  # accepted, not yet authenticated
        self._cond = threading.Condition()
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.refused = 0
        for n in range(HANDSHAKE_THREADS):
            threading.Thread(target=self._handshaker, name=f"manager-handshake-{n}", daemon=True).start()

    def accepter(self):
        """Accept without blocking on anyone; the newest connections are authenticated first, so a
        crowd of silent connections made earlier cannot keep a real client waiting."""
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                continue
            with self._cond:
                self._pending.append(conn)
                if len(self._pending) > HANDSHAKES_WAITING:
                    self._pending.popleft().close()  # the oldest unauthenticated one goes
                    self.refused += 1
                self._cond.notify()

    def _handshaker(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                conn = self._pending.pop()  # newest first
                crowded = len(self._pending) > HANDSHAKE_THREADS
            self._authenticate(conn, CROWDED_HANDSHAKE_TIMEOUT if crowded else HANDSHAKE_TIMEOUT)

    def _authenticate(self, conn, deadline: float) -> None:
        try:
            set_io_timeout(conn, deadline)
            connection.deliver_challenge(conn, self.authkey)
            connection.answer_challenge(conn, self.authkey)
            request = conn.recv()
            ignore, funcname, args, kwds = request
            if funcname not in self.public:
                raise ValueError(funcname)
            set_io_timeout(conn, 0)
        except Exception:  # wrong key, garbage, too slow: close, say nothing
            self.refused += 1
            conn.close()
            return
        if not self._clients.acquire(blocking=False):
            log.warning("manager: %d clients connected already; refusing another", MAX_CLIENTS)
            conn.close()
            return
        threading.Thread(target=self._serve, args=(conn, funcname, args, kwds), daemon=True,
                         name="manager-client").start()

    def _serve(self, conn, funcname, args, kwds) -> None:
        try:
            try:
                msg = ("#RETURN", getattr(self, funcname)(conn, *args, **kwds))
            except Exception:  # an authenticated caller's own error: it may read the traceback
                msg = ("#TRACEBACK", format_exc())
            try:
                conn.send(msg)
            except Exception:
                pass
        except SystemExit:  # serve_client() exits on EOF
            pass
        finally:
            self._clients.release()
            conn.close()


class _ServerManager(BaseManager):
    pass


def serve(intake: Intake, address: tuple[str, int], authkey: bytes) -> threading.Thread:
    """Serve `intake` on `address` from a daemon thread of the calling process."""
    _ServerManager.register(INTAKE, callable=lambda: intake, exposed=["put_many", "status"])
    server = IntakeServer(_ServerManager._registry, address, authkey, SERIALIZER)  # binds now: in use fails here
    thread = threading.Thread(target=server.serve_forever, name="manager", daemon=True)
    thread.start()
    log.info("queue manager listening on %s:%d", *server.address)
    return thread
