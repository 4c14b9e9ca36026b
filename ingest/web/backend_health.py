"""The probes' view of the backend on this machine: its health file (backend/health.py) judged.

In a fleet the instance group's autohealing asks the frontend's `/healthz`; a frontend that is up
says nothing about the backend beside it, which may be wedged (its loop or its Pub/Sub puller
stopped turning, or the process is gone), nack-looping (handing messages back, which the
subscription turns into redeliveries and dead letters) or not committing (work waiting, no store
commit). With INGEST_BACKEND_HEALTH naming the backend's health file, `/healthz` and `/readyz`
answer 503 with the reason in any of those cases, and the machine is replaced. Answered from the
HTTP loop (web/server.py): reading a small local file never waits behind the app's threads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

HEALTHY = json.dumps({"status": "ok"}).encode() + b"\n"


@dataclass(frozen=True)
class BackendHealth:
    """The file to read and the limits it is judged by (INGEST_BACKEND_* settings)."""

    path: Path
    stall_seconds: float = 30.0
    commit_seconds: float = 300.0
    nacks_per_minute: int = 100

    @classmethod
    def from_settings(cls, settings) -> "BackendHealth | None":
        """None unless INGEST_BACKEND_HEALTH is set (one machine: off by default)."""
        if settings is None or settings.backend_health is None:
            return None
        return cls(Path(settings.backend_health), settings.backend_stall_seconds, settings.backend_commit_seconds,
                   settings.backend_nacks_per_minute)

    def facts(self) -> dict | None:
        """The file's numbers, for /metrics (a fleet VM's frontend has no manager to ask); None if unreadable."""
        try:
            facts = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return facts if isinstance(facts, dict) else None

    def problem(self) -> tuple[str, str] | None:
        """(error code, reason) when the backend is not doing its job, else None."""
        try:
            facts = json.loads(self.path.read_text())
        except FileNotFoundError:
            return "backend_not_running", f"the backend has written no health status at {self.path} (not started?)"
        except (OSError, ValueError) as exc:
            return "backend_unknown", f"the backend's health status {self.path} is unreadable: {exc}"
        try:
            return judge(facts, time.monotonic(), self)
        except (KeyError, TypeError, ValueError) as exc:
            return "backend_unknown", f"the backend's health status {self.path} lacks {exc}"


def judge(facts: dict, now: float, limits: BackendHealth) -> tuple[str, str] | None:
    """The verdict on one reading of the file; `now` on the monotonic clock the backend wrote with."""
    pid = facts["pid"]
    age = max(0.0, now - facts["monotonic"])
    if facts["mode"] == "stopped":
        return "backend_not_running", f"the backend (pid {pid}) has stopped"
    if age > limits.stall_seconds:
        return "backend_wedged", (f"the backend (pid {pid}) is wedged or dead: its loop has written no status for "
                                  f"{age:.0f}s (limit {limits.stall_seconds:g}s)")
    puller = facts["puller_seconds"]
    if puller is not None and puller + age > limits.stall_seconds:
        return "backend_wedged", (f"the backend's Pub/Sub puller (pid {pid}) has not turned for {puller + age:.0f}s "
                                  f"(limit {limits.stall_seconds:g}s)")
    if facts["nacks_last_minute"] > limits.nacks_per_minute:
        return "backend_nack_looping", (f"the backend (pid {pid}) is handing messages back: "
                                        f"{facts['nacks_last_minute']} in the last minute "
                                        f"(limit {limits.nacks_per_minute})")
    waited = facts["uncommitted_seconds"] + (age if facts["uncommitted_seconds"] else 0.0)
    if waited > limits.commit_seconds:
        return "backend_not_committing", (f"the backend (pid {pid}) is not committing: {facts['pending']} articles and "
                                          f"{facts['held_messages']} messages wait, no store commit for {waited:.0f}s "
                                          f"(limit {limits.commit_seconds:g}s)")
    return None


def probe_answer(path: str, health: BackendHealth | None) -> tuple[int, bytes] | None:
    """What the HTTP loop answers itself: `/healthz` always, `/readyz` only when the backend
    fails (else the app answers it, with its own checks). None: the app answers."""
    if path not in ("/healthz", "/readyz"):
        return None
    problem = health.problem() if health is not None else None
    if problem is None:
        return (200, HEALTHY) if path == "/healthz" else None
    code, reason = problem
    head = {"status": "unhealthy"} if path == "/healthz" else {"ready": False}
    return 503, json.dumps({**head, "error": code, "detail": reason}).encode() + b"\n"
