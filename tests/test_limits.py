"""Huge articles: memory bounded in bytes, not counts. The longest article accepted goes through a
worker with bounded RSS, and a backlog of them waits on disk, not in the backend's memory."""

from __future__ import annotations

import shutil
import time

import httpx
import psutil
import pytest

from tests.corpus import articles
from tests.frontend_support import start_frontend
from tests.support import start_backend

pytestmark = pytest.mark.slow

MAX_CHARS = 200_000  # the default --max-article-chars


def huge_article(seed: int, chars: int = MAX_CHARS) -> str:
    text, i = [], 0
    for _, content in articles(2000, seed=seed):
        text.append(content)
        i += len(content) + 1
        if i >= chars:
            break
    return " ".join(text)[:chars]


def test_twenty_maximum_size_articles_are_counted_with_worker_rss_under_1_gb(tmp_path):
    backend = start_backend(tmp_path, "--workers", "2")
    peak = 0
    try:
        posts = [(f"Huge {i}", huge_article(i), None) for i in range(20)]
        assert all(len(p[1]) == MAX_CHARS for p in posts)
        for i in range(0, 20, 5):
            assert backend.client.put_many(posts[i:i + 5])["accepted"] == 5
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = backend.status()
            for name, pid in status["children"].items():
                if name.startswith("worker"):
                    try:
                        peak = max(peak, psutil.Process(pid).memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
            if status["processed"] >= 20 and status["unsaved"] == 0:
                break
            time.sleep(0.2)
        assert status["processed"] == 20 and status["worker_deaths"] == 0
    finally:
        assert backend.stop() == 0
    assert 0 < peak < 1024**3, f"worker peak RSS {peak / 1024**2:.0f} MB"
    from ingest.stores import open_store

    store = open_store(backend.store_url, readonly=True)
    try:
        counts = {p.publication: p.articles for p in store.publications()}
        assert counts == {f"Huge {i}": 1 for i in range(20)}
    finally:
        store.close()


def test_a_backlog_of_10000_maximum_size_articles_waits_on_disk_not_in_memory(tmp_path):
    """2 GB of accepted text (10,000 maximum-size articles) is on disk; the
    backend's main process, which holds the queue, grows by less than 100 MB."""
    backend = start_backend(tmp_path, "--workers", "1", "--journal-size", "3GiB")
    try:
        arbiter = psutil.Process(backend.proc.pid)
        before = arbiter.memory_info().rss
        text = huge_article(1)
        started = time.monotonic()
        for i in range(0, 10_000, 50):
            assert backend.client.put_many([(f"Backlog {i + j}", text, None) for j in range(50)])["accepted"] == 50
        took = time.monotonic() - started
        status = backend.status()
        assert status["accepted"] == 10_000 and status["journal_bytes"] >= 1900 * 1024**2
        grown = arbiter.memory_info().rss - before
        print(f"10,000 x {len(text):,} characters accepted in {took:.0f}s; the main process grew by "
              f"{grown / 1024**2:.0f} MB")
        assert grown < 100 * 1024**2, f"the backend's main process grew by {grown / 1024**2:.0f} MB for 2 GB waiting"
    finally:
        backend.proc.kill()  # no drain: 10,000 huge articles would take hours; they stay in the journal
        backend.proc.wait(30)
        backend.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)  # 2 GB: not for pytest's kept temporary directories


def test_an_article_over_the_limit_is_413_and_nothing_is_enqueued(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1")
    frontend = start_frontend(tmp_path, backend.env, env={"INGEST_MAX_ARTICLE_CHARS": "1000"})
    try:
        with httpx.Client(base_url=frontend.url, timeout=30, headers={"X-API-Key": frontend.api_key}) as http:
            r = http.post("/post/enqueue", json={"publication": "BBC", "content": "x" * 1001})
            assert r.status_code == 413 and r.json()["error"] == "article_too_large", r.text
            r = http.post("/posts", json=[{"publication": "BBC", "content": "ok"},
                                          {"publication": "BBC", "content": "y" * 1001}])
            assert r.status_code == 413 and "item 1" in r.json()["detail"]
            r = http.post("/post/enqueue", json={"publication": " " * 5000 + "BBC", "content": "ok"})
            assert r.status_code == 400 and "bytes" in r.json()["detail"], "a publication is bounded before folding"
        assert backend.status()["accepted"] == 0
    finally:
        assert frontend.stop() == 0
        assert backend.stop() == 0
