"""One live writer per name: a lease in the store, claimed at a saver's boot and renewed by a heartbeat.

A writer name (`{backend id}-{slot}`, see docs/firestore-layout.md) owns documents; two live
processes under one name would fight over them. So the process that commits under a name first
claims it: a lease record (a `writers` row in SQLite, `ingest_writers/{writer}` in Firestore) with a
holder (host, pid, start time and a random id drawn once per process start) and an expiry. A
heartbeat thread in that process renews it every `renew_every` seconds (default 10) for `ttl`
seconds (default 30).

- A claimant finding a live lease of another holder fails with LeaseHeld, one line naming both.
- An expired lease, a lease released by a clean stop, or one whose holder is a dead process on this
  same host (a SIGKILLed saver, a crashed backend being restarted) is taken over.
- A holder whose lease was taken by someone else (it stalled past the expiry) learns it at its next
  renewal or commit: `ensure()` raises LeaseLost and the store refuses to commit.

Store-specific storage is a `LeaseBackend`: acquire(record, ttl, may_take) / renew(holder_id, ttl) ->
bool / release(holder_id).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from .base import PermanentStoreError, StoreError

log = logging.getLogger("ingest.store.lease")

LEASE_TTL = 30.0
RENEW_EVERY = 10.0


class LeaseHeld(PermanentStoreError):
    """Another live process holds this writer name (the claimant's boot fails: exit 3)."""


class LeaseLost(PermanentStoreError):
    """This process's lease on its writer name was taken by another: it must not commit any more."""


@dataclass(frozen=True)
class Holder:
    id: str            # random, drawn once per process start
    host: str
    pid: int
    started: str       # when this process drew its id, ISO 8601 UTC
    proc_start: str    # the kernel's start time of the pid (/proc/PID/stat), to tell a reused pid

    def describe(self) -> str:
        return f"{self.host}:{self.pid} (started {self.started}, id {self.id})"

    def as_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> "Holder":
        return cls(id=str(d.get("id") or ""), host=str(d.get("host") or "?"), pid=int(d.get("pid") or 0),
                   started=str(d.get("started") or "?"), proc_start=str(d.get("proc_start") or ""))


_CURRENT: dict[int, Holder] = {}


def current_holder() -> Holder:
    """This process's identity as a lease holder (a new one after a fork)."""
    pid = os.getpid()
    if pid not in _CURRENT:
        _CURRENT[pid] = Holder(id=secrets.token_hex(6), host=socket.gethostname(), pid=pid,
                               started=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               proc_start=_proc_start(pid) or "")
    return _CURRENT[pid]


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields else None  # field 22, starttime


def holder_is_dead(other: Holder) -> bool:
    """True only when `other` is a process of this host that is certainly gone."""
    if other.host != socket.gethostname() or other.pid <= 0:
        return False
    if other.pid == os.getpid():
        return other.id != current_holder().id  # this very pid, but an earlier process that had it
    try:
        os.kill(other.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's live process
    fields = _proc_stat(other.pid)
    if fields is None or fields[0] in ("Z", "X"):  # a zombie (killed, not yet reaped: a container's pid 1 may never)
        return True
    return bool(other.proc_start) and fields[19] != other.proc_start  # the pid was reused


def refusal(writer: str, held: Holder, claimant: Holder, expires_in: float) -> str:
    return (f"writer {writer} is held by {held.describe()}, lease valid for {max(expires_in, 0):.0f}s more; "
            f"claimant {claimant.describe()} refused (two live backends with one writer name? "
            f"stop the other, or wait {max(expires_in, 0):.0f}s if it is gone)")


class Lease:
    """A claimed writer name; `ensure()` before each commit, `release()` at a clean stop."""

    def __init__(self, writer: str, holder: Holder, backend, ttl: float = LEASE_TTL,
                 renew_every: float | None = None):
        self.writer = writer
        self.holder = holder
        self.backend = backend
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else min(RENEW_EVERY, ttl / 3)
        self.lost: str | None = None        # why, once taken by another
        self._confirmed = 0.0               # monotonic time before the last successful claim/renewal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self) -> "Lease":
        started = time.monotonic()
        self.backend.acquire(self.writer, self.holder, self.ttl)
        self._confirmed = started
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.writer}", daemon=True)
        self._thread.start()
        log.info("writer %s claimed by %s (lease %.0fs, renewed every %.0fs)", self.writer, self.holder.describe(),
                 self.ttl, self.renew_every)
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception as exc:  # a blip: try again next beat; ensure() renews in-line once it matters
                log.warning("writer %s: lease renewal failed: %s", self.writer, exc)

    def renew(self) -> None:
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            started = time.monotonic()
            other = self.backend.renew(self.writer, self.holder, self.ttl)
            if other is not None:
                self.lost = (f"writer {self.writer}: the lease of {self.holder.describe()} was taken by "
                             f"{other.describe()}; this process stops committing")
                log.error("%s", self.lost)
                raise LeaseLost(self.lost)
            self._confirmed = started

    def ensure(self) -> None:
        """Raise LeaseLost if another holder took the name; renew first when the lease may have expired."""
        if self.lost:
            raise LeaseLost(self.lost)
        if time.monotonic() - self._confirmed >= self.ttl - self.renew_every:
            try:
                self.renew()
            except (LeaseLost, StoreError, PermanentStoreError):
                raise
            except Exception as exc:
                raise StoreError(f"writer {self.writer}: cannot renew its lease: {exc}") from exc

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self._lock:
            if self.lost:
                return
            self.lost = f"writer {self.writer}: lease released"
        try:
            self.backend.release(self.writer, self.holder)
        except Exception as exc:  # it expires by itself
            log.warning("writer %s: releasing its lease failed (it expires in %.0fs): %s", self.writer, self.ttl, exc)


class NoLease:
    """The none store: nothing to claim."""

    writer = ""
    lost = None

    def ensure(self) -> None:
        pass

    def release(self) -> None:
        pass
