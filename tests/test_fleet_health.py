"""Health that means something in a fleet: the frontend's /healthz (what the instance group's
autohealing probes) fails with a reason when the backend on the same machine is wedged, nack-looping
or not committing, and passes again once it recovers. The backend writes facts
(backend/health.py), the frontend judges them (web/backend_health.py)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import httpx
import pytest

from ingest.backend.health import HealthFile, HealthTracker
from ingest.web.backend_health import BackendHealth, judge, probe_answer
from tests.corpus import articles
from tests.frontend_support import start_frontend
from tests.support import expected_counts, start_backend, store_counts, wait_for

LIMITS = BackendHealth("unused", stall_seconds=30, commit_seconds=300, nacks_per_minute=100)


# -- the facts (no processes) ----------------------------------------------------------------------

def test_work_that_waits_is_timed_from_its_arrival_or_the_last_commit_never_from_an_old_commit():
    t = HealthTracker()
    assert t.update(0.0, {"store_batches": 5}, "running")["uncommitted_seconds"] == 0.0  # idle
    t.update(100.0, {"store_batches": 5, "depth": 3}, "running")   # work after a long idle time
    assert t.update(104.0, {"store_batches": 5, "in_flight": 3}, "running")["uncommitted_seconds"] == 4.0
    facts = t.update(105.0, {"store_batches": 6, "unsaved": 2}, "running")  # a commit, work still waiting
    assert (facts["uncommitted_seconds"], facts["last_commit"], facts["pending"]) == (0.0, 105.0, 2)
    assert t.update(111.0, {"store_batches": 6, "pubsub_held_messages": 1}, "running")["uncommitted_seconds"] == 6.0
    assert t.update(112.0, {"store_batches": 7}, "running")["uncommitted_seconds"] == 0.0


def test_nacks_are_counted_over_the_last_minute_only():
    t = HealthTracker()
    for second in range(0, 61):
        facts = t.update(float(second), {"pubsub_nacked": 10 if second >= 5 else 0}, "running")
    assert facts["nacks_last_minute"] == 10
    for second in range(61, 70):
        facts = t.update(float(second), {"pubsub_nacked": 10}, "running")
    assert facts["nacks_last_minute"] == 0
    assert t.update(70.0, {}, "running")["nacks_last_minute"] == 0  # no Pub/Sub intake: none


def test_the_file_is_replaced_whole_and_says_stopped_at_the_end(tmp_path):
    health = HealthFile(tmp_path / "backend-health.json")
    health.tick(50.0, "running", lambda: {"store_batches": 1, "depth": 2, "pubsub_puller_seconds": 0.1})
    facts = json.loads((tmp_path / "backend-health.json").read_text())
    assert (facts["pid"], facts["monotonic"], facts["mode"], facts["pending"]) == (os.getpid(), 50.0, "running", 2)
    health.tick(50.5, "running", lambda: pytest.fail("written again within a second"))
    health.stopped()
    assert json.loads((tmp_path / "backend-health.json").read_text())["mode"] == "stopped"
    assert [p.name for p in tmp_path.iterdir()] == ["backend-health.json"]


def _facts(**over) -> dict:
    base = {"pid": 7, "time": 0.0, "monotonic": 1000.0, "mode": "running", "pending": 0, "held_messages": 0,
            "commits": 3, "last_commit": 990.0, "uncommitted_seconds": 0.0, "nacks_last_minute": 0,
            "puller_seconds": 0.2}
    return {**base, **over}


@pytest.mark.parametrize("over, now, code, words", [
    ({}, 1001.0, None, None),
    ({}, 1031.0, "backend_wedged", "no status for 31s"),                         # SIGSTOP, a hung loop, dead
    ({"puller_seconds": 29.5}, 1001.0, "backend_wedged", "puller"),              # the loop turns, the puller not
    ({"puller_seconds": None, "mode": "draining"}, 1001.0, None, None),           # no puller while draining
    ({"nacks_last_minute": 101}, 1001.0, "backend_nack_looping", "101 in the last minute"),
    ({"nacks_last_minute": 100}, 1001.0, None, None),
    ({"uncommitted_seconds": 299.5, "pending": 40, "held_messages": 2}, 1001.0, "backend_not_committing",
     "40 articles and 2 messages wait"),
    ({"uncommitted_seconds": 250.0, "pending": 40}, 1001.0, None, None),
    ({"mode": "stopped"}, 1001.0, "backend_not_running", "stopped"),
])
def test_the_verdict_names_what_is_wrong(over, now, code, words):
    verdict = judge(_facts(**over), now, LIMITS)
    assert (verdict and verdict[0]) == code
    if words:
        assert words in verdict[1]


def test_probes_answer_from_the_file_and_readyz_is_left_to_the_app_while_healthy(tmp_path):
    health = BackendHealth(tmp_path / "backend-health.json", stall_seconds=30)
    status, body = probe_answer("/healthz", health)
    assert status == 503 and json.loads(body)["error"] == "backend_not_running"  # not written yet
    assert json.loads(probe_answer("/readyz", health)[1])["ready"] is False
    HealthFile(health.path).tick(__import__("time").monotonic(), "running", lambda: {})
    assert probe_answer("/healthz", health) == (200, b'{"status": "ok"}\n')
    assert probe_answer("/readyz", health) is None and probe_answer("/posts", health) is None
    assert probe_answer("/healthz", None)[0] == 200 and probe_answer("/readyz", None) is None  # off: as before
    health.path.write_text("{")
    assert json.loads(probe_answer("/healthz", health)[1])["error"] == "backend_unknown"


def test_metrics_carry_the_health_file_and_its_dead_letter_backlog(tmp_path):
    """On a fleet VM the frontend's intake is Pub/Sub, not the backend: /metrics reads the backend beside
    it from the health file, its dead-letter backlog included."""
    from ingest.config import FrontendSettings
    from ingest.frontend import create_app

    class Publisher:
        def status(self):
            return {"state": "accepting", "pubsub_published": 5}

    path = tmp_path / "backend-health.json"
    HealthFile(path).tick(__import__("time").monotonic(), "running", lambda: {"store_batches": 4, "depth": 2})
    facts = json.loads(path.read_text())
    facts["dead_letters_waiting"] = 3
    path.write_text(json.dumps(facts))
    app = create_app(FrontendSettings(store=f"sqlite:///{tmp_path / 'x.db'}", backend_health=path),
                     client=Publisher())
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "ingest_backend_health_dead_letters_waiting 3.0" in text
    assert "ingest_backend_health_pending 2.0" in text and "ingest_backend_pubsub_published 5.0" in text
    assert "ingest_backend_health_pid" not in text


# -- a real backend on the Pub/Sub emulator, a real frontend beside it ------------------------------

def _healthz(frontend) -> tuple[int, dict]:
    r = httpx.get(frontend.url + "/healthz", timeout=10)
    return r.status_code, r.json()


@pytest.mark.slow
def test_healthz_fails_while_the_backend_is_stopped_or_cannot_commit_and_recovers(tmp_path, pubsub_topic, recount):
    """healthy: 200; the backend's main process SIGSTOPped: 503 naming a wedged backend, /readyz too;
    SIGCONT: 200. Then a store that refuses every commit (another process holds its write lock)
    while messages are held: 503 "not committing"; the lock released: 200, and every article counted once."""
    db = tmp_path / "fleet.db"
    store_url = f"sqlite:///{db}"
    (tmp_path / "b").mkdir()
    backend = start_backend(tmp_path / "b", "--workers", "1", "--flush-interval", "0.5", "--intake",
                            pubsub_topic.backend_url, store_url=store_url, env=pubsub_topic.env)
    health_file = tmp_path / "b" / "var" / "backend-health.json"
    wait_for(health_file.exists, 30, 0.1, "the backend's first health status")
    frontend = start_frontend(tmp_path, {"INGEST_STORE": store_url}, env={
        **pubsub_topic.env, "INGEST_INTAKE": pubsub_topic.frontend_url, "INGEST_BACKEND_HEALTH": str(health_file),
        "INGEST_BACKEND_STALL_SECONDS": "3", "INGEST_BACKEND_COMMIT_SECONDS": "4"})
    lock = None
    posts = [(f"Outlet {i % 4}", content, f"https://example.test/health/{i}")
             for i, (_, content) in enumerate(articles(20, seed=61))]
    try:
        assert _healthz(frontend) == (200, {"status": "ok"})

        os.kill(backend.proc.pid, signal.SIGSTOP)
        try:
            status, body = wait_for(lambda: (got := _healthz(frontend))[0] == 503 and got, 30, 0.2,
                                    "/healthz to notice the stopped backend")
            assert body["error"] == "backend_wedged" and f"pid {backend.proc.pid}" in body["detail"], body
            ready = httpx.get(frontend.url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["error"] == "backend_wedged"
        finally:
            os.kill(backend.proc.pid, signal.SIGCONT)
        wait_for(lambda: _healthz(frontend)[0] == 200, 30, 0.2, "/healthz to pass after SIGCONT")
        assert httpx.get(frontend.url + "/readyz", timeout=10).status_code == 200

        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every writer of the store now waits, then fails
        with frontend.client(headers={"X-API-Key": frontend.api_key}) as http:
            r = http.post("/posts", json=[{"publication": p, "content": c, "id": i} for p, c, i in posts])
            assert r.status_code == 202, r.text
        # on a loaded machine the puller may miss its 3 s stall limit once meanwhile (backend_wedged, a true
        # answer then); what must come is "not committing"
        status, body = wait_for(lambda: (got := _healthz(frontend))[0] == 503
                                and got[1]["error"] == "backend_not_committing" and got, 60, 0.2,
                                "/healthz to notice that nothing is committed")
        assert body["error"] == "backend_not_committing" and "no store commit" in body["detail"], body
        assert backend.status()["store_batches"] == 0
        lock.rollback()
        lock.close()
        lock = None
        wait_for(lambda: _healthz(frontend)[0] == 200, 60, 0.2, "/healthz to pass once the store commits")
        wait_for(lambda: (s := backend.status())["pubsub_acked"] >= 1 and not s["pubsub_held_messages"]
                 and not s["unsaved"], 60, 0.2, "the message to be committed and acknowledged")
    finally:
        if lock is not None:
            lock.close()
        frontend.stop()
        code = backend.stop()
    assert code == 0, backend.log()[-3000:]
    assert store_counts(store_url) == expected_counts(recount, posts)
    facts = json.loads(health_file.read_text())
    assert facts["mode"] == "stopped" and facts["commits"] >= 1
