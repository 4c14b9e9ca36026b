"""A saver: writes the batches the arbiter hands it, retrying transient store errors with backoff.

A batch that still fails is answered FAILED, and the arbiter keeps it (same batch id) for a
later attempt or the dead-letter file: a delta is never dropped silently.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from . import logs, wire
from .stores import PermanentStoreError, StoreError, open_store

log = logging.getLogger("ingest.saver")


class Saver:
    def __init__(self, conn, settings, number: int):
        self.conn = conn
        self.settings = settings
        self.number = number
        self.store = None

    def run(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not self.boot():
            return wire.EXIT_BOOT_ERROR
        self.conn.send((wire.READY, os.getpid()))
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    log.error("saver %d: arbiter went away", self.number)
                    return 1
                if message[0] == wire.STOP:
                    self.conn.send((wire.DONE, None))
                    return 0
                self.conn.send(self.save(wire.delta_from_wire(message[1])))
        finally:
            self.store.close()

    def boot(self) -> bool:
        try:
            self.store = open_store(self.settings.store_url)
        except Exception as exc:  # bad path, missing credentials, unknown URL
            log.error("saver %d: cannot open store %s: %s", self.number, self.settings.store_url, exc)
            self.conn.send((wire.BOOT_ERROR, f"cannot open store: {exc}"))
            return False
        return True

    def save(self, delta) -> tuple:
        commits_before = getattr(self.store, "commits", 0)
        try:
            writes = self.write(delta)
        except (RetryError, StoreError, PermanentStoreError) as exc:
            reason = str(exc.last_attempt.exception()) if isinstance(exc, RetryError) else str(exc)
            log.error("saver %d: batch=%s articles=%d not stored: %s", self.number, delta.batch_id, delta.articles, reason)
            return (wire.FAILED, delta.batch_id, reason)
        except Exception as exc:  # a bug or an unexpected client error: keep the batch, say why
            log.exception("saver %d: batch=%s failed unexpectedly", self.number, delta.batch_id)
            return (wire.FAILED, delta.batch_id, f"{type(exc).__name__}: {exc}")
        commits = getattr(self.store, "commits", commits_before + 1) - commits_before
        log.debug("saver %d: batch=%s articles=%d writes=%d", self.number, delta.batch_id, delta.articles, writes)
        return (wire.SAVED, delta.batch_id, writes, commits)

    def write(self, delta) -> int:
        for attempt in Retrying(
            retry=retry_if_exception_type(StoreError),
            stop=stop_after_attempt(self.settings.store_retries),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            before_sleep=lambda rs: log.warning(
                "saver %d: batch=%s attempt %d failed (%s); retrying",
                self.number, delta.batch_id, rs.attempt_number, rs.outcome.exception()),
        ):
            with attempt:
                return self.store.apply(delta)
        raise AssertionError("unreachable")


def saver_main(conn, settings, number: int) -> None:
    logs.setup(settings.log_level, f"saver-{number}")
    sys.exit(Saver(conn, settings, number).run())
