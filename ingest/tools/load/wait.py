"""The backend's counters from GET /readyz, and the wait until it has processed what a run got accepted.

A 202 means "on disk", not "counted". The counters (read through the frontend's /readyz JSON, whether 200
or 503; never a store read) run since the backend started, so a baseline is read before sending, and the
wait ends when `processed - processed_before + quarantined - quarantined_before >= accepted` and the
backend is idle (`depth`, `in_flight`, `unsaved` and `journal_articles` all 0): the backend also processes
other clients' articles, so what the wait establishes is "the backend is idle and has processed at least
what this run sent". Without a baseline (the backend was unreachable before sending) or when the counters
went backwards (the backend restarted), idle alone decides: an empty journal means every accepted article
was committed or quarantined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from .send import FAILED, error_detail

WAIT_POLL = 0.25  # seconds between two reads of /readyz while waiting
UNREACHABLE_GIVE_UP = 15.0  # a frontend that answers nothing at all for this long ends the wait
COUNTER_FIELDS = ("accepted", "duplicates", "processed", "in_flight", "unsaved", "quarantined", "journal_articles",
                  "depth")
REQUIRED_COUNTERS = ("processed", "in_flight", "unsaved")


@dataclass(frozen=True)
class Reading:
    """One GET /readyz: the backend's counters, or why there are none (`lasting`: asking again will not help)."""

    counters: dict | None
    why: str | None = None
    lasting: bool = False
    unreachable: bool = False  # the frontend itself answered nothing


def read_counters(client: httpx.Client, timeout: float = 10.0) -> Reading:
    """The backend's counters since it started, from the frontend's /readyz JSON, 200 and 503 alike."""
    try:
        response = client.get("/readyz", timeout=timeout)
    except FAILED as exc:
        return Reading(None, f"the frontend did not answer GET /readyz ({type(exc).__name__})", unreachable=True)
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if isinstance(body, dict) and all(_count(body.get(k)) is not None for k in REQUIRED_COUNTERS):
        return Reading({k: _count(body.get(k)) or 0 for k in COUNTER_FIELDS})
    detail = error_detail(response) if isinstance(body, dict) and "error" in body else f"HTTP {status}"
    # 200 (or a client error) without counters: this frontend does not report them, and will not
    lasting = status < 500 and status not in (408, 429)
    return Reading(None, f"GET /readyz gave no backend counters ({detail})", lasting=lasting)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def restarted(before: dict, now: dict) -> bool:
    """Counters run since the backend started: any going backwards means it started again meanwhile."""
    return now["accepted"] < before["accepted"] or now["processed"] < before["processed"]


def progress_of(before: dict | None, now: dict) -> int | None:
    """Articles processed (or quarantined) since the baseline; None without a usable one."""
    if before is None or restarted(before, now):
        return None
    return now["processed"] - before["processed"] + max(0, now["quarantined"] - before["quarantined"])


def drained(before: dict | None, now: dict, accepted: int) -> bool:
    """The backend is idle and has processed (or quarantined) at least `accepted` articles since `before`.

    Idle: nothing queued, held by a worker, waiting for the store, or uncommitted in the journal. Without
    a baseline, or after a restart, idle alone decides: the journal holds every accepted article until
    the commit that counted it (or its quarantine), so an empty one means this run's are all done.
    """
    if now["depth"] or now["in_flight"] or now["unsaved"] or now["journal_articles"]:
        return False
    done = progress_of(before, now)
    return done is None or done >= accepted


@dataclass
class WaitResult:
    drained: bool
    seconds: float
    before: dict | None
    after: dict | None  # the last counters read
    note: str | None = None  # why it did not drain, or what to know about how it did
    interrupted: bool = False

    @property
    def processed(self) -> int | None:
        """The backend's processed counter since the baseline (other clients' articles included)."""
        if self.before is None or self.after is None or restarted(self.before, self.after):
            return None
        return self.after["processed"] - self.before["processed"]

    @property
    def quarantined(self) -> int | None:
        if self.before is None or self.after is None or restarted(self.before, self.after):
            return None
        return max(0, self.after["quarantined"] - self.before["quarantined"])


def wait_for_backend(client: httpx.Client, before: dict | None, accepted: int, timeout: float, bar=None,
                     poll: float | None = None, request_timeout: float = 10.0) -> WaitResult:
    """Poll /readyz until `drained`, the timeout, a frontend that will never tell, or Ctrl-C."""
    poll = WAIT_POLL if poll is None else poll
    started = time.monotonic()
    deadline = started + timeout
    last: dict | None = None
    why: str | None = None
    silent_since: float | None = None
    was_restarted = False
    try:
        while True:
            reading = read_counters(client, min(request_timeout, max(0.5, deadline - time.monotonic())))
            now = time.monotonic()
            if reading.counters is not None:
                last, why, silent_since = reading.counters, None, None
                was_restarted = was_restarted or (before is not None and restarted(before, last))
                _show_wait(bar, before, last, accepted)
                if drained(before, last, accepted):
                    return WaitResult(True, now - started, before, last,
                                      "the backend restarted during the run; its empty journal says every accepted "
                                      "article was committed" if was_restarted else None)
            else:
                why = reading.why
                if reading.lasting:
                    return WaitResult(False, now - started, before, last, f"cannot wait: {why}")
                if reading.unreachable:
                    silent_since = now if silent_since is None else silent_since
                    if now - silent_since >= UNREACHABLE_GIVE_UP:
                        return WaitResult(False, now - started, before, last,
                                          f"gave the wait up: {why} for {now - silent_since:.0f} s")
                else:
                    silent_since = None
            if now >= deadline:
                return WaitResult(False, now - started, before, last,
                                  _timeout_note(timeout, before, last, accepted, why))
            time.sleep(min(poll, max(0.0, deadline - now)))
    except KeyboardInterrupt:
        return WaitResult(False, time.monotonic() - started, before, last, "interrupted while waiting for the backend",
                          interrupted=True)


def _show_wait(bar, before: dict | None, now: dict, accepted: int) -> None:
    if bar is None:
        return
    bar.set_postfix(queued=now["depth"], in_flight=now["in_flight"], unsaved=now["unsaved"], refresh=False)
    done = progress_of(before, now)  # after the postfix: the update that redraws shows both from one reading
    if done is not None:
        bar.update(min(done, accepted) - bar.n)


def _timeout_note(timeout: float, before: dict | None, last: dict | None, accepted: int, why: str | None) -> str:
    note = f"the backend had not processed everything after --wait-timeout {timeout:g} s"
    if last is not None:
        done = progress_of(before, last)
        progress = f"processed {done} of the {accepted} accepted, " if done is not None else ""
        note += (f" ({progress}queued {last['depth']}, in flight {last['in_flight']}, unsaved {last['unsaved']}, "
                 f"uncommitted in the journal {last['journal_articles']})")
    if why:
        note += f"; last: {why}"
    return note
