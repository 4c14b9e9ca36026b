"""The hub's and the arbiter's decisions, without spaCy and without processes: a fake clock and fake
child connections. A routing bug shows up here in milliseconds instead of in a subprocess test."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace
from dataclasses import fields

import pytest

from ingest.config import BackendSettings

from ingest.backend import wire
from ingest.backend.arbiter import Arbiter
from ingest.backend.hub import MAX_KILLS, RETRY_DELAY, Counters, Hub, SaverSlot, WorkerSlot
from ingest.backend.intake import Intake
from ingest.backend.journal import Entry, Journal
from ingest.core.models import Aggregate
from ingest.core.protocol import Draining, QueueFull
from ingest.core.status import COUNTERS, HUB_COUNTERS, INTAKE_COUNTERS

_pids = itertools.count(1000)


class FakeConn:
    def __init__(self):
        self.sent: list[tuple] = []

    def send(self, message):
        self.sent.append(message)

    def kinds(self):
        return [m[0] for m in self.sent]


class FakeProcess:
    def __init__(self):
        self.pid = next(_pids)
        self.sentinel = None


class RecordingLedger:
    def __init__(self):
        self.recorded, self.completed, self.quarantined, self.suspected = [], [], [], []

    def record_batch(self, batch):
        self.recorded.append(batch.delta.batch_id)

    def complete(self, batch):
        self.completed.append(batch.delta.batch_id)

    def quarantine(self, entries):
        self.quarantined.extend(e.seq for e in entries)

    def suspect(self, entries):
        self.suspected.extend(e.seq for e in entries)


def settings(**over) -> BackendSettings:
    """Real BackendSettings, as the arbiter gets them, with the small bounds these tests use."""
    if "store_batch_interval" in over:  # a property of the settings: its setting is --batch-interval
        over["batch_interval"] = over.pop("store_batch_interval")
    base = dict(batch_size=4, batch_bytes=10**6, flush_interval=2.0, cache_size=64, workers=2, savers=1, queue_size=100,
                drain_timeout=60.0, no_persist=True, manager_address="127.0.0.1:1", batch_interval=0.0)
    return BackendSettings(**{**base, **over})


_journals = []


@pytest.fixture(autouse=True)
def _journal_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(_JournalDir, "path", tmp_path)
    yield
    while _journals:
        _journals.pop().close()


class _JournalDir:
    path = None


def journal(**over):
    j = Journal(_JournalDir.path / f"journal-{len(_journals)}.db", max_articles=over.get("max_articles", 100),
                max_bytes=over.get("max_bytes", 10**6), sync=False)
    _journals.append(j)
    return j


def make_hub(workers=1, savers=1, **over):
    s = settings(workers=workers, savers=savers, **over)
    intake = Intake(journal(max_articles=s.queue_size), s.queue_size)
    ledger = RecordingLedger()
    hub = Hub(intake, s, ledger)
    for n in range(1, workers + 1):
        hub.add_worker(WorkerSlot(n, FakeConn(), FakeProcess(), ready=True))
    for n in range(workers + 1, workers + savers + 1):
        hub.add_saver(SaverSlot(n, FakeConn(), FakeProcess(), ready=True))
    return hub, intake, ledger


def posts(n, start=0):
    return [(f"Pub {i % 3}", f"article {i}", None) for i in range(start, start + n)]


def sent_posts(slot) -> list[tuple[str, str]]:
    """(publication, text) of the last posts a worker was sent (the wire adds id and day)."""
    kind, posts = slot.conn.sent[-1]
    assert kind == wire.POSTS
    return [p[:2] for p in posts]


def texts(intake, entries):
    return [post[1] for post in intake.contents(list(entries))]


def answer_flush(hub, number, publication="Pub 0"):
    """The worker answers DONE with one aggregate per post it holds (as if each had entity 'x')."""
    slot = hub.workers[number]
    flushed = [Aggregate.from_article(e.publication, ["x"]) for e in slot.unflushed]
    hub.on_worker_message(number, (wire.DONE, flushed))


# -- dispatch -------------------------------------------------------------------------------------

def test_posts_go_to_idle_ready_workers_in_micro_batches():
    hub, intake, _ = make_hub(workers=2)
    hub.workers[2].ready = False  # still loading spaCy
    intake.put_many(posts(10))
    hub.dispatch(now=0.0)
    sent = hub.workers[1].conn.sent
    assert [m[0] for m in sent] == [wire.POSTS] and len(sent[0][1]) == 4
    assert hub.workers[2].conn.sent == []
    hub.dispatch(now=0.1)  # worker 1 is busy until it answers
    assert len(hub.workers[1].conn.sent) == 1 and len(intake) == 6
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(now=0.2)
    assert len(hub.workers[1].conn.sent) == 2 and len(intake) == 2


def test_idle_input_flushes_at_once_and_a_busy_worker_by_the_interval():
    hub, intake, _ = make_hub(workers=1, flush_interval=2.0)
    intake.put_many(posts(8))
    hub.dispatch(0.0)
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(1.0)  # more input: posts, not a flush
    assert hub.workers[1].conn.kinds() == [wire.POSTS, wire.POSTS]
    hub.on_worker_message(1, (wire.DONE, None))
    intake.put_many(posts(4, start=8))
    hub.dispatch(2.5)  # interval passed while input keeps coming: the posts go, then the flush is due
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(2.6)
    assert hub.workers[1].conn.kinds()[-1] == wire.FLUSH
    answer_flush(hub, 1)
    assert hub.counters.processed == 12 and hub.workers[1].unflushed == []
    hub.dispatch(2.7)  # nothing held: no more flushes
    assert hub.workers[1].conn.kinds().count(wire.FLUSH) == 1


def test_flushed_aggregates_are_merged_into_one_pending_delta_for_the_saver():
    hub, intake, ledger = make_hub(workers=2)
    intake.put_many(posts(8))
    hub.dispatch(0.0)
    answer_flush(hub, 1)
    answer_flush(hub, 2)
    assert hub.batcher.pending["pub 0"].mentions["x"] == 3  # posts 0, 3, 6
    hub.dispatch(0.1)
    [message] = hub.savers[3].conn.sent
    delta = message[1]
    assert message[0] == wire.BATCH and sum(a.articles for a in delta.publications.values()) == 8
    assert ledger.recorded == [delta.batch_id], "a batch is recorded before the store sees it"
    assert hub.batcher.pending == {} and hub.snapshot()["unsaved"] == 8


def test_a_saver_gets_a_new_batch_at_most_once_per_batch_interval_except_in_a_drain():
    """Firestore sustains about one write a second per document: a saver's documents are written at
    most once per interval, and what arrives meanwhile joins the next, bigger batch."""
    hub, intake, _ = make_hub(workers=1, store_batch_interval=2.0)
    intake.put_many(posts(3))
    hub.dispatch(0.0)
    answer_flush(hub, 1)
    hub.dispatch(0.1)
    [first] = hub.savers[2].conn.sent
    hub.on_saver_message(2, (wire.SAVED, first[1].batch_id, 3, 1), now=0.3)
    intake.put_many(posts(3, start=3))
    hub.dispatch(0.4)
    answer_flush(hub, 1)
    intake.put_many(posts(3, start=6))
    hub.dispatch(1.0)
    answer_flush(hub, 1)
    hub.dispatch(2.0)
    assert len(hub.savers[2].conn.sent) == 1, "not within 2 s of the last batch"
    hub.dispatch(2.1)
    second = hub.savers[2].conn.sent[-1][1]
    assert sum(a.articles for a in second.publications.values()) == 6, "both flushes in one batch"
    hub.on_saver_message(2, (wire.SAVED, second.batch_id, 3, 1), now=2.2)
    intake.put_many(posts(2, start=9))
    hub.dispatch(2.3)
    answer_flush(hub, 1)
    hub.draining = True
    hub.dispatch(2.4)
    assert sum(a.articles for a in hub.savers[2].conn.sent[-1][1].publications.values()) == 2, "a drain does not wait"


# -- deaths ---------------------------------------------------------------------------------------

def test_a_death_without_unflushed_posts_loses_nothing_and_a_clean_exit_is_no_death():
    hub, intake, _ = make_hub(workers=2)
    hub.worker_exited(1, abnormal=True)
    hub.worker_exited(2, abnormal=False)
    assert hub.counters.worker_deaths == 1 and len(intake) == 0 and not hub.suspects


def test_only_the_micro_batch_in_flight_is_suspect_and_the_rest_goes_back_first():
    hub, intake, _ = make_hub(workers=1)
    intake.put_many(posts(12))
    hub.dispatch(0.0)
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.1)  # the second micro-batch (posts 4-7) is in flight when it dies
    hub.worker_exited(1)
    assert texts(intake, intake.take(100)) == [f"article {i}" for i in [0, 1, 2, 3, 8, 9, 10, 11]]
    assert texts(intake, hub.suspects) == [f"article {i}" for i in range(4, 8)]
    assert hub.counters.redelivered == 4


def test_suspects_are_retried_one_at_a_time_and_two_deaths_alone_quarantine():
    hub, intake, ledger = make_hub(workers=1)
    intake.put_many(posts(3))
    hub.dispatch(0.0)
    hub.worker_exited(1)  # all three in flight: suspects, but no evidence against any one of them
    assert texts(intake, hub.suspects) == ["article 0", "article 1", "article 2"]
    assert all(e.kills == 0 for e in hub.suspects) and ledger.suspected == []
    hub.add_worker(WorkerSlot(5, FakeConn(), FakeProcess(), ready=True))
    hub.dispatch(1.0)
    assert len(hub.workers[5].conn.sent) == 1 and sent_posts(hub.workers[5]) == [("Pub 0", "article 0")]
    hub.on_worker_message(5, (wire.DONE, None))  # article 0 is innocent
    hub.dispatch(1.1)
    assert sent_posts(hub.workers[5]) == [("Pub 1", "article 1")]
    hub.worker_exited(5)  # article 1 killed a worker alone: once; article 0 (unflushed there) goes back
    assert ledger.quarantined == [] and ledger.suspected == [2]
    assert texts(intake, intake.take(10)) == ["article 0"]
    assert texts(intake, hub.suspects) == ["article 2", "article 1"]
    hub.add_worker(WorkerSlot(6, FakeConn(), FakeProcess(), ready=True))
    hub.dispatch(2.0)
    hub.on_worker_message(6, (wire.DONE, None))  # article 2 is innocent
    hub.dispatch(2.1)
    assert sent_posts(hub.workers[6]) == [("Pub 1", "article 1")]
    hub.worker_exited(6)  # article 1, alone, a second time: quarantined
    assert ledger.quarantined == [2] and hub.counters.quarantined_total == 1
    assert hub.snapshot()["quarantined"] == 1
    assert MAX_KILLS == 2


def test_an_innocent_article_hit_by_two_unrelated_deaths_is_not_quarantined():
    """The OOM killer or the timeout kill a worker while an innocent article is in a micro-batch, and
    again while it is retried alone: before, those two deaths quarantined it. Only deaths with the
    article alone in flight count, and this is its first."""
    hub, intake, ledger = make_hub(workers=1, batch_size=4)
    intake.put_many(posts(4))
    hub.dispatch(0.0)
    hub.worker_exited(1)  # unrelated death #1: four in flight
    hub.add_worker(WorkerSlot(7, FakeConn(), FakeProcess(), ready=True))
    hub.dispatch(1.0)
    assert len(hub.workers[7].conn.sent) == 1 and sent_posts(hub.workers[7]) == [("Pub 0", "article 0")]
    hub.worker_exited(7)  # unrelated death #2, article 0 alone
    assert ledger.quarantined == [] and hub.counters.quarantined_total == 0
    assert [e.kills for e in hub.suspects] == [0, 0, 0, 1]


def test_a_death_while_flushing_makes_no_suspects():
    hub, intake, _ = make_hub(workers=1)
    intake.put_many(posts(2))
    hub.dispatch(0.0)
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.1)  # input idle: a FLUSH is in flight
    assert hub.workers[1].conn.kinds()[-1] == wire.FLUSH
    hub.worker_exited(1)
    assert not hub.suspects and len(intake) == 2


# -- savers ---------------------------------------------------------------------------------------

def _one_batch(hub, intake):
    intake.put_many(posts(2))
    hub.dispatch(0.0)
    answer_flush(hub, 1)
    hub.dispatch(0.0)
    return hub.savers[2].conn.sent[-1][1]


def test_a_failed_batch_is_retried_later_under_the_same_id():
    hub, intake, ledger = make_hub(workers=1)
    delta = _one_batch(hub, intake)
    hub.on_saver_message(2, (wire.FAILED, delta.batch_id, "locked"), now=1.0)
    assert hub.counters.store_errors == 1 and hub.snapshot()["retry_batches"] == 1
    hub.dispatch(1.0 + RETRY_DELAY - 0.1)
    assert len(hub.savers[2].conn.sent) == 1, "not before the retry delay"
    hub.dispatch(1.0 + RETRY_DELAY)
    assert hub.savers[2].conn.sent[-1][1].batch_id == delta.batch_id
    hub.on_saver_message(2, (wire.SAVED, delta.batch_id, 3, 1), now=7.0)
    assert ledger.completed == [delta.batch_id] and hub.snapshot()["unsaved"] == 0
    assert hub.counters.store_batches == 1 and hub.counters.store_commits == 1


def test_a_saver_that_dies_mid_batch_has_it_retried_first_under_the_same_id():
    hub, intake, _ = make_hub(workers=1)
    delta = _one_batch(hub, intake)
    hub.saver_exited(2)
    assert hub.counters.saver_deaths == 1
    hub.add_saver(SaverSlot(9, FakeConn(), FakeProcess(), ready=True))
    hub.dispatch(0.5)
    assert hub.savers[9].conn.sent[-1][1].batch_id == delta.batch_id


def test_during_a_drain_a_failed_batch_is_kept_not_retried_forever():
    hub, intake, _ = make_hub(workers=1)
    delta = _one_batch(hub, intake)
    hub.draining = True
    hub.on_saver_message(2, (wire.FAILED, delta.batch_id, "down"), now=1.0)
    assert hub.savers_settled() and [b.delta.batch_id for b in hub.given_up] == [delta.batch_id]
    assert hub.snapshot()["unsaved"] == 2


def test_the_store_is_unhealthy_once_it_has_failed_for_longer_than_the_threshold():
    hub, intake, _ = make_hub(workers=1)
    delta = _one_batch(hub, intake)
    hub.on_saver_message(2, (wire.FAILED, delta.batch_id, "down"), now=10.0)
    assert hub.store_healthy(now=20.0, threshold=30.0) and not hub.store_healthy(now=41.0, threshold=30.0)
    hub.dispatch(10.0 + RETRY_DELAY)
    hub.on_saver_message(2, (wire.SAVED, delta.batch_id, 1, 1), now=50.0)
    assert hub.store_healthy(now=50.0, threshold=30.0)


def test_recorded_batches_from_the_journal_go_to_the_store_before_new_work():
    hub, intake, _ = make_hub(workers=1)
    intake.put_many(posts(2))
    hub.recovering.add("old-batch")
    hub.dispatch(0.0)
    assert hub.workers[1].conn.sent == []
    hub.recovering.clear()
    hub.dispatch(0.1)
    assert hub.workers[1].conn.kinds() == [wire.POSTS]


# -- drain order (the arbiter's decisions) ---------------------------------------------------------

@pytest.fixture
def arbiter():
    a = Arbiter(settings(), b"k", journal=journal())
    yield a
    a._wake_r.close()
    a._wake_w.close()


def test_drain_stops_workers_once_settled_then_savers_once_everything_is_stored(arbiter):
    hub = arbiter.hub
    hub.add_worker(WorkerSlot(1, FakeConn(), FakeProcess(), ready=True))
    hub.add_saver(SaverSlot(2, FakeConn(), FakeProcess(), ready=True))
    arbiter.intake.put_many(posts(2))
    arbiter.start_drain("SIGTERM")
    with pytest.raises(Draining):
        arbiter.intake.put_many(posts(1))
    hub.dispatch(0.0)
    assert not arbiter.advance_drain(0.0) and hub.workers[1].conn.kinds() == [wire.POSTS]
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.1)  # FLUSH
    assert not arbiter.advance_drain(0.1) and wire.STOP not in hub.workers[1].conn.kinds()
    answer_flush(hub, 1)
    hub.dispatch(0.2)  # the batch goes to the saver
    assert not arbiter.advance_drain(0.2)
    assert hub.workers[1].conn.kinds()[-1] == wire.STOP and wire.STOP not in hub.savers[2].conn.kinds()
    hub.worker_exited(1, abnormal=False)
    assert not arbiter.advance_drain(0.3) and wire.STOP not in hub.savers[2].conn.kinds(), \
        "savers stop only after their batch is stored"
    batch_id = hub.savers[2].batch.delta.batch_id
    hub.on_saver_message(2, (wire.SAVED, batch_id, 1, 1), now=0.4)
    assert not arbiter.advance_drain(0.4) and hub.savers[2].conn.kinds()[-1] == wire.STOP
    hub.saver_exited(2, abnormal=False)
    assert arbiter.advance_drain(0.5)
    assert hub.counters.worker_deaths == hub.counters.saver_deaths == 0


def test_no_worker_is_respawned_during_a_drain_when_there_is_no_input(arbiter, monkeypatch):
    spawned = []
    monkeypatch.setattr(arbiter, "spawn",
                        lambda cls, settings=None:
                        spawned.append(cls.role) or (len(spawned), FakeConn(), FakeProcess()))
    arbiter.spawn_missing()
    assert sorted(spawned) == ["saver", "worker", "worker"]
    arbiter.start_drain("SIGTERM")
    arbiter.hub.worker_exited(next(iter(arbiter.hub.workers)), abnormal=True)
    arbiter.spawn_missing()
    assert len(spawned) == 3
    arbiter.hub.suspects.append(Entry(99, "Pub", 4))
    for n in list(arbiter.hub.workers):
        arbiter.hub.worker_exited(n)
    arbiter.spawn_missing()  # work left and no worker: one is started even while draining
    assert spawned.count("worker") == 4


# -- status ---------------------------------------------------------------------------------------

def test_status_is_a_published_snapshot_that_hub_changes_do_not_touch():
    hub, intake, _ = make_hub(workers=1)
    intake.publish(hub.snapshot())
    before = intake.status()
    intake.put_many(posts(4))
    hub.dispatch(0.0)
    assert before["in_flight"] == 0 and intake.status()["in_flight"] == 0  # not published yet
    intake.publish(hub.snapshot())
    assert intake.status()["in_flight"] == 4


def test_status_can_be_read_while_the_loop_mutates_the_hub():
    hub, intake, _ = make_hub(workers=1, queue_size=1000)
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                intake.status()
            except Exception as exc:  # noqa: BLE001 - any error here is the bug
                errors.append(exc)
            time.sleep(0)  # lets the loop run between reads (a reader that holds the GIL only slows the test)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(500):
            intake.put_many(posts(1, start=i))
            hub.dispatch(float(i))
            hub.on_worker_message(1, (wire.DONE, None))
            intake.publish(hub.snapshot())
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_full_intake_refuses_the_whole_request():
    hub, intake, _ = make_hub(queue_size=5)
    with pytest.raises(QueueFull):
        intake.put_many(posts(6))
    assert len(intake) == 0 and intake.put_many(posts(5)) == {"accepted": 5, "duplicates": 0}
    with pytest.raises(QueueFull):
        intake.put_many(posts(1))


def test_every_counter_is_named_once_for_metrics():
    assert tuple(f.name for f in fields(Counters)) == HUB_COUNTERS
    assert COUNTERS == set(HUB_COUNTERS) | set(INTAKE_COUNTERS) | {"journal_commits", "client_ids_evicted"}
    hub, intake, _ = make_hub()
    intake.publish(hub.snapshot())
    assert COUNTERS <= set(intake.status())


def test_micro_batches_are_bounded_in_bytes_and_a_long_article_goes_alone():
    hub, intake, _ = make_hub(workers=1, batch_bytes=1000)
    intake.put_many([("P", "a" * 400, None), ("P", "b" * 400, None), ("P", "c" * 400, None), ("P", "d" * 5000, None)])
    hub.dispatch(0.0)
    assert [len(p[1]) for p in hub.workers[1].conn.sent[-1][1]] == [400, 400]
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.1)
    assert [len(p[1]) for p in hub.workers[1].conn.sent[-1][1]] == [400]
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.2)
    assert [len(p[1]) for p in hub.workers[1].conn.sent[-1][1]] == [5000]


def test_an_article_over_the_limit_is_refused_whole():
    from ingest.core.protocol import TooLarge

    hub, intake, _ = make_hub()
    intake.max_article_chars = 100
    with pytest.raises(TooLarge):
        intake.put_many([("P", "ok", None), ("P", "x" * 101, None)])
    assert len(intake) == 0


# -- a batch that cannot commit is an alarm, not a loop ------------------------------------------

def _two_batches(hub, intake):
    """Two batches, one in each of the two savers (numbers 2 and 3)."""
    intake.put_many(posts(2))
    hub.dispatch(0.0)
    answer_flush(hub, 1)
    hub.dispatch(0.0)
    intake.put_many(posts(2, start=2))
    hub.dispatch(0.0)
    answer_flush(hub, 1)
    hub.dispatch(0.0)
    return hub.savers[2].conn.sent[-1][1], hub.savers[3].conn.sent[-1][1]


def test_another_batchs_success_does_not_hide_an_older_failing_batch():
    hub, intake, _ = make_hub(workers=1, savers=2)
    first, second = _two_batches(hub, intake)
    hub.on_saver_message(2, (wire.FAILED, first.batch_id, "rejected"), now=10.0)
    hub.on_saver_message(3, (wire.SAVED, second.batch_id, 1, 1), now=20.0)
    assert hub.store_failing_since == 10.0
    assert not hub.store_healthy(now=41.0, threshold=30.0), "the first batch has failed for 31 s"
    assert hub.snapshot(41.0)["failing_batches"] == 1 and hub.snapshot(41.0)["store_failing_seconds"] == 31.0
    hub.dispatch(10.0 + RETRY_DELAY)
    hub.on_saver_message(2, (wire.FAILED, first.batch_id, "rejected"), now=16.0)
    assert hub.store_failing_since == 10.0, "the age counts from the batch's first failure"
    hub.dispatch(16.0 + RETRY_DELAY)
    hub.on_saver_message(2, (wire.SAVED, first.batch_id, 1, 1), now=50.0)
    assert hub.store_healthy(now=50.0, threshold=30.0) and hub.snapshot(50.0)["failing_batches"] == 0


def test_a_batch_past_its_marker_window_is_never_retried_and_stays_an_alarm():
    hub, intake, ledger = make_hub(workers=1)
    hub.marker_window = 100.0
    delta = _one_batch(hub, intake)  # recorded at 0.0
    hub.on_saver_message(2, (wire.FAILED, delta.batch_id, "down"), now=60.0)
    hub.dispatch(60.0 + RETRY_DELAY)
    assert hub.savers[2].conn.sent[-1][1].batch_id == delta.batch_id, "retried inside the window"
    hub.on_saver_message(2, (wire.FAILED, delta.batch_id, "down"), now=99.0)
    hub.dispatch(200.0)  # its retry is due only past the window: refused
    assert len(hub.savers[2].conn.sent) == 2
    snap = hub.snapshot(200.0)
    assert snap["stuck_batches"] == 1 and snap["stuck_articles"] == 2 and snap["unsaved"] == 2
    assert snap["retry_batches"] == 0 and not hub.store_healthy(200.0, threshold=30.0)
    assert ledger.completed == [] and hub.savers_settled(), "kept in the journal; a drain does not wait for it"
    # a failure answered past the window is parked at once
    hub2, intake2, _ = make_hub(workers=1)
    hub2.marker_window = 100.0
    late = _one_batch(hub2, intake2)
    hub2.on_saver_message(2, (wire.FAILED, late.batch_id, "down"), now=150.0)
    assert hub2.snapshot(150.0)["stuck_batches"] == 1 and not hub2.retry


def test_a_failed_journal_complete_is_retried_not_left_behind():
    hub, intake, ledger = make_hub(workers=1)
    delta = _one_batch(hub, intake)
    calls = []

    def complete(batch):
        calls.append(batch.delta.batch_id)
        if len(calls) < 3:
            raise OSError("disk full")
        ledger.completed.append(batch.delta.batch_id)

    ledger.complete = complete
    hub.on_saver_message(2, (wire.SAVED, delta.batch_id, 1, 1), now=1.0)
    assert not hub.savers_settled() and hub.snapshot(1.0)["uncompleted_batches"] == 1
    hub.dispatch(1.5)
    assert len(calls) == 1, "not before the delay"
    hub.dispatch(2.0)
    hub.dispatch(3.0)
    assert ledger.completed == [delta.batch_id] and hub.savers_settled()
    assert hub.snapshot(3.0)["uncompleted_batches"] == 0 and hub.counters.store_batches == 1


# -- the fleet's batcher: one batch per message group ------------------------------------------------

def make_group_hub(workers=1, savers=1, **over):
    """A fleet backend's hub over a PubSubIntake whose subscription is never called (no threads):
    messages are held with `hold`, acknowledgements are read from intake._acks."""
    from ingest.backend.fleet.batching import GroupBatcher, PubSubLedger
    from ingest.backend.fleet.puller import PubSubIntake

    s = settings(workers=workers, savers=savers, intake="pubsub://p/sub", pubsub_max_messages=100,
                 pubsub_ack_deadline=60, **over)
    j = journal(max_articles=s.queue_size)
    intake = PubSubIntake(j, s)
    hub = Hub(intake, s, PubSubLedger(j, intake), batcher=GroupBatcher(intake))
    for n in range(1, workers + 1):
        hub.add_worker(WorkerSlot(n, FakeConn(), FakeProcess(), ready=True))
    for n in range(workers + 1, workers + savers + 1):
        hub.add_saver(SaverSlot(n, FakeConn(), FakeProcess(), ready=True))
    return hub, intake


def hold(intake, gid, posts, ack_id=None):
    """A message pulled and journaled, as PubSubIntake._sort and _admit do it."""
    from ingest.backend.fleet.puller import Waiting

    message = SimpleNamespace(message=SimpleNamespace(attributes={"group": gid}, message_id=gid))
    waiting = Waiting(gid, message, list(posts), [ack_id or f"ack-{gid}"])
    intake.waiting.append(waiting)
    intake.waiting_by_group[gid] = waiting
    assert intake._admit()


def test_a_group_becomes_one_batch_under_its_id_once_every_article_of_it_is_flushed():
    hub, intake = make_group_hub(workers=2, batch_size=2)
    gid = "r" + "a" * 32
    hold(intake, gid, posts(3))
    hub.dispatch(0.0)  # worker 1: posts 0, 1; worker 2: post 2
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(0.1)  # worker 1 flushes; worker 2 is still busy
    answer_flush(hub, 1)
    hub.dispatch(0.2)
    assert hub.savers[3].conn.sent == [] and hub.snapshot()["unsaved"] == 2, "no batch before the whole group"
    hub.on_worker_message(2, (wire.DONE, None))
    hub.dispatch(0.3)
    answer_flush(hub, 2)
    hub.dispatch(0.4)
    [(kind, delta)] = hub.savers[3].conn.sent
    assert kind == wire.BATCH and delta.batch_id == gid
    assert sorted(delta.publications) == ["pub 0", "pub 1", "pub 2"], "the group's tag is stripped"
    assert delta.articles == 3 and delta.publications["pub 0"].name == "Pub 0"
    assert intake._acks == []
    hub.on_saver_message(3, (wire.SAVED, gid, 1, 1), now=0.5)
    assert intake._acks == [f"ack-{gid}"], "acknowledged once committed"
    assert hub.savers_settled() and intake.journal.stats()["journal_articles"] == 0


def flushed_groups(hub, intake, gids, n=2, now=0.0):
    """Hold one message of n posts per group id, and have worker 1 process and flush them all."""
    for i, gid in enumerate(gids):
        hold(intake, gid, posts(n, start=i * n))
    hub.dispatch(now)
    hub.on_worker_message(1, (wire.DONE, None))
    hub.dispatch(now + 0.01)
    answer_flush(hub, 1)


def test_ready_groups_merge_into_one_batch_per_saver_per_interval_each_acknowledged_after_its_commit():
    """Before, every message was a store batch of its own (one commit rewriting the writer's summary
    and shards per message): 3 messages were 3 commits, within the same interval."""
    hub, intake = make_group_hub(workers=1, batch_size=16, store_batch_interval=2.0)
    a, b, c = "r" + "a" * 32, "r" + "b" * 32, "r" + "c" * 32
    flushed_groups(hub, intake, [a, b])
    hub.dispatch(0.1)
    [(kind, delta)] = hub.savers[2].conn.sent
    assert kind == wire.BATCH and delta.groups == (a, b) and delta.batch_id not in (a, b)
    assert delta.articles == 4 and delta.publications["pub 0"].articles == 2, "the groups' counts are summed"
    flushed_groups(hub, intake, [c], now=0.5)
    hub.on_saver_message(2, (wire.SAVED, delta.batch_id, 3, 1), now=1.0)
    assert sorted(intake._acks) == [f"ack-{a}", f"ack-{b}"], "both messages acknowledged once committed"
    hub.dispatch(1.5)
    assert len(hub.savers[2].conn.sent) == 1, "c waits for the saver's next interval"
    hub.dispatch(2.1)
    assert hub.savers[2].conn.sent[-1][1].batch_id == c and hub.savers[2].conn.sent[-1][1].groups == ()
    assert intake.journal.stats()["journal_articles"] == 2


def test_a_merged_batch_the_store_refuses_goes_again_one_group_per_batch_under_their_own_ids():
    """Another backend committed group a (a redelivery): the store applied nothing of the merged
    batch; a and b go again alone, and a's own marker makes its batch a no-op there."""
    hub, intake = make_group_hub(workers=1, batch_size=16)
    a, b = "r" + "a" * 32, "r" + "b" * 32
    flushed_groups(hub, intake, [a, b])
    hub.dispatch(0.1)
    merged = hub.savers[2].conn.sent[-1][1]
    hub.on_saver_message(2, (wire.REFUSED, merged.batch_id, [a], "groups already recorded: a"), now=0.2)
    assert intake._acks == [] and hub.snapshot()["unsaved"] == 4
    sent = []
    for t in (0.3, 0.4):
        hub.dispatch(t)
        delta = hub.savers[2].conn.sent[-1][1]
        sent.append((delta.batch_id, delta.groups, delta.articles))
        hub.on_saver_message(2, (wire.SAVED, delta.batch_id, 0 if delta.batch_id == a else 3, 1), now=t)
    assert sent == [(a, (), 2), (b, (), 2)]
    assert sorted(intake._acks) == [f"ack-{a}", f"ack-{b}"] and hub.savers_settled()
    assert intake.journal.stats()["journal_articles"] == 0


def test_a_merged_batch_too_big_for_one_commit_goes_again_one_group_per_batch_and_later_merges_are_smaller():
    hub, intake = make_group_hub(workers=1, batch_size=32)
    gids = [f"r{i:032x}" for i in range(8)]
    flushed_groups(hub, intake, gids, n=1)
    hub.dispatch(0.1)
    merged = hub.savers[2].conn.sent[-1][1]
    assert merged.groups == tuple(gids)
    hub.on_saver_message(2, (wire.REFUSED, merged.batch_id, [], "needs 2 commits"), now=0.2)
    assert hub.batcher.max_groups == 4 and len(hub.retry) == 8
    assert [b.delta.batch_id for _, b in hub.retry] == gids


def test_a_poisoned_article_dead_letters_its_whole_group_and_the_others_are_counted():
    hub, intake = make_group_hub(workers=1, batch_size=4)
    dead_letters = []
    intake._dead_letter = lambda group, data: dead_letters.append(group.id)
    bad, good = "r" + "b" * 32, "r" + "c" * 32
    hold(intake, bad, posts(2))
    hold(intake, good, posts(2, start=2))
    hub.dispatch(0.0)
    hub.worker_exited(1)                 # 4 in flight: each retried alone
    assert len(hub.suspects) == 4
    worker, t = 2, 0.1
    hub.add_worker(WorkerSlot(worker, FakeConn(), FakeProcess(), ready=True))
    while not dead_letters and t < 2:    # article 0 (of the bad group) kills every worker it is alone in
        hub.dispatch(t)
        [(kind, [(pub, text, _, _)])] = hub.workers[worker].conn.sent[-1:]
        if text == "article 0":
            hub.worker_exited(worker)
            worker += 1
            hub.add_worker(WorkerSlot(worker, FakeConn(), FakeProcess(), ready=True))
        else:
            hub.on_worker_message(worker, (wire.DONE, None))  # innocent: held unflushed by this worker
        t += 0.1
    assert dead_letters == [bad] and intake.groups.keys() == {good}
    assert all(untag_group(e) == good for e in hub.suspects), "the dead group's other article is forgotten"
    assert intake.journal.stats()["journal_articles"] == 2
    for step in range(4):
        hub.dispatch(3.0 + step)
        slot = hub.workers[worker]
        if slot.busy_since is not None:
            if slot.conn.sent[-1][0] == wire.FLUSH:
                answer_flush(hub, worker)
            else:
                hub.on_worker_message(worker, (wire.DONE, None))
    [saver] = hub.savers.values()
    [(kind, delta)] = saver.conn.sent
    assert delta.batch_id == good and delta.articles == 2


def untag_group(entry):
    return entry.publication.split("\x00")[0]
