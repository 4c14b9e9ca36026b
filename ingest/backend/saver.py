"""A saver: writes the batches the arbiter hands it, retrying transient store errors with backoff.

A batch that still fails is answered FAILED, and the arbiter keeps it (same batch id) for a
later attempt: a delta is never dropped silently.
"""

from __future__ import annotations

import logging

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from ..core.exitcodes import ExitCode
from ..core.models import Delta
from ..stores import PermanentStoreError, StoreError, open_store
from ..stores.base import GroupsRefused, RulesRefused
from ..stores.lease import LeaseHeld, LeaseLost
from . import wire
from .child import BootFailure, Child

log = logging.getLogger("ingest.saver")


class Saver(Child):
    role = "saver"

    def __init__(self, conn, settings, number: int):
        super().__init__(conn, settings, number)
        self.store = None
        self.lease = None

    def boot(self) -> None:
        """Open the store and prove it takes writes: no credentials or a read-only file fail here, once."""
        try:
            self.store = open_store(self.settings.store_url, writer=self.settings.writer or None,
                                    days_kept=self.settings.days_kept)
            self.store.check()
            self.claim_rules()
            # one live process per writer name: a second one fails here, naming both (exit 3)
            self.lease = self.store.claim_writer(self.settings.writer or "solo")
        except (LeaseHeld, RulesRefused) as exc:  # fatal even for a respawned saver: waiting changes nothing
            self._close_store()
            self.conn.send((wire.FATAL, str(exc)))
            raise BootFailure(str(exc)) from None
        except Exception as exc:  # bad path, missing credentials, unknown URL, read-only, a held lease
            self._close_store()
            raise BootFailure(f"cannot write to store {self.settings.store_url.split('?', 1)[0]}: {exc}") from None

    def claim_rules(self) -> None:
        """The store records the counting rules it was written with and refuses others (exit 3)."""
        claim = getattr(self.store, "claim_rules", None)
        if claim is None:  # Firestore, until its layouts keep labels and the rules record (issue 27)
            raise RulesRefused(f"store {self.settings.store_url.split('?', 1)[0]} does not keep entity labels or "
                               "record counting rules yet, so it cannot take counts under "
                               f"{self.settings.counting_rules}; use SQLite (--store sqlite:///PATH) or --no-persist")
        claim(self.settings.counting_rules)

    def reopen(self) -> None:
        """After a failed batch: a fresh handle (a database reopened read-only stays read-only)."""
        try:
            self.store.close()
        except Exception:  # closing a broken handle may fail too
            log.debug("%s: closing the store failed", self.name, exc_info=True)
        try:
            self.store = open_store(self.settings.store_url, writer=self.settings.writer or None,
                                    days_kept=self.settings.days_kept)
            self.store.lease = self.lease  # its commits stop too if the lease is lost
        except Exception as exc:
            log.error("%s: cannot reopen the store: %s", self.name, exc)
            raise SystemExit(ExitCode.UNFINISHED) from None  # the arbiter respawns this saver; its batch is retried

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def teardown(self) -> None:
        if self.lease is not None:  # a clean stop frees the name at once (a crash: after the TTL)
            self.lease.release()
            self.lease = None
        self._close_store()

    def handle(self, message: tuple) -> bool:
        if message[0] == wire.STOP:
            self.conn.send((wire.DONE, None))
            return False
        try:
            self.conn.send(self.save(message[1]))
        except LeaseLost as exc:  # another process took our name: commit nothing more, stop the backend
            log.error("%s: %s", self.name, exc)
            self.lease = None  # not ours to release
            self.conn.send((wire.FATAL, str(exc)))
            return False
        return True

    def save(self, delta: Delta) -> tuple:
        commits_before = getattr(self.store, "commits", 0)
        try:
            writes = self.write(delta)
        except LeaseLost:
            raise
        except GroupsRefused as exc:  # nothing applied: the hub sends the groups one by one
            log.info("%s: batch=%s of %d groups refused: %s", self.name, delta.batch_id, len(delta.groups), exc)
            return (wire.REFUSED, delta.batch_id, exc.groups, str(exc))
        except (RetryError, StoreError, PermanentStoreError) as exc:
            reason = str(exc.last_attempt.exception()) if isinstance(exc, RetryError) else str(exc)
            log.error("%s: batch=%s articles=%d not stored: %s", self.name, delta.batch_id, delta.articles, reason)
            self.reopen()
            return (wire.FAILED, delta.batch_id, reason)
        except Exception as exc:  # a bug or an unexpected client error: keep the batch, say why
            log.exception("%s: batch=%s failed unexpectedly", self.name, delta.batch_id)
            return (wire.FAILED, delta.batch_id, f"{type(exc).__name__}: {exc}")
        commits = getattr(self.store, "commits", commits_before + 1) - commits_before
        log.debug("%s: batch=%s articles=%d writes=%d", self.name, delta.batch_id, delta.articles, writes)
        return (wire.SAVED, delta.batch_id, writes, commits)

    def write(self, delta: Delta) -> int:
        for attempt in Retrying(
            retry=retry_if_exception_type(StoreError),
            stop=stop_after_attempt(self.settings.store_retries),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            before_sleep=lambda rs: log.warning(
                "%s: batch=%s attempt %d failed (%s); retrying",
                self.name, delta.batch_id, rs.attempt_number, rs.outcome.exception()),
        ):
            with attempt:
                return self.store.apply(delta)
        raise AssertionError("unreachable")
