"""The routing state of the backend: which child holds what, and what is still owed to the store.

The arbiter's loop feeds it events (a child answered, a child exited, time passed) and asks it to
dispatch; it never blocks and never reads a clock of its own (`now` is passed in), so it is tested
without processes. It sends only to idle children (see wire.py). Everything accepted is always in
exactly one place: the intake, the suspects, a worker's unflushed set, the batcher (flushed, not
yet a batch), a saver's batch, the retry list or the quarantine — so a death or a shutdown knows what to give back.
Each of those states is mirrored in the journal (the `ledger`), which a restart recovers.
"""

from __future__ import annotations

import collections
import logging
import uuid
from dataclasses import dataclass, field, fields

from ..core.models import Aggregate, Delta, merge
from ..core.rules import MARKER_MARGIN_SECONDS, MARKER_TTL_SECONDS
from ..core.status import HUB_COUNTERS
from . import wire
from .intake import Entry, Intake

log = logging.getLogger("ingest.hub")

MAX_KILLS = 2       # an article that killed a worker twice while running alone is quarantined
RETRY_DELAY = 5.0   # seconds before a failed batch is offered to a saver again
COMPLETE_RETRY_DELAY = 1.0  # seconds before a failed journal `complete` is tried again
# A batch may be sent to the store only while the store's marker for it (recorded with its first
# commit) still lives: past this age a retry could apply it a second time.
MARKER_WINDOW = MARKER_TTL_SECONDS - MARKER_MARGIN_SECONDS


@dataclass(slots=True)
class ChildSlot:
    """What the hub knows of any child: its pipe, its process, and whether it is ready, busy or stopping."""

    number: int
    conn: object
    process: object
    ready: bool = False
    busy_since: float | None = None                    # set while a request is outstanding
    stopping: bool = False


@dataclass(slots=True)
class WorkerSlot(ChildSlot):
    in_flight: list = field(default_factory=list)      # the micro-batch being processed: suspect if it dies
    unflushed: list = field(default_factory=list)      # every Entry sent since the last flush
    unflushed_since: float | None = None


@dataclass(slots=True)
class Batch:
    """A delta on its way to the store, with the articles it counts."""

    delta: Delta
    seqs: list
    recorded_at: float | None = None         # when the journal recorded it (the hub's clock, `now`)
    first_failed_at: float | None = None     # its first failed store write, until it is stored

    @property
    def articles(self) -> int:
        return len(self.seqs)


@dataclass(slots=True)
class SaverSlot(ChildSlot):
    batch: Batch | None = None
    writer: str = ""                                   # the store documents it owns (Firestore's packed layout)
    last_batch_at: float | None = None                 # when it was last handed a new batch


@dataclass(slots=True)
class Counters:
    processed: int = 0
    flushes: int = 0
    store_batches: int = 0
    store_writes: int = 0
    store_commits: int = 0
    store_errors: int = 0
    redelivered: int = 0
    suspects: int = 0
    quarantined_total: int = 0
    worker_deaths: int = 0
    saver_deaths: int = 0


assert tuple(f.name for f in fields(Counters)) == HUB_COUNTERS, "core.status.HUB_COUNTERS is out of date"


class NullLedger:
    """Where the hub records batches and quarantine durably; this one keeps nothing (tests, no journal)."""

    def record_batch(self, batch: Batch) -> None: ...

    def complete(self, batch: Batch) -> None: ...

    def quarantine(self, entries: list) -> None: ...

    def suspect(self, entries: list) -> None: ...


class IntervalBatcher:
    """One machine's batches: every flush merges into one pending delta, and a saver's next batch
    takes all of it under a fresh id (the batch interval paces how often a saver takes one).

    A batcher is the hub's policy for turning workers' flushes into store batches: `add` a flush,
    `take` the next new batch (recorded through `record` before any store sees it), `poisoned`
    for articles just quarantined, and the counts `unsaved` (articles flushed, not yet in a
    batch) and `empty`. A fleet's batcher is fleet.batching.GroupBatcher."""

    def __init__(self):
        self.pending: dict[str, Aggregate] = {}
        self.pending_seqs: list[int] = []

    def add(self, flushed: list[Aggregate], entries: list[Entry]) -> None:
        merge(self.pending, flushed)
        self.pending_seqs.extend(e.seq for e in entries)

    def take(self, now: float, record) -> Batch | None:
        if not self.pending:
            return None
        batch = Batch(Delta(uuid.uuid4().hex, self.pending), self.pending_seqs, recorded_at=now)
        if not record(batch):  # recorded before the store sees it: a crash replays this id
            return None  # kept pending; tried again on the next pass
        self.pending, self.pending_seqs = {}, []
        return batch

    def refused(self, batch: Batch, recorded: list[str], record) -> list[Batch]:
        """A store refused a batch merging several groups: what to send instead (never here: one
        machine's batches merge no groups)."""
        return [batch]

    def poisoned(self, entries: list[Entry]):
        """Articles just quarantined; returns a test for suspects to forget with them, or None."""
        return None

    def unsaved(self) -> int:
        return len(self.pending_seqs)

    def empty(self) -> bool:
        return not self.pending


class Hub:
    def __init__(self, intake: Intake, settings, ledger=None, batcher=None):
        self.intake = intake
        self.settings = settings
        self.ledger = ledger or NullLedger()
        self.batcher = batcher or IntervalBatcher()
        self.workers: dict[int, WorkerSlot] = {}
        self.savers: dict[int, SaverSlot] = {}
        self.suspects: collections.deque[Entry] = collections.deque()
        self.retry: collections.deque[tuple[float, Batch]] = collections.deque()
        self.given_up: list[Batch] = []  # failed during a drain: left in the journal for the next start
        self.stuck: list[Batch] = []     # failed past the marker window: never sent again; an operator decides
        self.uncompleted: collections.deque[Batch] = collections.deque()  # stored, but `complete` failed
        self.next_complete_at = 0.0
        self.marker_window = MARKER_WINDOW
        self.recovering: set[str] = set()  # batch ids found in the journal at start: committed before new work
        self.quarantined_now = 0
        self.failing: dict[str, float] = {}       # batch id -> its first failed write, until it is stored
        self.store_down_since: float | None = None  # a saver cannot reopen the store (no batch involved)
        self.draining = False
        self.counters = Counters()
        self.rules = settings.counting_rules  # naming.rules_record: what every new batch is stamped with

    def recover(self, found, now: float, wall: float) -> None:
        """What the journal held at start (journal.Recovered): recorded batches go to the store again
        first (same ids; their age on the hub's clock, for the marker window), then the articles."""
        for batch_id, delta, seqs in found.batches:
            recorded_at = now - max(0.0, wall - found.recorded.get(batch_id, wall))
            self.retry.append((0.0, Batch(delta, seqs, recorded_at=recorded_at)))
            self.recovering.add(batch_id)
        self.suspects.extend(e for e in found.entries if e.kills)
        self.intake.push_back(e for e in found.entries if not e.kills)
        self.quarantined_now = found.quarantined

    # -- children come and go ------------------------------------------------
    def add_worker(self, slot: WorkerSlot) -> None:
        self.workers[slot.number] = slot

    def add_saver(self, slot: SaverSlot) -> None:
        self.savers[slot.number] = slot

    def worker_exited(self, number: int, abnormal: bool = True) -> None:
        """Only the micro-batch in flight can have killed it: those become suspects, the rest go back."""
        slot = self.workers.pop(number)
        if abnormal:
            self.counters.worker_deaths += 1
        suspects = slot.in_flight if slot.busy_since is not None else []
        blamed = {e.seq for e in suspects}
        innocent = [e for e in slot.unflushed if e.seq not in blamed]
        if innocent:
            self.intake.push_front(innocent)
            self.counters.redelivered += len(innocent)
            log.warning("worker %d exited holding %d unflushed posts: queued again", number, len(innocent))
        if suspects:
            self.blame(number, suspects)

    def blame(self, number: int, entries: list[Entry]) -> None:
        """Quarantine on evidence only: a death with several articles in flight proves nothing against
        any one of them (the OOM killer, the timeout, a bug elsewhere), so each is retried alone and
        nothing is counted; only a death with one article in flight counts against that article."""
        if len(entries) > 1:
            self.suspects.extend(entries)
            self.counters.suspects += len(entries)
            log.warning("worker %d died processing %d posts: each is retried alone", number, len(entries))
            return
        again, poison = [], []
        for entry in entries:
            entry.kills += 1
            (poison if entry.kills >= MAX_KILLS else again).append(entry)
        if again:
            self._durably("suspect", again)
            self.suspects.extend(again)
            self.counters.suspects += len(again)
            log.warning("worker %d died processing post seq=%d alone (%d of %d deaths before quarantine)",
                        number, again[0].seq, again[0].kills, MAX_KILLS)
        if poison:
            self._durably("quarantine", poison)
            self.quarantined_now += len(poison)
            self.counters.quarantined_total += len(poison)
            log.error("worker %d died processing post seq=%s alone a second time: quarantined (kept; see "
                      "`ingestiond quarantine list`)", number, ",".join(str(e.seq) for e in poison))
            forget = self.batcher.poisoned(poison)
            if forget is not None:
                self.suspects = collections.deque(e for e in self.suspects if not forget(e))

    def unquarantine(self, n: int) -> None:
        self.quarantined_now = max(0, self.quarantined_now - n)

    def _durably(self, what: str, *args) -> bool:
        """A journal update; a failure (disk full) is logged, and the journal's older state stays valid."""
        try:
            getattr(self.ledger, what)(*args)
            return True
        except Exception as exc:  # sqlite3.Error, OSError
            log.error("journal %s failed: %s", what, exc)
            return False

    def saver_exited(self, number: int, abnormal: bool = True) -> None:
        slot = self.savers.pop(number)
        if abnormal:
            self.counters.saver_deaths += 1
        if slot.batch is not None:
            log.warning("saver %d exited during batch=%s: it will be retried (same id, so never twice)",
                        number, slot.batch.delta.batch_id)
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
        slot.in_flight = []
        if message[1] is not None:
            self.take_flush(slot, message[1])

    def take_flush(self, slot: WorkerSlot, flushed: list[Aggregate]) -> None:
        self.batcher.add(flushed, slot.unflushed)
        self.counters.processed += len(slot.unflushed)
        self.counters.flushes += 1
        slot.unflushed = []
        slot.unflushed_since = None

    def on_saver_message(self, number: int, message: tuple, now: float) -> None:
        slot = self.savers[number]
        kind = message[0]
        if kind == wire.READY:
            slot.ready = True
            return
        batch, slot.batch, slot.busy_since = slot.batch, None, None
        if batch is None:
            return
        if kind == wire.SAVED:
            if not self._durably("complete", batch):  # stored, still in the journal: try again shortly
                self.uncompleted.append(batch)
                self.next_complete_at = now + COMPLETE_RETRY_DELAY
            self.recovering.discard(batch.delta.batch_id)
            self.failing.pop(batch.delta.batch_id, None)  # only this batch's failure ends here
            batch.first_failed_at = None
            self.store_down_since = None
            self.counters.store_batches += 1
            self.counters.store_writes += message[2]
            self.counters.store_commits += message[3]
        elif kind == wire.REFUSED:  # a merged batch, nothing of it applied: its groups one by one
            self.recovering.discard(batch.delta.batch_id)
            self.failing.pop(batch.delta.batch_id, None)
            again = self.batcher.refused(batch, message[2], self._record)
            self.retry.extendleft((0.0, b) for b in reversed(again))
            log.info("batch=%s of %d groups refused by the store (%s): sent again as %d batches",
                     batch.delta.batch_id, len(batch.delta.groups), message[3], len(again))
        elif kind == wire.FAILED:
            self.counters.store_errors += 1
            if batch.first_failed_at is None:
                batch.first_failed_at = now
            self.failing.setdefault(batch.delta.batch_id, batch.first_failed_at)
            if self.past_marker_window(batch, now):
                self.park_stuck(batch, now, message[2])
            elif self.draining:  # its retries are spent and we are stopping: keep it for the next start
                self.given_up.append(batch)
                self.recovering.discard(batch.delta.batch_id)
                log.error("batch=%s (%d articles) not stored during the drain: %s",
                          batch.delta.batch_id, batch.articles, message[2])
            else:
                self.retry.append((now + RETRY_DELAY, batch))
                log.error("batch=%s (%d articles) parked for retry: %s", batch.delta.batch_id, batch.articles,
                          message[2])

    def store_failed(self, now: float) -> None:
        """The store fails outside any batch (a saver cannot reopen it): until a batch is stored."""
        if self.store_down_since is None:
            self.store_down_since = now

    @property
    def store_failing_since(self) -> float | None:
        """The first failure of the oldest batch still not stored (another batch's success does not
        clear it), or of a store no saver can reopen."""
        times = list(self.failing.values())
        if self.store_down_since is not None:
            times.append(self.store_down_since)
        return min(times) if times else None

    def store_healthy(self, now: float, threshold: float) -> bool:
        since = self.store_failing_since
        return since is None or now - since < threshold

    def past_marker_window(self, batch: Batch, now: float) -> bool:
        return batch.recorded_at is not None and now - batch.recorded_at > self.marker_window

    def park_stuck(self, batch: Batch, now: float, reason: str = "") -> None:
        """A batch older than its store marker may live is never sent again: it stays in the journal
        (and keeps /readyz at 503) until an operator checks the store and decides."""
        self.stuck.append(batch)
        self.recovering.discard(batch.delta.batch_id)
        self.failing.setdefault(batch.delta.batch_id,
                                batch.first_failed_at if batch.first_failed_at is not None else now)
        log.critical(
            "batch=%s (%d articles) recorded %.1f days ago was not stored%s; it is NOT retried: its store marker "
            "may have expired, so a retry could count it twice. It stays in the journal. Check the store, stop "
            "the backend, then `ingestiond journal drop-batch %s` if the store has it, or `ingestiond journal "
            "requeue-batch %s` if it does not (`ingestiond journal list` shows it)",
            batch.delta.batch_id, batch.articles, (now - (batch.recorded_at or now)) / 86400,
            f" ({reason})" if reason else "", batch.delta.batch_id, batch.delta.batch_id)

    def retry_completions(self, now: float) -> None:
        """Stored batches whose journal `complete` failed: their articles must leave the journal."""
        while self.uncompleted and now >= self.next_complete_at:
            if not self._durably("complete", self.uncompleted[0]):
                self.next_complete_at = now + COMPLETE_RETRY_DELAY
                return
            self.uncompleted.popleft()

    # -- dispatch ---------------------------------------------------------------
    def dispatch(self, now: float) -> None:
        self.retry_completions(now)
        self.feed_workers(now)
        self.feed_savers(now)

    def idle(self, slot) -> bool:
        return slot.ready and slot.busy_since is None and not slot.stopping

    def feed_workers(self, now: float) -> None:
        if self.recovering:  # the journal's recorded batches go to the store before new work
            return
        for slot in self.workers.values():
            if not self.idle(slot):
                continue
            entries = [self.suspects.popleft()] if self.suspects else self.intake.take(self.settings.batch_size,
                                                                                          self.settings.batch_bytes)
            if entries:
                self.send_posts(slot, entries, now)
            elif slot.unflushed:  # input idle: flush now rather than wait for the timer
                self.send(slot, (wire.FLUSH,), now)
        for slot in self.workers.values():  # the flush interval, for workers kept busy
            if slot.unflushed_since is not None and now - slot.unflushed_since >= self.settings.flush_interval \
                    and self.idle(slot):
                self.send(slot, (wire.FLUSH,), now)

    def send_posts(self, slot: WorkerSlot, entries: list[Entry], now: float) -> None:
        if slot.unflushed_since is None:
            slot.unflushed_since = now
        slot.unflushed.extend(entries)
        slot.in_flight = entries
        self.send(slot, (wire.POSTS, self.intake.contents(entries)), now)

    def send(self, slot, message: tuple, now: float) -> None:
        slot.busy_since = now
        try:
            slot.conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            pass  # its sentinel fires; the arbiter reaps it and calls worker_exited / saver_exited

    def feed_savers(self, now: float) -> None:
        """A saver gets a batch at most once per batch interval (outside a drain): each document it
        owns is then written at most that often, and the batches grow instead of the writes."""
        interval = self.settings.store_batch_interval
        for slot in self.savers.values():
            if not self.idle(slot) or slot.batch is not None:
                continue
            if interval and slot.last_batch_at is not None and now - slot.last_batch_at < interval \
                    and not self.draining:
                continue
            batch = self.next_batch(now)
            if batch is None:
                return
            if batch.recorded_at is None:
                batch.recorded_at = now
            slot.batch = batch
            slot.last_batch_at = now
            self.send(slot, (wire.BATCH, batch.delta), now)

    def next_batch(self, now: float) -> Batch | None:
        while self.retry and (self.retry[0][0] <= now or self.draining):
            batch = self.retry.popleft()[1]
            if not self.past_marker_window(batch, now):
                return batch
            self.park_stuck(batch, now)
        return self.batcher.take(now, self._record)

    def _record(self, batch: Batch) -> bool:
        """A new batch into the journal, stamped with the counting rules its keys were made with."""
        batch.delta.rules = self.rules
        return self._durably("record_batch", batch)

    # -- drain ------------------------------------------------------------------
    def workers_settled(self) -> bool:
        """Input empty and every worker idle with nothing unflushed."""
        return len(self.intake) == 0 and not self.suspects and all(
            s.busy_since is None and not s.unflushed for s in self.workers.values())

    def savers_settled(self) -> bool:
        """Nothing left to send (a stuck batch waits for an operator, in the journal) or to complete."""
        return self.batcher.empty() and not self.retry and not self.uncompleted \
            and all(s.batch is None for s in self.savers.values())

    def stop_idle(self, slots: dict, now: float) -> None:
        for slot in slots.values():
            if self.idle(slot) and getattr(slot, "batch", None) is None:
                self.send(slot, (wire.STOP,), now)
                slot.stopping = True

    # -- numbers ----------------------------------------------------------------
    def snapshot(self, now: float = 0.0) -> dict:
        """A fresh dict of plain values: published to the manager's threads, never shared state."""
        c = self.counters
        held = {f"worker-{n}": len(w.unflushed) for n, w in self.workers.items()}
        in_saver = sum(s.batch.articles for s in self.savers.values() if s.batch is not None)
        snap = {name: getattr(c, name) for name in HUB_COUNTERS}
        snap.update({
            "in_flight": sum(held.values()) + len(self.suspects),
            "in_flight_by_worker": held,
            "unsaved": self.batcher.unsaved() + in_saver + sum(b.articles for _, b in self.retry)
                       + sum(b.articles for b in self.given_up) + sum(b.articles for b in self.stuck),
            "quarantined": self.quarantined_now,
            "store_failing_seconds": (round(now - self.store_failing_since, 1)
                                      if self.store_failing_since is not None else 0.0),
            "workers": len(self.workers),
            "workers_ready": sum(1 for s in self.workers.values() if s.ready),
            "savers": len(self.savers),
            "savers_ready": sum(1 for s in self.savers.values() if s.ready),
            "retry_batches": len(self.retry),
            "failing_batches": len(self.failing),
            "stuck_batches": len(self.stuck),
            "stuck_articles": sum(b.articles for b in self.stuck),
            "uncompleted_batches": len(self.uncompleted),
            "children": {**{f"worker-{n}": w.process.pid for n, w in self.workers.items()},
                         **{f"saver-{n}": s.process.pid for n, s in self.savers.items()}},
        })
        return snap
