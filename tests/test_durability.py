"""A 202 is a promise: SIGKILL of the backend's whole process group at random moments while articles
stream in, restarts, client retries, poison articles, a store that is down or not ours. Every article
has its own publication, so each acknowledged article can be traced: 0 lost, 0 counted twice, and
entity counts equal an independent recount."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from ingest.client import BackendUnavailable, Draining, IngestClient, OutcomeUnknown, QueueFull
from ingest.core.rules import publication_key
from tests.corpus import articles
from tests.support import BIN, expected_counts, free_port, kill_backend_group, start_backend, store_counts, wait_for

pytestmark = pytest.mark.slow


def traced(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(publication, content, id): one publication per article."""
    return [(f"Trace {i:04d}", content, f"https://example.test/{seed}/{i}")
            for i, (_, content) in enumerate(articles(n, seed=seed))]


class Streamer(threading.Thread):
    """Posts one article at a time, each retried with its id until acknowledged, across restarts."""

    def __init__(self, address, authkey: str, posts):
        super().__init__(daemon=True)
        self.address, self.authkey, self.posts = address, authkey.encode(), posts
        self.acked: list = []
        self.duplicates = 0
        self.retries = 0
        self.acked_at_kills: list[int] = []  # how far the stream was when each kill landed
        self.stop = threading.Event()
        self.gate = threading.Condition()
        self.limit = len(posts)

    def allow(self, n: int) -> None:
        """Post no further than the first `n` articles until allowed more (so a kill lands mid-stream)."""
        with self.gate:
            self.limit = n
            self.gate.notify_all()

    def run(self):
        client = IngestClient(self.address, self.authkey)
        for i, post in enumerate(self.posts):
            with self.gate:
                self.gate.wait_for(lambda i=i: i < self.limit or self.stop.is_set())
            while not self.stop.is_set():
                try:
                    answer = client.put_many([post])
                except (BackendUnavailable, Draining, QueueFull, OutcomeUnknown):  # with ids: resending is safe
                    self.retries += 1
                    time.sleep(0.05)
                    continue
                self.duplicates += answer["duplicates"]
                self.acked.append(post)
                break
            time.sleep(0.02)  # a stream, not a burst: the kills land while articles still arrive


def _random_kills(tmp_path, recount, store_url, env=None, kills=3, n=240):
    posts = traced(n, seed=31)
    port, authkey = free_port(), "test-" + os.urandom(8).hex()
    flags = ("--workers", "2", "--cache-size", "8", "--flush-interval", "0.5")

    def start():
        return start_backend(tmp_path, *flags, store_url=store_url, env=env, port=port, authkey=authkey)

    backend = start()
    streamer = Streamer(("127.0.0.1", port), authkey, posts)
    streamer.start()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    try:
        for _ in range(kills):
            target = min(len(posts) - 80, len(streamer.acked) + rng.randint(5, 40))
            streamer.allow(min(len(posts) - 1, target + 60))  # the stream goes on, but cannot finish before the kill
            wait_for(lambda target=target: len(streamer.acked) >= target, 120, 0.01, "articles streaming in")
            time.sleep(rng.uniform(0, 1.5))  # anywhere: mid-NER, mid-flush, mid-commit, idle
            kill_backend_group(backend)
            streamer.acked_at_kills.append(len(streamer.acked))
            backend = start()
        streamer.allow(len(posts))
        streamer.join(300)
        assert not streamer.is_alive(), "the stream did not finish"
        backend.wait_idle(180)
    finally:
        streamer.stop.set()
        streamer.allow(0)  # wakes it, to stop
        code = backend.stop()
    assert code == 0, backend.log()
    assert len(streamer.acked) == len(posts)
    got = store_counts(store_url)
    doubled = {k: v[0] for k, v in got.items() if v[0] != 1}
    lost = {publication_key(p[0]) for p in posts} - set(got)
    assert not lost and not doubled, f"lost {sorted(lost)[:5]} ({len(lost)}), doubled {doubled}"
    assert got == expected_counts(recount, posts)
    return streamer


def test_sigkill_of_the_whole_group_at_random_moments_sqlite(tmp_path, recount):
    streamer = _random_kills(tmp_path, recount, f"sqlite:///{tmp_path / 'ingest.db'}")
    # the kills landed mid-stream (a put cut off is resent by the client itself, under its token,
    # so the stream's own retries may be none)
    assert len(streamer.acked_at_kills) == 3 and max(streamer.acked_at_kills) < len(streamer.posts), \
        streamer.acked_at_kills


@pytest.mark.firestore
def test_sigkill_of_the_whole_group_at_random_moments_firestore(tmp_path, recount, firestore_emulator,
                                                                 firestore_project):
    _random_kills(tmp_path, recount, f"firestore://{firestore_project}",
                  env={"FIRESTORE_EMULATOR_HOST": firestore_emulator}, n=160)


def test_sigquit_under_load_stops_at_once_and_the_next_start_counts_everything(tmp_path, recount):
    posts = traced(80, seed=32)
    backend = start_backend(tmp_path, "--workers", "1", "--cache-size", "1000", "--flush-interval", "60")
    port, authkey = backend.address[1], backend.authkey
    backend.client.put_many(posts)
    wait_for(lambda: backend.status()["in_flight"] > 0, 60, what="work in flight")
    assert backend.stop(signal.SIGQUIT) == 1
    assert "stay in the journal" in backend.log()
    backend = start_backend(tmp_path, "--workers", "1", port=port, authkey=authkey)
    try:
        backend.wait_idle()
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def test_the_same_id_twice_is_counted_once_also_across_a_restart(tmp_path, recount):
    posts = traced(20, seed=33)
    backend = start_backend(tmp_path, "--workers", "1")
    port, authkey = backend.address[1], backend.authkey
    try:
        assert backend.client.put_many(posts[:10]) == {"accepted": 10, "duplicates": 0}
        assert backend.client.put_many(posts[5:15]) == {"accepted": 5, "duplicates": 5}
        # the same id under the same publication key, spelled differently: a retry, not a new article
        respelled = [(p[0].upper() + "  ", p[1], p[2]) for p in posts[:3]]
        assert backend.client.put_many(respelled) == {"accepted": 0, "duplicates": 3}
        # no id: counted every time, as before
        assert backend.client.put_many([(posts[0][0], posts[0][1])])["accepted"] == 1
    finally:
        assert backend.stop() == 0
    backend = start_backend(tmp_path, "--workers", "1", port=port, authkey=authkey)
    try:
        assert backend.client.put_many(posts) == {"accepted": 5, "duplicates": 15}
        backend.wait_idle()
    finally:
        assert backend.stop() == 0
    expected = expected_counts(recount, posts + [posts[0]])
    assert store_counts(backend.store_url) == expected


def test_a_poison_article_is_quarantined_and_every_other_article_counted(tmp_path, recount):
    posts = traced(30, seed=34)
    poison = ("Trace poison", "This article kills NER workers: POISON-7f3a. Angela Merkel.", "poison-1")
    backend = start_backend(tmp_path, "--workers", "2", "--batch-size", "8",
                            env={"INGEST_TEST_POISON_TOKEN": "POISON-7f3a"})
    try:
        backend.client.put_many(posts[:15] + [poison] + posts[15:])
        status = wait_for(lambda: (lambda s: s if s["quarantined"] == 1 and s["processed"] == 30 else None)(
            backend.status()), 180, what="the poison article to be quarantined")
        assert status["worker_deaths"] >= 2 and status["quarantined_total"] == 1
        wait_for(lambda: backend.status()["unsaved"] == 0 and backend.status()["in_flight"] == 0, 60)
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)
    assert "quarantined" in backend.log()
    env = {**os.environ, "INGEST_VAR_DIR": str(tmp_path / "var")}
    listing = subprocess.run([str(BIN / "ingestiond"), "quarantine", "list"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert listing.returncode == 0 and "Trace poison" in listing.stdout and "2 kills" in listing.stdout, listing
    seq = listing.stdout.split("\t", 1)[0]
    dropped = subprocess.run([str(BIN / "ingestiond"), "quarantine", "drop", seq], capture_output=True,
                             text=True, env=env, timeout=60)
    assert dropped.returncode == 0 and "1 dropped" in dropped.stderr
    again = subprocess.run([str(BIN / "ingestiond"), "quarantine", "list"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert again.stdout == "" and "0 quarantined" in again.stderr


def test_a_retried_quarantined_article_is_taken_by_the_running_backend(tmp_path, recount):
    posts = traced(3, seed=35)
    poison = ("Trace poison", "Kills once: POISON-77. Barack Obama in Paris.", "p")
    backend = start_backend(tmp_path, "--workers", "1", env={"INGEST_TEST_POISON_TOKEN": "POISON-77"})
    try:
        backend.client.put_many([poison, *posts])
        wait_for(lambda: backend.status()["quarantined"] == 1, 180, what="quarantine")
        backend.wait_idle()
        # the operator fixed the cause (here: the seam is still armed, so it comes straight back)
        env = {**os.environ, "INGEST_VAR_DIR": str(tmp_path / "var")}
        retried = subprocess.run([str(BIN / "ingestiond"), "quarantine", "retry", "--all"], capture_output=True,
                                 text=True, env=env, timeout=60)
        assert retried.returncode == 0 and "1 sent back" in retried.stderr
        wait_for(lambda: backend.status()["quarantined_total"] == 2, 180, what="the retried article to run again")
    finally:
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def test_a_journal_is_never_replayed_into_another_store(tmp_path):
    first = start_backend(tmp_path, "--workers", "1", "--store", f"sqlite:///{tmp_path / 'a.db'}",
                          store_url=f"sqlite:///{tmp_path / 'a.db'}?timeout=0.2")
    blocker = sqlite3.connect(tmp_path / "a.db", timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        first.client.put_many(traced(3, seed=36))
        assert first.stop(signal.SIGQUIT) == 1
    finally:
        blocker.rollback()
        blocker.close()
    other = start_backend(tmp_path, "--workers", "1", store_url=f"sqlite:///{tmp_path / 'b.db'}", wait_ready=False)
    assert other.proc.wait(60) == 2
    log = other.log()
    assert "a.db" in log and "b.db" in log and "to finish them" in log and "Traceback" not in log
    assert not (tmp_path / "b.db").exists() or store_counts(f"sqlite:///{tmp_path / 'b.db'}") == {}


@pytest.mark.parametrize("kind", ["sqlite-path-under-a-file", "firestore-without-credentials"])
def test_a_store_that_cannot_be_written_is_a_one_line_boot_error(tmp_path, kind):
    env = {}
    if kind.startswith("sqlite"):
        (tmp_path / "afile").write_text("not a directory")
        url = f"sqlite:///{tmp_path / 'afile' / 'ingest.db'}"  # unwritable even for root
    else:
        url = "firestore://no-such-project"
        env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json"),
               "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
    backend = start_backend(tmp_path, "--workers", "1", store_url=url, env=env, wait_ready=False)
    assert backend.proc.wait(120) == 3, backend.log()
    log = backend.log()
    assert "cannot write to store" in log and "stopping instead of respawning" in log
    assert "Traceback" not in log and log.count("spawned saver") == 1


def test_every_article_posted_twice_over_http_some_after_a_cut_connection_is_counted_once(tmp_path, recount):
    import json
    import socket

    import httpx

    from tests.frontend_support import start_frontend

    posts = traced(40, seed=37)
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.5")
    frontend = start_frontend(tmp_path, backend.env)
    host, port = frontend.url.removeprefix("http://").split(":")
    key = {"X-API-Key": frontend.api_key}
    answers = []
    try:
        with httpx.Client(base_url=frontend.url, timeout=30, headers=key) as http:
            for i, (publication, content, ident) in enumerate(posts):
                body = {"publication": publication, "content": content, "id": ident}
                if i % 4 == 0:  # the client sends, then its connection drops before it reads the answer
                    raw = json.dumps(body).encode()
                    with socket.create_connection((host, int(port))) as s:
                        s.sendall(b"POST /post/enqueue HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  + f"X-API-Key: {frontend.api_key}\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
                                  + raw)
                        s.shutdown(socket.SHUT_WR)
                    time.sleep(0.05)
                answers.append(http.post("/post/enqueue", json=body).json())
            batch = http.post("/posts", json=[{"publication": p, "content": c, "id": d} for p, c, d in posts])
            assert batch.status_code == 202 and batch.json() == {"accepted": 0, "duplicates": 40}
        assert sum(a["accepted"] for a in answers) + sum(a["duplicates"] for a in answers) == 40
        assert sum(a["duplicates"] for a in answers) >= 1, \
            "a cut request was in fact delivered: its retry is a duplicate"
        backend.wait_idle()
    finally:
        assert frontend.stop() == 0
        assert backend.stop() == 0
    assert store_counts(backend.store_url) == expected_counts(recount, posts)


def test_a_full_journal_and_a_failing_store_push_back_with_503_and_readyz_says_why(tmp_path, recount):
    import httpx

    from tests.frontend_support import start_frontend

    db = tmp_path / "ingest.db"
    url = f"sqlite:///{db}?timeout=0.2"
    backend = start_backend(tmp_path, "--workers", "1", "--journal-size", "4096", "--store-retries", "1",
                            "--store-unhealthy-after", "1", store_url=url)
    frontend = start_frontend(tmp_path, backend.env)
    posts = traced(60, seed=38)
    accepted = []
    blocker = sqlite3.connect(db, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is down: nothing leaves the journal
    try:
        with httpx.Client(base_url=frontend.url, timeout=30, headers={"X-API-Key": frontend.api_key}) as http:
            refused = None
            for publication, content, ident in posts:
                r = http.post("/post/enqueue", json={"publication": publication, "content": content, "id": ident})
                if r.status_code == 503:
                    refused = r
                    break
                assert r.status_code == 202, r.text
                accepted.append((publication, content, ident))
            assert refused is not None, "a 4 KiB journal cannot hold 60 articles"
            assert refused.json()["error"] == "queue_full" and "journal full" in refused.json()["detail"]
            assert refused.headers["Retry-After"]
            ready = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(http.get("/readyz")), 60,
                             what="/readyz to say 503")
            assert ready.json()["error"] in ("queue_full", "store_unavailable")
            metrics = http.get("/metrics").text
            for name in ("ingest_backend_journal_articles", "ingest_backend_journal_bytes",
                         "ingest_backend_oldest_uncommitted_seconds", "ingest_backend_quarantined",
                         "ingest_backend_journal_fsync_p99_seconds"):
                assert name in metrics, name
            blocker.rollback()
            blocker.close()
            blocker = None
            wait_for(lambda: http.get("/readyz").status_code == 200, 120,
                     what="/readyz back to 200 once the store is back")
        backend.wait_idle()
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        assert frontend.stop() == 0
        assert backend.stop() == 0
    assert accepted and store_counts(url) == expected_counts(recount, accepted)


def test_store_down_only_readiness_fails_after_the_threshold(tmp_path):
    db = tmp_path / "ingest.db"
    url = f"sqlite:///{db}?timeout=0.2"
    backend = start_backend(tmp_path, "--workers", "1", "--store-retries", "1", "--store-unhealthy-after", "2",
                            store_url=url)
    blocker = sqlite3.connect(db, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        backend.client.put_many(traced(3, seed=39))
        wait_for(lambda: backend.status()["store_errors"] >= 1, 60, what="a failed store write")
        assert backend.status()["store_healthy"] is True, "one failure is not an outage yet"
        wait_for(lambda: backend.status()["store_healthy"] is False, 30, what="the store to be unhealthy")
    finally:
        blocker.rollback()
        blocker.close()
    try:
        wait_for(lambda: backend.status()["store_healthy"] and backend.status()["unsaved"] == 0, 60,
                 what="the store to recover")
    finally:
        assert backend.stop() == 0


def test_a_saver_that_cannot_reopen_its_store_loses_nothing_and_recovers_when_the_store_is_back(tmp_path, recount):
    import shutil

    home = tmp_path / "store"
    home.mkdir()
    url = f"sqlite:///{home / 'ingest.db'}?timeout=0.2"
    backend = start_backend(tmp_path, "--workers", "1", "--store-retries", "1", "--store-unhealthy-after", "1",
                            store_url=url)
    posts = traced(30, seed=40)
    try:
        backend.client.put_many(posts[:10])
        backend.wait_idle()
        blocker = sqlite3.connect(home / "ingest.db", timeout=5)
        blocker.execute("BEGIN EXCLUSIVE")  # writes fail ...
        moved = tmp_path / "store.moved"
        home.rename(moved)
        home.write_text("not a directory")  # ... and the store cannot be reopened: a saver respawn fails
        backend.client.put_many(posts[10:])
        wait_for(lambda: backend.status()["store_healthy"] is False, 60, what="the store to be unhealthy")
        assert "cannot reopen the store" in backend.log() or "cannot write to store" in backend.log()
        assert backend.proc.poll() is None, "a store outage mid-run is not a reason to stop"
        blocker.rollback()
        blocker.close()
        home.unlink()
        moved.rename(home)
        wait_for(lambda: (lambda s: s["store_healthy"] and s["unsaved"] == 0 and s["processed"] >= 30)(
            backend.status()), 120, what="the store to be back and everything stored")
    finally:
        if home.is_file():
            home.unlink()
        if (tmp_path / "store.moved").exists() and not home.exists():
            shutil.move(str(tmp_path / "store.moved"), str(home))
        assert backend.stop() == 0, backend.log()
    assert store_counts(url) == expected_counts(recount, posts)


def test_a_disk_that_fills_during_the_drain_loses_nothing(tmp_path, recount):
    var = tmp_path / "var"
    var.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(var)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"LOUD SKIP: cannot mount a small tmpfs to fill a disk here ({mounted.stderr.strip()}); "
                    "the disk-full drain is not tested on this machine")
    backend = None
    try:
        posts = traced(40, seed=41)
        port, authkey = free_port(), "test-" + os.urandom(8).hex()
        store = f"sqlite:///{tmp_path / 'ingest.db'}"  # the store is on another disk; the journal's fills
        backend = start_backend(tmp_path, "--workers", "1", "--cache-size", "1000", "--flush-interval", "60",
                                "--drain-timeout", "10", store_url=store, port=port, authkey=authkey)
        backend.client.put_many(posts)
        wait_for(lambda: backend.status()["in_flight"] > 0 or backend.status()["processed"] > 0, 60)
        filler = var / "filler"
        # fill the disk under the journal to the last byte (unbuffered: close cannot fail)
        with open(filler, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        code = backend.stop(timeout=120)
        assert code in (0, 1), backend.log()
        filler.unlink()
        backend = start_backend(tmp_path, "--workers", "1", store_url=store, port=port, authkey=authkey)
        try:
            backend.wait_idle()
        finally:
            assert backend.stop() == 0
        assert store_counts(store) == expected_counts(recount, posts)
    finally:
        if backend is not None:
            backend.stop(signal.SIGKILL)  # a no-op once stopped; after a failure, nothing is left running
        subprocess.run(["umount", "-l", str(var)], capture_output=True)


def _kill_right_after_a_journal_write(backend, wal, timeout: float = 5.0) -> float:
    """SIGKILL the group the moment the journal's WAL changes: a commit is on its way to disk and its
    requests are not answered yet (a killed process's writes stay in the page cache: they are durable)."""
    import psutil

    members = [backend.proc.pid] + [p.pid for p in psutil.Process(backend.proc.pid).children(recursive=True)]
    before, deadline = wal.stat().st_mtime_ns, time.monotonic() + timeout
    while wal.stat().st_mtime_ns == before and time.monotonic() < deadline:
        pass
    killed = time.monotonic()
    os.killpg(backend.proc.pid, signal.SIGKILL)
    backend.proc.wait(30)
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in members), 30, what="the killed group to be gone")
    return killed


def test_sigkill_of_the_group_under_posts_without_ids_every_answer_is_true(tmp_path, recount):
    """Four clients POST single articles WITHOUT ids over HTTP while the backend's process group is
    SIGKILLed three times and restarted (as supervisord would). A client resends only after a 503 or
    429 (nothing was enqueued), never after a 504 (outcome unknown). Each attempt is its own
    publication, so the store says which attempts were counted: every 202 exactly once, no 503 ever,
    a 504 at most once. Before request tokens, a put the backend had journaled just before dying
    was answered 503, resent, and counted twice."""
    import httpx

    from tests.frontend_support import start_frontend

    clients, per_client = 4, 120
    texts = [content for _, content in articles(clients * per_client, seed=41)]
    port, authkey = free_port(), "test-" + os.urandom(8).hex()
    flags = ("--workers", "1", "--cache-size", "16", "--flush-interval", "0.5")
    lock = threading.Lock()
    answers: dict[str, int] = {}  # publication of each attempt -> HTTP status
    posts: dict[str, str] = {}  # publication of each attempt -> content
    done = [0]
    stop = threading.Event()
    spans: list[tuple[float, float]] = []  # (sent, answered) of every attempt
    kill_times: list[float] = []

    def start(wait_ready=True):
        return start_backend(tmp_path, *flags, port=port, authkey=authkey, wait_ready=wait_ready)

    def serving():  # the manager answers (the worker may still be loading spaCy): puts are taken again
        try:
            return backend.status()
        except BackendUnavailable:
            return None

    backend = start()
    try:  # more threads than clients: a request waiting for the backend to come back holds its thread
        frontend = start_frontend(tmp_path, backend.env, env={"INGEST_FRONTEND_THREADS": str(clients + 4)})
    except BaseException:
        backend.stop(signal.SIGKILL)
        raise
    unexpected: list[int] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=frontend.url, timeout=60, headers={"X-API-Key": frontend.api_key}) as http:
            for i in range(c * per_client, (c + 1) * per_client):
                attempt = 0
                while not stop.is_set():
                    publication = f"Nokey {i:04d} try {attempt}"
                    with lock:
                        posts[publication] = texts[i]
                    sent = time.monotonic()
                    status = http.post("/post/enqueue",
                                       json={"publication": publication, "content": texts[i]}).status_code
                    with lock:
                        answers[publication] = status
                        spans.append((sent, time.monotonic()))
                    if status in (503, 429):  # nothing was enqueued: resend (as a new attempt, to trace it)
                        attempt += 1
                        time.sleep(0.05)
                        continue
                    if status not in (202, 504):  # 504 outcome_unknown: no id, so never resent
                        unexpected.append(status)
                    break
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    try:
        for t in threads:
            t.start()
        for _ in range(3):
            target = done[0] + 40
            wait_for(lambda target=target: done[0] >= target, 120, 0.01, "articles streaming in")
            kill_times.append(_kill_right_after_a_journal_write(backend, tmp_path / "var" / "journal.db-wal"))
            # supervisord notices the exit and starts it again, once the front door says it is down
            wait_for(lambda: httpx.get(frontend.url + "/readyz", timeout=10).status_code == 503, 60, 0.05,
                     "the frontend to see the backend gone")
            backend = start(wait_ready=False)
            wait_for(serving, 120, 0.05, "the restarted backend to serve")
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "the clients did not finish"
        backend.wait_idle(180)
    finally:
        stop.set()
        code = frontend.stop()
        assert backend.stop() == 0, backend.log()[-3000:]
    assert code == 0 and "Traceback" not in frontend.log(), frontend.log()[-3000:]
    assert not unexpected, unexpected
    got = store_counts(backend.store_url)
    status_of = {publication_key(p): s for p, s in answers.items()}
    lost = sorted(k for k, s in status_of.items() if s == 202 and k not in got)
    doubled = {k: v[0] for k, v in got.items() if v[0] != 1}
    untrue = sorted(k for k, s in status_of.items() if s == 503 and k in got)
    stray = sorted(set(got) - set(status_of))
    assert not lost and not doubled and not untrue and not stray, \
        f"lost {lost[:5]} ({len(lost)}), doubled {doubled}, counted after a 503 {untrue[:5]} ({len(untrue)}), " \
        f"{stray[:5]}"
    assert done[0] == clients * per_client
    assert all(any(sent < k < answered for sent, answered in spans) for k in kill_times), \
        "every kill must interrupt requests in flight"
    counted = [(p, posts[p]) for p in answers if publication_key(p) in got]
    assert got == expected_counts(recount, counted)
