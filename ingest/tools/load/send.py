"""One request to its fate, with the retry rules; `Stats` keeps every fate for the report.

Fates: accepted (202), duplicate (202, but the server had already accepted that publication and id: not
counted again), rejected (any other 4xx/5xx that retrying cannot fix), lost (gave up after retries) or
unknown (a 504 `outcome_unknown` or a 502 for a request that cannot be resent safely: it may or may not be
counted).

Retries: 503/429 (nothing was queued) wait for `Retry-After` (or an exponential backoff) and try again; so
do failures before the whole request reached the server (connect and write errors and timeouts). A 504
(`outcome_unknown`: the backend went away after the request may have reached it) or a 502 from a proxy is
resent the same way only when every article in the request has an id; otherwise its articles are reported
"unknown" and the run stops. A failure after the request may have been delivered (read timeout, dropped
connection) is retried the same way only when every article in the request has an id: the server then
deduplicates, so a retry of a request that did arrive comes back as duplicates, not as articles counted
twice. A request with any article without an id is not resent after such a failure (resending could count
its articles twice): it is reported as lost, with the reason, and the run stops. Connection failures of
either kind are retried at most CONNECT_RETRIES times, within --max-retries and --max-retry-time.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

from .plan import Work

RETRY_STATUSES = frozenset({429, 503})  # the server says nothing was queued: always resent
MAYBE_QUEUED_STATUSES = frozenset({502, 504})  # it may have been queued: resent only when every article has an id
AUTH_STATUSES = frozenset({401, 403})
# Raised before the whole request reached the server, so it cannot have been queued: safe to resend.
SAFE_TO_RETRY = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)
# Raised once the request may have been delivered (read timeout or error, the server hanging up before
# answering, or an answer whose body cannot be decoded, such as a bad Content-Encoding from a proxy):
# the articles may be queued already. Safe to resend only when every one of them has an id.
MAYBE_DELIVERED = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.DecodingError)
FAILED = (httpx.TransportError, httpx.DecodingError)  # no usable answer: retried or reported, never raised
# Nothing listens at the address (or nothing answers the connection): the stack is not running.
CANNOT_CONNECT = frozenset(cls.__name__ for cls in (httpx.ConnectError, httpx.ConnectTimeout))
MAX_SINGLE_WAIT = 30.0  # never sleep longer than this on one Retry-After
CONNECT_RETRIES = 5  # about 3 s of backoff: a frontend that is down stays down; say so soon


@dataclass
class Stats:
    """Every request's fate so far, updated by the sender threads under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0  # answered 202 but already accepted before (same publication and id): counted once
    rejected: Counter = field(default_factory=Counter)  # articles by status code
    rejected_examples: dict = field(default_factory=dict)  # status -> "where: error detail"
    lost: int = 0
    lost_reasons: Counter = field(default_factory=Counter)
    unknown: int = 0  # answered 504 outcome_unknown (or 502) and not resendable: maybe counted, maybe not
    unknown_reasons: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)  # seconds per HTTP request that got a 202
    settled: int = 0
    running: int = 0  # sender threads still working

    def add(self, **deltas) -> None:
        with self.lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_SINGLE_WAIT)


def backoff(attempt: int) -> float:
    """Exponential with jitter: 0.1 s, 0.2 s, ... capped at 5 s."""
    return random.uniform(0.5, 1.0) * min(5.0, 0.1 * 2 ** (attempt - 1))


def may_resend(exc: Exception, work: Work) -> bool:
    """Is resending `work` after this failure safe: before delivery always, after it only with every id."""
    if isinstance(exc, SAFE_TO_RETRY):
        return True
    return work.idempotent and isinstance(exc, MAYBE_DELIVERED)


def error_detail(response: httpx.Response) -> str:
    """The frontend's JSON error as one phrase ("queue_full: ..."), else the status line."""
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return f"{body['error']}: {body.get('detail', '')}".strip(": ")
    except ValueError:
        pass
    return response.reason_phrase or str(response.status_code)


class Sender:
    """Sends one Work with retries and records its fate in Stats; sets `stop` when the run must end."""

    def __init__(self, client: httpx.Client, stats: Stats, stop: threading.Event, max_retries: int,
                 max_retry_time: float):
        self.client = client
        self.stats = stats
        self.stop = stop
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self.fatal: str | None = None  # why the run was stopped
        self.auth_failed = False
        self.answered = False  # the frontend gave at least one HTTP answer
        self.cannot_connect = False  # the run stopped because nothing ever answered a connection

    def send(self, work: Work) -> None:
        self.stats.add(sent=work.articles)
        started = time.monotonic()
        attempt = connect_failures = 0
        maybe_delivered = False  # an earlier attempt failed after sending: the articles may be queued already
        while True:
            attempt += 1
            reason, delay, after_sending = self._attempt(work, attempt)
            if reason is None:
                return
            maybe_delivered = maybe_delivered or after_sending
            connect_failures += not reason.isdigit()
            if (attempt > self.max_retries or connect_failures > CONNECT_RETRIES
                    or time.monotonic() - started + delay > self.max_retry_time):
                self.cannot_connect = self.cannot_connect or (reason in CANNOT_CONNECT and not self.answered)
                unknown = " (outcome unknown)" if maybe_delivered else ""
                self._give_up(work, f"gave up after {reason}{unknown}",
                              f"gave up after {attempt} attempt{'s' if attempt > 1 else ''} over "
                              f"{time.monotonic() - started:.1f}s (last: {reason})"
                              + ("; an attempt failed after sending, so it may have been queued"
                                 if maybe_delivered else ""))
                return
            if self._wait(delay, work, reason if maybe_delivered else None):
                return
            with self.stats.lock:
                self.stats.retries += 1
                self.stats.retry_reasons[reason] += 1

    def _wait(self, delay: float, work: Work, maybe_delivered: str | None) -> bool:
        """Sleep before a retry; True when the run ends meanwhile.

        The request is then "not sent", unless an attempt failed after sending (`maybe_delivered`
        names why): it may be queued, so it counts as lost with an unknown outcome instead.
        """
        try:
            stopped = self.stop.wait(delay)
        except KeyboardInterrupt:  # the main thread sends the probe itself
            self.stop.set()
            self._abandon(work, maybe_delivered)
            raise
        if stopped:
            self._abandon(work, maybe_delivered)
        return stopped

    def _abandon(self, work: Work, maybe_delivered: str | None) -> None:
        if maybe_delivered is None:
            self.stats.add(sent=-work.articles)
            return
        with self.stats.lock:
            self.stats.lost += work.articles
            self.stats.settled += work.articles
            self.stats.lost_reasons[f"{maybe_delivered} (outcome unknown: stopped before the retry)"] += work.articles

    def _attempt(self, work: Work, attempt: int) -> tuple[str | None, float, bool]:
        """(None, 0, False) when settled; else (retry reason, seconds to wait, whether it failed after sending)."""
        t0 = time.perf_counter()
        try:
            response = self.client.post(work.path, content=work.body, headers={"Content-Type": "application/json"})
        except FAILED as exc:
            self.stats.add(requests=1)
            name = type(exc).__name__
            if may_resend(exc, work):
                return name, backoff(attempt), not isinstance(exc, SAFE_TO_RETRY)
            why = "some of its articles have no id" if isinstance(exc, MAYBE_DELIVERED) else "retrying cannot help"
            self._give_up(work, f"{name} (outcome unknown)",
                          f"{name} after the request was sent (not resent: it may have been queued, and {why})")
            return None, 0.0, False
        latency = time.perf_counter() - t0
        self.answered = True
        self.stats.add(requests=1)
        status = response.status_code
        if status == 202:
            self._accepted(work, response, latency)
            return None, 0.0, False
        if status in RETRY_STATUSES or (status in MAYBE_QUEUED_STATUSES and work.idempotent):
            wait = retry_after(response)
            delay = (wait + random.uniform(0, 0.2 * wait + 0.05)) if wait is not None else backoff(attempt)
            return str(status), delay, status in MAYBE_QUEUED_STATUSES
        if status in MAYBE_QUEUED_STATUSES:
            self._unknown(work, response)
            return None, 0.0, False
        self._rejected(work, response)
        return None, 0.0, False

    def _accepted(self, work: Work, response: httpx.Response, latency: float) -> None:
        try:
            answer = response.json()
            accepted = int(answer.get("accepted", work.articles))
            duplicates = int(answer.get("duplicates", 0))
        except (ValueError, AttributeError, TypeError):
            accepted, duplicates = work.articles, 0
        accepted = min(max(accepted, 0), work.articles)
        duplicates = min(max(duplicates, 0), work.articles - accepted)
        missing = work.articles - accepted - duplicates
        with self.stats.lock:
            self.stats.accepted += accepted
            self.stats.duplicates += duplicates
            self.stats.settled += work.articles
            self.stats.latencies.append(latency)
            if missing:
                self.stats.lost += missing
                self.stats.lost_reasons["202 for fewer articles than sent"] += missing

    def _rejected(self, work: Work, response: httpx.Response) -> None:
        status = str(response.status_code)
        with self.stats.lock:
            self.stats.rejected[status] += work.articles
            self.stats.settled += work.articles
            self.stats.rejected_examples.setdefault(status, f"{work.where}: {error_detail(response)}")
        if response.status_code in AUTH_STATUSES:
            self.auth_failed = True
            self._stop_run(f"the frontend refused the API key ({status} {error_detail(response)}); "
                           "check --api-key / INGEST_API_KEY")

    def _unknown(self, work: Work, response: httpx.Response) -> None:
        """A 504/502 for a request with an article without an id: resending could count it twice, and
        the server cannot say whether it was queued. Neither accepted nor rejected; the run stops."""
        detail = error_detail(response)
        with self.stats.lock:
            self.stats.unknown += work.articles
            self.stats.settled += work.articles
            self.stats.unknown_reasons[f"{response.status_code} {detail.split(':', 1)[0]}"] += work.articles
        self._stop_run(f"{work.where}: {response.status_code} {detail} (not resent: some of its articles have no id, "
                       "so it may be counted once or not at all); stopped sending")

    def _give_up(self, work: Work, reason: str, message: str) -> None:
        """Lost articles stop the run: whatever made us give up would hit every later request too."""
        with self.stats.lock:
            self.stats.lost += work.articles
            self.stats.settled += work.articles
            self.stats.lost_reasons[reason] += work.articles
        self._stop_run(f"{work.where}: {message}; stopped sending")

    def _stop_run(self, why: str) -> None:
        if self.fatal is None:
            self.fatal = why
        self.stop.set()
