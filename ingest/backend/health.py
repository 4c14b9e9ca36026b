"""The backend's health status: a small JSON file a probe on the same machine can judge.

An autohealing probe asks the frontend's `/healthz`, which must answer from its own loop; what it
must know is whether THIS machine's backend still does its job. So the arbiter's loop writes the
facts here (atomically replaced, about once a second) and the frontend judges them
(web/backend_health.py): a file that stops changing means a wedged or dead arbiter; the rest says
whether the puller still turns, how many messages were handed back in the last minute, and for how
long work has waited without a store commit. Facts only, no verdicts: thresholds are the reader's.

The file (every field always present; times on the machine's monotonic clock, which every process
of one boot shares, so a wall-clock step cannot fake staleness):
    pid, time (wall, for people), monotonic, mode (running | draining | stopped),
    pending (articles accepted, not yet stored), held_messages (Pub/Sub messages held),
    commits (store batches so far), last_commit (monotonic or null),
    uncommitted_seconds (how long work has waited without a commit; 0 when there is none),
    nacks_last_minute, puller_seconds (since the puller last turned; null: no puller running),
    dead_letters_waiting (on the dead-letter subscription, counted each minute; null: not counted).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("ingest.health")

WRITE_EVERY = 1.0     # seconds between two writes of the file
NACK_WINDOW = 60.0    # seconds of nacks counted in nacks_last_minute
FILE_NAME = "backend-health.json"


def health_path(settings, journal_path: Path) -> Path:
    """Where the backend writes its health: INGEST_BACKEND_HEALTH, else next to its journal."""
    return settings.backend_health or Path(journal_path).parent / FILE_NAME


class HealthTracker:
    """The facts from successive status snapshots; no clock and no I/O of its own (`now` is passed)."""

    def __init__(self):
        self.commits = 0
        self.last_commit: float | None = None
        self.waiting_since: float | None = None   # work waiting, and no commit since this moment
        self.nacks: collections.deque[tuple[float, int]] = collections.deque()  # (when, cumulative nacks)

    def update(self, now: float, status: dict, mode: str) -> dict:
        commits = status.get("store_batches", self.commits)
        committed = commits > self.commits
        if committed:
            self.last_commit = now
        self.commits = commits
        pending = status.get("depth", 0) + status.get("in_flight", 0) + status.get("unsaved", 0)
        held = status.get("pubsub_held_messages", 0)
        if not pending and not held:
            self.waiting_since = None
        elif self.waiting_since is None or committed:
            self.waiting_since = now  # work arrived on an idle backend, or a commit just happened
        return {"mode": mode, "pending": pending, "held_messages": held, "commits": commits,
                "last_commit": self.last_commit,
                "uncommitted_seconds": round(now - self.waiting_since, 1) if self.waiting_since is not None else 0.0,
                "nacks_last_minute": self._nacks_last_minute(now, status.get("pubsub_nacked")),
                "puller_seconds": status.get("pubsub_puller_seconds"),
                "dead_letters_waiting": status.get("pubsub_dead_letters_waiting")}

    def _nacks_last_minute(self, now: float, total: int | None) -> int:
        if total is None:  # no Pub/Sub intake (or none left): nothing handed back
            return 0
        self.nacks.append((now, total))
        while len(self.nacks) > 1 and self.nacks[1][0] <= now - NACK_WINDOW:
            self.nacks.popleft()  # keep one sample at or before the window's start
        return total - self.nacks[0][1]


class HealthFile:
    """The arbiter's side: `tick` from its loop (throttled to WRITE_EVERY), `stopped` on the way out."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tracker = HealthTracker()
        self.next_write = 0.0
        self.last_error = ""

    def tick(self, now: float, mode: str, status) -> None:
        """`status` is called only when a write is due (it reads the journal's numbers)."""
        if now < self.next_write:
            return
        self.next_write = now + WRITE_EVERY
        try:
            self.write(now, self.tracker.update(now, status(), mode))
        except Exception as exc:  # a full disk must not stop the loop; the reader then sees a stale file
            self._warn(exc)

    def stopped(self) -> None:
        try:
            now = time.monotonic()
            self.write(now, self.tracker.update(now, {}, "stopped"))
        except Exception as exc:
            self._warn(exc)

    def write(self, now: float, facts: dict) -> None:
        body = json.dumps({"pid": os.getpid(), "time": round(time.time(), 3), "monotonic": round(now, 3), **facts})
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(body + "\n")
        os.replace(tmp, self.path)  # a reader sees the old file or the new one, never half of one
        self.last_error = ""

    def _warn(self, exc: Exception) -> None:
        if str(exc) != self.last_error:  # once per distinct failure, not once a second
            self.last_error = str(exc)
            log.warning("cannot write the health file %s: %s", self.path, exc)
