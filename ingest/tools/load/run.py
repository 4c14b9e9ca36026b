"""One run: read the dataset through, send it from `concurrency` threads, wait for the backend, report.

Threads share one httpx.Client (its connection pool is thread-safe); each takes the next request's worth
of articles and sends it (`send.Sender`). The first request goes alone: a wrong key or a frontend that is
not there ends the run after one request. Bad rows: the dataset is read through once before anything is
sent, so a malformed row stops the run before the first request (unless the dataset skips them). The main
thread alone draws the progress bars; Ctrl-C stops sending, lets requests in flight settle, and reports.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from itertools import islice

import httpx

from ... import __version__
from ..datasets import Dataset, DatasetError
from .plan import Run, Work, plan
from .report import Report, build_report
from .send import Sender, Stats
from .wait import read_counters, wait_for_backend

BAD_ROWS_SHOWN = 1000  # bad rows listed on stderr (all of them, up to the dataset's cap, in --json)


class UsageError(Exception):
    """Bad arguments or environment: one line on stderr, exit 2."""


@dataclass(frozen=True)
class Outcome:
    """What a run ended with: its report, and whether it was interrupted or never reached the frontend."""

    report: Report
    interrupted: bool = False
    cannot_connect: bool = False  # nothing ever answered a connection: the stack is not running


def run(cfg: Run) -> Outcome:
    """Send the dataset, wait for the backend (unless told not to)."""
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
          baseline: dict | None) -> Outcome:
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

    bar = tqdm(total=total, unit="article", desc="ingest-load", disable=not cfg.progress, mininterval=0.25,
               file=sys.stderr)
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
    report = build_report(cfg, total, skipped, stats, wall, sender.fatal, interrupted, waited, bad_rows)
    return Outcome(report, interrupted, sender.cannot_connect)


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
