"""One live writer per name: a lease claimed at boot, renewed by a heartbeat, against the real SQLite
file and the real Firestore emulator."""

from __future__ import annotations

import signal
import socket
import time

import psutil

import pytest

from ingest.core.models import Aggregate, Delta
from ingest.stores import open_store
from ingest.stores.firestore import FirestoreStore
from ingest.stores.lease import Holder, LeaseHeld, LeaseLost, current_holder, holder_is_dead
from ingest.stores.sqlite import SqliteStore


def other_holder(host: str = "other-host", pid: int = 4242) -> Holder:
    """A claimant of another process (another machine by default: its liveness cannot be checked here)."""
    return Holder(id="other" + str(pid), host=host, pid=pid, started="2024-01-01T00:00:00Z", proc_start="1")


def _delta(batch_id: str) -> Delta:
    return Delta.of(batch_id, [Aggregate.from_article("BBC", ["uk"])])


def sqlite_store(tmp_path):
    return lambda: SqliteStore(tmp_path / "s.db")


def firestore_store(project):
    return lambda: FirestoreStore(project=project, timeout=10, layout="packed", writer="w1-0")


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def make(request, tmp_path):
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    return firestore_store(request.getfixturevalue("firestore_project"))


def test_a_second_live_claimant_is_refused_with_one_line_naming_both(make):
    first = make().claim_writer("w1-0")
    with pytest.raises(LeaseHeld) as refused:
        make().claim_writer("w1-0", other_holder())
    line = str(refused.value)
    assert "\n" not in line
    me = current_holder()
    assert f"{me.host}:{me.pid}" in line and me.started in line, line          # the holder
    assert "other-host:4242" in line and "2024-01-01T00:00:00Z" in line, line  # the claimant
    make().claim_writer("w1-1", other_holder()).release()  # another name is free
    first.release()


def test_after_a_clean_stop_a_new_claimant_succeeds(make):
    store = make()
    lease = store.claim_writer("w1-0")
    store.apply(_delta("a"))
    lease.release()
    with pytest.raises(LeaseLost):
        lease.ensure()
    make().claim_writer("w1-0", other_holder()).release()


@pytest.mark.slow  # waits out real lease times
def test_an_expired_lease_is_taken_over_and_the_old_holder_stops_committing(make):
    stalled = make()
    lease = stalled.claim_writer("w1-0", ttl=1.0, renew_every=60)  # its heartbeat never beats in time
    with pytest.raises(LeaseHeld):
        make().claim_writer("w1-0", other_holder(), ttl=1.0)
    time.sleep(1.2)
    taker = make()
    taker.claim_writer("w1-0", other_holder(), ttl=30)
    with pytest.raises(LeaseLost, match="taken by other-host:4242"):
        stalled.apply(_delta("late"))                     # refused before anything is written
    with pytest.raises(LeaseLost):
        stalled.apply(_delta("late"))
    assert taker.apply(_delta("late")) > 0
    assert [p.articles for p in taker.publications()] == [1]
    taker.lease.release()
    lease.release()


@pytest.mark.slow  # waits out real lease times
def test_the_heartbeat_keeps_a_live_holder_s_lease(make):
    store = make()
    lease = store.claim_writer("w1-0", ttl=1.5, renew_every=0.3)
    time.sleep(2.0)                                        # past the TTL: the heartbeat renewed it
    with pytest.raises(LeaseHeld):
        make().claim_writer("w1-0", other_holder(), ttl=1.5)
    store.apply(_delta("a"))
    lease.release()


def test_a_dead_process_of_this_host_does_not_hold_its_name(make):
    """A SIGKILLed saver's respawn, or a crashed backend's restart, must not wait for the expiry."""
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    make().claim_writer("w1-0", other_holder(host=socket.gethostname(), pid=gone.pid))
    make().claim_writer("w1-0").release()                 # taken over at once


def test_the_none_store_claims_nothing():
    lease = open_store("none").claim_writer("w1-0")
    lease.ensure()
    lease.release()


@pytest.mark.slow
def test_a_second_backend_under_the_same_writer_name_exits_3_naming_both(tmp_path):
    """Two live backends given one --writer over one store (a shared flag, a journal copied from a
    disk image): the second stops at boot, exit 3, one line naming the holder and the claimant;
    the first goes on counting."""
    from tests.support import start_backend, stop_process

    store = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_backend(tmp_path / "a", "--workers", "1", "--writer", "shared-name", store_url=store)
    try:
        second = start_backend(tmp_path / "b", "--workers", "1", "--writer", "shared-name", store_url=store,
                               wait_ready=False)
        try:
            code = second.proc.wait(timeout=120)
        finally:
            if second.proc.poll() is None:
                stop_process(second.proc, signal.SIGKILL)
        log = second.log()
        assert code == 3, log[-3000:]
        line = next(line for line in log.splitlines() if "CRITICAL" in line and "shared-name-0" in line)
        holders = [c.pid for c in psutil.Process(first.proc.pid).children(recursive=True)]
        assert any(f"held by {socket.gethostname()}:{pid} " in line for pid in holders), line  # the holder...
        assert "claimant" in line and "refused" in line, line                              # ...and the claimant
        assert "Traceback" not in log
        first.client.put("The Planet", "Ada Lovelace met Charles Babbage.")
        assert first.wait_idle()["processed"] >= 1
    finally:
        assert first.stop() == 0, first.log()[-3000:]


def test_a_killed_holder_not_yet_reaped_does_not_hold_its_name():
    """A SIGKILLed saver whose parent died too is a zombie until someone reaps it (in a container,
    pid 1 may never): its name is free at once, as for a process that is gone."""
    import multiprocessing
    import os

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    zombie = ctx.Process(target=ready.set)
    zombie.start()
    ready.wait(10)
    os.kill(zombie.pid, signal.SIGKILL)
    wait_for_state = time.monotonic() + 10
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < wait_for_state:
        time.sleep(0.01)
    assert psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE
    try:
        from ingest.stores.lease import _proc_start

        held = Holder(id="old", host=socket.gethostname(), pid=zombie.pid, started="2026-01-01T00:00:00Z",
                      proc_start=_proc_start(zombie.pid) or "")
        assert holder_is_dead(held)
    finally:
        zombie.join()
