"""The intake protocol both sides agree on: the manager's name, serializer and answers.

The backend serves an `intake` object through `multiprocessing.managers`; the frontend calls
`put_many` and `status` on it. Full, draining and unreachable are distinct exceptions so the
front door can answer 503 at once with the right code; each means nothing was enqueued. A put carries
the frontend's token for the request: the backend answers a token it already journaled with the
stored result, so a put resent after a broken call is never counted twice.
"""

from __future__ import annotations

import os
import socket
import struct
from multiprocessing import connection, managers

INTAKE = "intake"
SERIALIZER = "ingest-pickle"
CONNECT_TIMEOUT = 5.0


class QueueFull(Exception):
    """The intake has no room (count, bytes, or disk) for the whole request."""


class TooLarge(Exception):
    """An article is longer than the backend accepts (--max-article-chars)."""


class Draining(Exception):
    """The backend is shutting down and accepts nothing more."""


class BackendUnavailable(Exception):
    """The backend's manager cannot be reached (not started, restarting, wrong authkey): nothing was enqueued."""


class OutcomeUnknown(Exception):
    """A put may have reached the backend (the call broke after sending) and the backend stayed away
    past the request's deadline: its articles may or may not be in the journal (HTTP 504)."""


def set_io_timeout(conn, seconds: float) -> None:
    """A deadline on every read and write of a multiprocessing connection's socket (0: none): a
    peer that stops answering (SIGSTOP, a hung host) raises OSError instead of holding a thread."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        value = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.close()  # the dup only: the option stays on the shared socket


def nodelay_client(address, family=None, authkey=None):
    """multiprocessing's Client with TCP_NODELAY and a deadline on the connect, the handshake and
    every later read and write (CONNECT_TIMEOUT, until a caller sets its own): a backend that
    accepts connections but does not answer (stopped) cannot hold a frontend thread.

    Its handshake ends with two small writes in a row, which Nagle's algorithm and delayed ACKs
    turn into ~40 ms per new connection (~200 ms per proxy).
    """
    sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    conn = connection.Connection(sock.detach())
    set_io_timeout(conn, CONNECT_TIMEOUT)
    if authkey is not None:
        connection.answer_challenge(conn, authkey)
        connection.deliver_challenge(conn, authkey)
    return conn


managers.listener_client[SERIALIZER] = (connection.Listener, nodelay_client)
