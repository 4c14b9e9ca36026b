"""The manager port faces whoever can reach it: without the authkey nobody can starve it, and
nothing but the protocol's challenge is ever sent to an unauthenticated client."""

from __future__ import annotations

import resource
import socket
import time

import psutil
import pytest

from tests.support import start_backend

pytestmark = pytest.mark.slow


def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def test_an_authenticated_client_is_served_within_a_second_while_5000_unauthenticated_connections_are_held(tmp_path):
    _raise_fd_limit(12000)
    backend = start_backend(tmp_path, "--workers", "1")
    held: list[socket.socket] = []
    try:
        backend.status()
        for _ in range(5000):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(backend.address)
            except (BlockingIOError, InterruptedError):
                pass
            held.append(s)
        time.sleep(0.5)  # the flood has reached the backend (its accept queue), and the connections stay open
        threads = psutil.Process(backend.proc.pid).num_threads()
        from ingest.client import IngestClient

        fresh = IngestClient(backend.address, backend.authkey.encode())  # a new connection, mid-flood
        started = time.monotonic()
        status = fresh.status()
        assert time.monotonic() - started < 1.0 and status["state"] == "accepting"
        assert threads < 60, f"{threads} threads: a thread per unauthenticated connection?"
        assert fresh.put_many([("BBC", "Angela Merkel in Berlin.", None)])["accepted"] == 1
    finally:
        for s in held:
            s.close()
        assert backend.stop() == 0


def test_garbage_before_authentication_gets_no_traceback_and_a_closed_connection(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1")
    try:
        for garbage in (b"GET / HTTP/1.0\r\n\r\n", b"\x00\x00\x00\x10" + b"x" * 16, b"\xff" * 64):
            with socket.create_connection(backend.address, timeout=10) as s:
                s.sendall(garbage)
                received = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:  # closed with our garbage unread: also just closed
                        break
                    if not chunk:
                        break
                    received += chunk
            assert b"Traceback" not in received and b"File \"" not in received and b"python" not in received.lower()
        with socket.create_connection(backend.address, timeout=10) as s:  # silent client: closed by the deadline
            started = time.monotonic()
            s.recv(65536)  # the challenge
            assert s.recv(65536) == b"" and time.monotonic() - started < 10
        assert backend.status()["state"] == "accepting"
    finally:
        assert backend.stop() == 0
