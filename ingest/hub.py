"""The routing state of the backend: which child holds what, and what is still owed to the store.

The arbiter's loop feeds it events (a child answered, a child died, time passed) and asks it to
dispatch. It never blocks: it sends only to idle children (see wire.py). Everything accepted is
always in exactly one place: the intake, a worker's unflushed set, the pending delta, a saver's
batch, or the retry list — so a death or a shutdown knows precisely what to give back.
"""

from __future__ import annotations

import collections
import logging
import time
import uuid
from dataclasses import dataclass, field, fields

from . import wire
from .models import Delta, ProcessedPost
from .queues import Intake

log = logging.getLogger("ingest.hub")

MAX_DELIVERIES = 2  # a post whose worker died twice is dropped (counted, logged): a poison pill
RETRY_DELAY = 5.0   # seconds before a failed batch is offered to a saver again


@dataclass
class WorkerSlot:
    number: int
    conn: object
    process: object
    ready: bool = False
    busy_since: float | None = None      # set while a request is outstanding
    unflushed: list = field(default_factory=list)  # posts sent since the last flush
    unflushed_since: float | None = None
    stopping: bool = False


@dataclass
class SaverSlot:
    number: int
    conn: object
    process: object
    ready: bool = False
    batch: Delta | None = None
    busy_since: float | None = None
    stopping: bool = False


@dataclass
class Metrics:
    processed: int = 0
    flushes: int = 0
    store_batches: int = 0
    store_writes: int = 0
    store_commits: int = 0
    store_errors: int = 0
    lost: int = 0
    redelivered: int = 0
    worker_deaths: int = 0
    saver_deaths: int = 0


# status() keys that only ever grow (exported as Prometheus counters): the intake's and every Metrics field
STATUS_COUNTERS = frozenset(Intake.COUNTERS) | {f.name for f in fields(Metrics)}


class Hub:
    def __init__(self, intake: Intake, settings):
        self.intake = intake
        self.settings = settings
        self.workers: dict[int, WorkerSlot] = {}
        self.savers: dict[int, SaverSlot] = {}
        self.pending: dict[str, ProcessedPost] = {}
        self.pending_articles = 0
        self.retry: collections.deque[tuple[float, Delta]] = collections.deque()
        self.given_up: list[Delta] = []  # failed during a drain: bound for the dead-letter file
        self.draining = False
        self.metrics = Metrics()

    # -- children come and go ------------------------------------------------
    def add_worker(self, slot: WorkerSlot) -> None:
        self.workers[slot.number] = slot

    def add_saver(self, slot: SaverSlot) -> None:
        self.savers[slot.number] = slot

    def worker_died(self, number: int) -> None:
        slot = self.workers.pop(number)
        self.metrics.worker_deaths += 1
        if not slot.unflushed:
            return
        again, dropped = [], 0
        for post in slot.unflushed:
            deliveries = (post[2] if len(post) > 2 else 1) + 1
            if deliveries > MAX_DELIVERIES:
                dropped += 1
            else:
                again.append((post[0], post[1], deliveries))
        if again:
            self.intake.push_front(again)
            self.metrics.redelivered += len(again)
            log.warning("worker %d died holding %d unflushed posts: queued again", number, len(again))
        if dropped:
            self.metrics.lost += dropped
            log.error("worker %d died holding %d posts already delivered once before: dropped (lost=%d)",
                      number, dropped, self.metrics.lost)

    def saver_died(self, number: int) -> None:
        slot = self.savers.pop(number)
        self.metrics.saver_deaths += 1
        if slot.batch is not None:
            log.warning("saver %d died during batch=%s: it will be retried (same id, so never twice)",
                        number, slot.batch.batch_id)
            self.retry.appendleft((0.0, slot.batch))

    # -- answers ----------------------------------------------------------------
    def on_worker_message(self, number: int, message: tuple) -> None:
        slot = self.workers[number]
        kind = message[0]
        if kind == wire.READY:
            slot.ready = True
            return
        if kind != wire.DONE:
            log.error("worker %d sent unexpected %r", number, kind)
            return
        slot.busy_since = None
        if message[1] is not None:
            self.take_flush(slot, message[1])

    def take_flush(self, slot: WorkerSlot, flushed: list) -> None:
        for item in flushed:
            post = wire.post_from_wire(item)
            current = self.pending.get(post.key)
            if current is None:
                self.pending[post.key] = post
            else:
                current += post
        self.pending_articles += len(slot.unflushed)
        self.metrics.processed += len(slot.unflushed)
        self.metrics.flushes += 1
        slot.unflushed = []
        slot.unflushed_since = None

    def on_saver_message(self, number: int, message: tuple) -> None:
        slot = self.savers[number]
        kind = message[0]
        if kind == wire.READY:
            slot.ready = True
            return
        batch, slot.batch, slot.busy_since = slot.batch, None, None
        if kind == wire.SAVED:
            self.metrics.store_batches += 1
            self.metrics.store_writes += message[2]
            self.metrics.store_commits += message[3]
        elif kind == wire.FAILED and batch is not None:
            self.metrics.store_errors += 1
            if self.draining:  # its retries are spent and we are stopping: keep it for the next start
                self.given_up.append(batch)
                log.error("batch=%s (%d articles) not stored during the drain: %s", batch.batch_id, batch.articles, message[2])
            else:
                self.retry.append((time.monotonic() + RETRY_DELAY, batch))
                log.error("batch=%s (%d articles) parked for retry: %s", batch.batch_id, batch.articles, message[2])

    # -- dispatch ---------------------------------------------------------------
    def dispatch(self, now: float) -> None:
        self.feed_workers(now)
        self.feed_savers(now)

    def feed_workers(self, now: float) -> None:
        for slot in self.workers.values():
            if not slot.ready or slot.busy_since is not None or slot.stopping:
                continue
            posts = self.intake.take(self.settings.batch_size)
            if posts:
                self.send_worker(slot, (wire.POSTS, [(p[0], p[1]) for p in posts]), now)
                if slot.unflushed_since is None:
                    slot.unflushed_since = now
                slot.unflushed.extend(posts)
            elif slot.unflushed:  # input idle: flush now rather than wait for the timer
                self.send_worker(slot, (wire.FLUSH,), now)
        for slot in self.workers.values():  # the flush interval, for workers kept busy
            if slot.unflushed_since is not None and now - slot.unflushed_since >= self.settings.flush_interval \
                    and slot.busy_since is None and slot.ready and not slot.stopping:
                self.send_worker(slot, (wire.FLUSH,), now)

    def send_worker(self, slot: WorkerSlot, message: tuple, now: float) -> None:
        try:
            slot.conn.send(message)
            slot.busy_since = now
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            slot.busy_since = now  # its sentinel will fire; the arbiter reaps it and calls worker_died

    def feed_savers(self, now: float) -> None:
        for slot in self.savers.values():
            if not slot.ready or slot.batch is not None or slot.stopping:
                continue
            batch = self.next_batch(now)
            if batch is None:
                return
            slot.batch, slot.busy_since = batch, now
            try:
                slot.conn.send((wire.BATCH, wire.delta_to_wire(batch)))
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                pass  # reaped by the arbiter; saver_died puts the batch back

    def next_batch(self, now: float) -> Delta | None:
        if self.retry and (self.retry[0][0] <= now or self.draining):
            return self.retry.popleft()[1]
        if not self.pending:
            return None
        batch = Delta.model_construct(batch_id=uuid.uuid4().hex, publications=self.pending)
        self.pending, self.pending_articles = {}, 0
        return batch

    # -- drain ------------------------------------------------------------------
    def workers_settled(self) -> bool:
        """Input empty and every worker idle with nothing unflushed."""
        return len(self.intake) == 0 and all(
            s.busy_since is None and not s.unflushed for s in self.workers.values())

    def savers_settled(self) -> bool:
        return not self.pending and not self.retry and all(s.batch is None for s in self.savers.values())

    def stop_idle(self, slots: dict, now: float) -> None:
        for slot in slots.values():
            busy = slot.busy_since is not None if isinstance(slot, WorkerSlot) else slot.batch is not None
            if slot.ready and not busy and not slot.stopping:
                slot.stopping = True
                try:
                    slot.conn.send((wire.STOP,))
                except OSError:
                    pass

    def unsaved(self) -> tuple[list, list[Delta]]:
        """What would be lost if we stopped now: posts not yet flushed, deltas not yet stored."""
        posts = list(self.intake.take(len(self.intake)))
        for slot in self.workers.values():
            posts.extend(slot.unflushed)
        deltas = self.given_up + [d for _, d in self.retry] + [s.batch for s in self.savers.values() if s.batch is not None]
        if self.pending:
            deltas.append(Delta.model_construct(batch_id=uuid.uuid4().hex, publications=self.pending))
        return posts, deltas

    # -- numbers ----------------------------------------------------------------
    def stats(self) -> dict:
        m = self.metrics
        in_saver = sum(s.batch.articles for s in self.savers.values() if s.batch is not None)
        held = {f"worker-{n}": len(w.unflushed) for n, w in self.workers.items()}
        return {
            "processed": m.processed,
            "in_flight": sum(held.values()),
            "in_flight_by_worker": held,
            "unsaved": self.pending_articles + in_saver + sum(d.articles for _, d in self.retry)
                       + sum(d.articles for d in self.given_up),
            "workers": len(self.workers),
            "workers_ready": sum(1 for s in self.workers.values() if s.ready),
            "savers": len(self.savers),
            "savers_ready": sum(1 for s in self.savers.values() if s.ready),
            "flushes": m.flushes,
            "store_batches": m.store_batches,
            "store_writes": m.store_writes,
            "store_commits": m.store_commits,
            "store_errors": m.store_errors,
            "retry_batches": len(self.retry),
            "lost": m.lost,
            "redelivered": m.redelivered,
            "worker_deaths": m.worker_deaths,
            "saver_deaths": m.saver_deaths,
            "children": {**{f"worker-{n}": w.process.pid for n, w in self.workers.items()},
                         **{f"saver-{n}": s.process.pid for n, s in self.savers.items()}},
        }
