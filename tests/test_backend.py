"""The real `ingestiond` as a subprocess: exact counts across drains, signals, kills and restarts."""

import os
import signal
import subprocess
import threading
import time

import psutil
import pytest

from ingest.client import BackendUnavailable, Draining, IngestClient, QueueFull
from tests.corpus import articles
from tests.support import BIN, expected_counts, start_backend, store_counts, wait_for

pytestmark = pytest.mark.slow


def child(backend, role):
    """The first live child of `role` ('worker' or 'saver'), as the backend reports it."""
    pid = next(p for name, p in sorted(backend.status()["children"].items()) if name.startswith(role))
    return psutil.Process(pid)


def test_counts_equal_an_independent_recount(tmp_path, recount):
    posts = articles(40, seed=11)
    backend = start_backend(tmp_path, "--workers", "2", "--cache-size", "8")
    try:
        for i in range(0, len(posts), 10):
            assert backend.client.put_many(posts[i:i + 10]) == {"accepted": 10, "duplicates": 0}
        status = backend.wait_idle()
        assert status["processed"] == 40 and status["accepted"] == 40
        assert store_counts(backend.store_url) == expected_counts(recount, posts)  # readable while running
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def _stream(client, posts, accepted, stop):
    """Put posts one request at a time until the backend refuses; record exactly what was accepted."""
    for i in range(0, len(posts), 4):
        if stop.is_set():
            return
        chunk = posts[i:i + 4]
        try:
            client.put_many(chunk)
            accepted.extend(chunk)
        except (Draining, BackendUnavailable):
            return
        except QueueFull:
            time.sleep(0.05)


@pytest.mark.parametrize("group", [False, True], ids=["signal-to-main-process", "signal-to-process-group"])
def test_sigterm_mid_stream_loses_nothing(tmp_path, recount, group):
    posts = articles(160, seed=5 if group else 6)
    backend = start_backend(tmp_path, "--workers", "2", "--cache-size", "16", "--flush-interval", "5")
    accepted, stop = [], threading.Event()
    feeder = threading.Thread(target=_stream, args=(backend.client, posts, accepted, stop))
    feeder.start()
    wait_for(lambda: len(accepted) >= 40, 60, what="some posts accepted")
    status = backend.status()
    assert status["depth"] + status["in_flight"] > 0, "the signal must arrive mid-stream"
    code = backend.stop(signal.SIGINT if group else signal.SIGTERM, timeout=180, group=group)
    stop.set()
    feeder.join()
    assert code == 0, backend.log()
    assert "draining" in backend.log()
    assert store_counts(backend.store_url) == expected_counts(recount, accepted)
    assert not psutil.pid_exists(backend.proc.pid) or psutil.Process(backend.proc.pid).status() == "zombie"


def test_draining_backend_refuses_new_posts(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1")
    try:
        backend.client.put_many(articles(30))
        os.kill(backend.proc.pid, signal.SIGTERM)
        with pytest.raises((Draining, BackendUnavailable)):
            for _ in range(200):  # until the drain ends the manager answers "draining"
                backend.client.put("BBC", "Late article about Paris.")
                time.sleep(0.01)
    finally:
        assert backend.stop() == 0


def test_sigkilled_worker_is_replaced_and_nothing_is_lost(tmp_path, recount):
    posts = articles(400, seed=9)
    backend = start_backend(tmp_path, "--workers", "2", "--cache-size", "1000", "--flush-interval", "60")
    try:
        wait_for(lambda: backend.status()["workers_ready"] == 2, 120, what="both workers ready")
        backend.client.put_many(posts[:300])
        status = wait_for(lambda: (lambda s: s if any(s["in_flight_by_worker"].values()) else None)(
            backend.status()), 60, what="a worker holding unflushed posts")
        held = status["in_flight_by_worker"]
        victim = psutil.Process(status["children"][max(held, key=held.get)])
        victim.kill()
        backend.client.put_many(posts[300:])
        status = wait_for(lambda: (lambda s: s if s["worker_deaths"] == 1 and s["workers_ready"] == 2 else None)(
            backend.status()), 60, what="the worker to be respawned")
        assert victim.pid not in backend.status()["children"].values()
        assert all(psutil.pid_exists(p) for p in backend.status()["children"].values())
        status = backend.wait_idle()
        assert status["processed"] == status["accepted"] and status["redelivered"] + status["suspects"] > 0
        assert "exited with signal SIGKILL" in backend.log()
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def test_restart_keeps_counting_into_the_same_store(tmp_path, recount):
    first, second = articles(20, seed=1), articles(20, seed=2)
    for batch in (first, second):
        backend = start_backend(tmp_path, "--workers", "1")
        try:
            backend.client.put_many(batch)
        finally:
            assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, first + second)


def test_aliases_count_as_their_canonical_name_and_a_store_refuses_other_rules(tmp_path, recount):
    """Counts under rules v2 with an alias file equal a recount with the same aliases (labels too); the
    store records the rules, so a start without the aliases (or with an edited file) is refused: exit 3,
    one line, and nothing of the new start is counted."""
    from ingest.core.naming import Aliases

    aliases = tmp_path / "aliases.csv"
    aliases.write_text("alias,canonical\nMerkel,Angela Merkel\nthe U.N.,United Nations\nNATO,North Atlantic Treaty "
                       "Organization\n")
    posts = articles(30, seed=3) + [("Al Jazeera", "Merkel met NATO's chief in Berlin; Merkel's aides and the "
                                                   "U.N. agreed.")]
    backend = start_backend(tmp_path, "--workers", "1", "--aliases", str(aliases))
    try:
        backend.client.put_many(posts)
        backend.wait_idle()
    finally:
        assert backend.stop() == 0
    expected = expected_counts(lambda p: recount(p, Aliases.load(aliases)), posts)
    assert store_counts(backend.store_url) == expected
    jazeera = store_counts(backend.store_url)["al jazeera"][1]
    assert jazeera["angela merkel"][2] == "PERSON" and "merkel" not in jazeera and "nato" not in jazeera
    assert expected != expected_counts(recount, posts), "the aliases changed nothing: the test proves nothing"

    for args in ([], ["--aliases", str(aliases)]):
        if args:
            aliases.write_text("Merkel,Angela Dorothea Merkel\n")
        again = start_backend(tmp_path, "--workers", "1", *args, wait_ready=False)
        assert again.proc.wait(120) == 3
        assert "its counts were made under counting rules v2+aliases:" in again.log()
        assert "Traceback" not in again.log()
    assert store_counts(backend.store_url) == expected


def test_a_store_written_under_rules_v1_is_refused_with_one_line(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "ingest.db")
    conn.executescript("CREATE TABLE publications (key TEXT PRIMARY KEY, name TEXT NOT NULL, articles INTEGER NOT NULL "
                       "DEFAULT 0, mentions INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
                       "INSERT INTO publications VALUES ('bbc', 'BBC', 1, 0);")
    conn.close()
    backend = start_backend(tmp_path, "--workers", "1", wait_ready=False)
    assert backend.proc.wait(120) == 3
    lines = [line for line in backend.log().splitlines() if "counting rules v1" in line]
    assert lines and "this backend counts under v2;" in lines[0] and "Traceback" not in backend.log()


def test_idle_daemon_flushes_within_the_interval(tmp_path, recount):
    posts = articles(3, seed=4)
    backend = start_backend(tmp_path, "--workers", "1", "--cache-size", "1000", "--flush-interval", "1")
    try:
        backend.client.put_many(posts)
        wait_for(lambda: store_counts(backend.store_url) == expected_counts(recount, posts), 60,
                 what="the posts to reach the store without a shutdown")
    finally:
        assert backend.stop() == 0


def test_full_queue_is_refused_at_once_and_whole(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1", "--queue-size", "5")
    try:
        with pytest.raises(QueueFull):
            backend.client.put_many(articles(6))
        assert backend.status()["accepted"] == 0
        assert backend.client.put_many(articles(5))["accepted"] == 5
        backend.wait_idle()
    finally:
        assert backend.stop() == 0
    assert sum(v[0] for v in store_counts(backend.store_url).values()) == 5


def test_wrong_authkey_is_refused(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1")
    try:
        with pytest.raises(BackendUnavailable):
            IngestClient(backend.address, b"not-the-key").put("BBC", "text")
        assert backend.status()["accepted"] == 0
    finally:
        backend.stop()


def test_no_persist_processes_and_exits_cleanly(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1", "--no-persist", "--log-level", "DEBUG")
    try:
        backend.client.put_many(articles(5))
        assert backend.wait_idle()["processed"] == 5
    finally:
        assert backend.stop() == 0
    assert "would write" in backend.log()
    assert "entity='" in backend.log(), "at DEBUG it names each entity it would have written"
    assert not (tmp_path / "ingest.db").exists()


def test_unloadable_model_is_a_boot_error_not_a_respawn_loop(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1", "--model", "no_such_model_xyz", wait_ready=False)
    assert backend.proc.wait(120) == 3
    log = backend.log()
    assert "no_such_model_xyz" in log and "stopping instead of respawning" in log
    assert log.count("spawned worker") == 1


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers='0': Input should be greater than or equal to 1"),
    (["--flush-interval", "soon"], "--flush-interval='soon': Input should be a valid number"),
    (["--store", "mysql://x"], "unknown store URL"),
    (["--manager-address", "nohost"], "is not HOST:PORT"),
    (["--log-level", "trace"], "--log-level='TRACE': Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    (["--aliases", "no-such-aliases.csv"], "--aliases='no-such-aliases.csv': no-such-aliases.csv: cannot read"),
    (["--aliases", "/dev/null/x"], "cannot read the alias file"),
])
def test_bad_configuration_is_one_clear_line(tmp_path, flags, message):
    result = subprocess.run([str(BIN / "ingestiond"), *flags], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env={**os.environ, "INGEST_AUTHKEY": "k"})
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_environment_variable_is_one_clear_line(tmp_path):
    result = subprocess.run([str(BIN / "ingestiond")], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "INGEST_AUTHKEY": "k", "INGEST_LOG_LEVEL": "trace"})
    assert result.returncode == 2
    assert "INGEST_LOG_LEVEL='TRACE'" in result.stderr and "Traceback" not in result.stderr


def test_environment_variables_configure_and_flags_win(monkeypatch):
    from ingest.config import load_backend_settings

    for name, value in {"INGEST_FLUSH_INTERVAL": "0.5", "INGEST_WORKERS": "3", "INGEST_AUTHKEY": "k"}.items():
        monkeypatch.setenv(name, value)
    assert load_backend_settings([]).flush_interval == 0.5
    assert load_backend_settings([]).workers == 3
    assert load_backend_settings(["--workers", "2"]).workers == 2


def test_generated_authkey_file_is_private(tmp_path, monkeypatch):
    from ingest.config import ensure_authkey, load_backend_settings

    monkeypatch.delenv("INGEST_AUTHKEY", raising=False)
    monkeypatch.setenv("INGEST_VAR_DIR", str(tmp_path))
    settings = load_backend_settings([])
    path = tmp_path / "authkey"
    assert not path.exists(), "parsing the configuration must not write files"
    key = ensure_authkey(settings)
    assert path.read_text().strip().encode() == key
    assert (path.stat().st_mode & 0o777) == 0o600
    assert ensure_authkey(load_backend_settings([])) == key  # stable across restarts


def test_store_outage_during_drain_stays_in_the_journal_and_is_committed_at_the_next_start(tmp_path, recount):
    import sqlite3

    posts = articles(12, seed=21)
    db = tmp_path / "ingest.db"
    url = f"sqlite:///{db}?timeout=0.2"
    first = start_backend(tmp_path, "--workers", "1", "--store-retries", "2", store_url=url)
    blocker = sqlite3.connect(db, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is unwritable for the whole drain
    try:
        first.client.put_many(posts)
        code = first.stop()
    finally:
        blocker.rollback()
        blocker.close()
    assert code == 1, "a drain that could not store everything must not exit 0"
    assert "12 accepted articles are not stored yet; they stay in the journal" in first.log()
    assert store_counts(url) == {}
    second = start_backend(tmp_path, "--workers", "1", store_url=url)
    try:
        second.wait_idle()
        assert "recovering from the journal: 1 recorded batches (12 articles)" in second.log()
    finally:
        assert second.stop() == 0
    assert store_counts(url) == expected_counts(recount, posts)
    assert second.status is not None and "not stored yet" not in second.log()


def test_sigkilled_saver_is_replaced_and_its_batch_retried(tmp_path, recount):
    posts = articles(60, seed=22)
    backend = start_backend(tmp_path, "--workers", "1", "--cache-size", "4")
    try:
        saver = child(backend, "saver")
        backend.client.put_many(posts[:30])
        saver.kill()
        backend.client.put_many(posts[30:])
        status = backend.wait_idle()
        assert status["saver_deaths"] == 1 and status["savers_ready"] == 1
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def test_a_sigkill_of_the_arbiter_alone_takes_every_child_with_it(tmp_path, recount):
    """The saver is stuck in a store write (the database locked by another process): without a
    parent-death signal it would go on writing, orphaned, for minutes after the arbiter died."""
    import sqlite3

    from tests.support import stop_process

    posts = articles(20, seed=31)
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.5")
    blocker = None
    try:
        arbiter = psutil.Process(backend.proc.pid)
        blocker = sqlite3.connect(tmp_path / "ingest.db", isolation_level=None, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")
        backend.client.put_many(posts)
        # every article processed and handed to the saver, which now waits on the lock
        wait_for(lambda: (lambda s: s["processed"] == len(posts) and s["unsaved"] == len(posts)
                          and s["retry_batches"] == 0)(backend.status()), 120, what="the saver to be mid-write")
        children = arbiter.children(recursive=True)
        assert len(children) >= 2
        arbiter.kill()
        backend.proc.wait(30)
        alive = lambda: [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
        wait_for(lambda: not alive(), 30, 0.1, "every child of the killed arbiter to exit")
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        stop_process(backend.proc, signal.SIGKILL, 5, group=True)
    # the next start recovers the journal and counts each article once
    second = start_backend(tmp_path, "--workers", "1", store_url=backend.store_url)
    try:
        second.wait_idle()
    finally:
        assert second.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)
