"""ingest-load against the real stack: ingestiond (spaCy, SQLite) + ingest-frontend (gunicorn) on loopback.

What a user relies on: the report's accepted count equals what the store counts, a full queue (503 with
Retry-After) is waited out rather than lost, and failures end the run quickly with a clear exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ingest.tools.datasets import Article, Dataset
from ingest.tools.load import main, percentile, plan, resolve_api_key, retry_after
from ingest.core.rules import publication_key
from tests.frontend_support import start_frontend
from tests.support import BIN, ROOT, free_port, start_backend, wait_for

SAMPLE = ROOT / "data" / "sample.jsonl"
SAMPLE_ARTICLES = 34


def _env(api_key: str | None, env: dict | None) -> dict:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    child_env["INGEST_VAR_DIR"] = "/nonexistent-ingest-var"  # no stray var/api_keys file
    if api_key is not None:
        child_env["INGEST_API_KEY"] = api_key
    child_env.update(env or {})
    return child_env


def load(*args: str, api_key: str | None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed console script as a user would."""
    return subprocess.run([str(BIN / "ingest-load"), *args], env=_env(api_key, env), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def interrupted_load(*args: str, api_key: str, when) -> tuple[int, str]:
    """Start ingest-load, Ctrl-C it (SIGINT to its PID only) once `when()` is true."""
    proc = subprocess.Popen([str(BIN / "ingest-load"), *args], env=_env(api_key, None), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(when, 60, 0.05, "the load to get going")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def stored_articles(url: str) -> dict[str, int]:
    pubs = httpx.get(url + "/publications", timeout=10).json()
    return {publication_key(p["publication"]): p["articles"] for p in pubs}


class Stack:
    def __init__(self, backend, frontend):
        self.backend, self.frontend = backend, frontend
        self.url, self.api_key = frontend.url, frontend.api_key

    def settled_counts(self) -> dict[str, int]:
        self.backend.wait_idle()
        return stored_articles(self.url)


def _stack(tmp_path: Path, *backend_flags: str):
    backend = start_backend(tmp_path, "--workers", "1", *backend_flags)
    try:
        frontend = start_frontend(tmp_path, backend.env)
    except BaseException:
        backend.stop()
        raise
    try:
        yield Stack(backend, frontend)
    finally:
        frontend.stop()
        assert backend.stop() == 0, backend.log()[-2000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from _stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def tiny_queue_stack(tmp_path_factory):
    """Room for two queued articles (and one at the worker): a burst of posts meets 503 with Retry-After."""
    yield from _stack(tmp_path_factory.mktemp("tiny"), "--queue-size", "2", "--batch-size", "1")


def sample_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for article in Dataset(SAMPLE):
        counts[publication_key(article.publication)] = counts.get(publication_key(article.publication), 0) + 1
    return counts


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# --- against the real stack -----------------------------------------------------------------------------

@pytest.mark.slow
def test_single_posts_are_all_counted_and_reported(stack, tmp_path):
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", stack.url, "--concurrency", "4", "--json", str(report_path), api_key=stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert (report["articles"], report["sent"], report["accepted"], report["lost"]) == (SAMPLE_ARTICLES,) * 3 + (0,)
    assert report["rejected"] == {} and report["requests"] == SAMPLE_ARTICLES and report["ok"] is True
    assert all(report["latency_ms"][p] > 0 for p in ("p50", "p95", "p99"))
    assert delta(before, stack.settled_counts()) == sample_counts()
    for label in ("accepted     34", "rejected     0", "articles/s", "latency p50", "latency p95", "latency p99"):
        assert label in result.stdout
    assert "ingest-load: " in result.stderr  # the progress bar
    assert stack.api_key not in result.stdout + result.stderr + report_path.read_text()


@pytest.mark.slow
def test_batches_are_all_counted(stack, tmp_path):
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    status = main([str(SAMPLE), "--url", stack.url, "--api-key", stack.api_key, "--batch", "8", "--limit", "20",
                   "--no-progress", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert status == 0
    assert (report["endpoint"], report["accepted"], report["requests"]) == ("/posts", 20, 3)  # 8 + 8 + 4
    assert sum(delta(before, stack.settled_counts()).values()) == report["accepted"] == 20


@pytest.mark.slow
def test_oversized_article_is_rejected_the_rest_accepted_exit_1(stack, tmp_path):
    dataset = tmp_path / "mixed.jsonl"
    rows = [{"publication": "Loadtest Weekly", "content": "Ada Lovelace visited London."},
            {"publication": "Loadtest Weekly", "content": "Paris " * 200_000},  # 1.2 MB body: over the 1 MiB limit
            {"publication": "Loadtest Weekly", "content": "Alan Turing worked in Manchester."},
            {"publication": "Loadtest Weekly", "content": "  "}]  # skipped by the reader, reported as such
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(dataset), "--url", stack.url, "--concurrency", "1", "--json", str(report_path), api_key=stack.api_key)
    report = json.loads(report_path.read_text())
    assert result.returncode == 1, result.stdout + result.stderr
    assert (report["accepted"], report["rejected"], report["lost"], report["ok"]) == (2, {"413": 1}, 0, False)
    assert (report["articles"], report["skipped_rows"]) == (3, {"empty content": 1})
    assert report["rejected_examples"]["413"].startswith(f"{dataset}:2: ")
    assert "first 413:" in result.stdout and "INCOMPLETE" in result.stdout
    assert delta(before, stack.settled_counts()) == {"loadtest weekly": 2}


@pytest.mark.slow
def test_wrong_api_key_stops_after_one_request(stack, tmp_path):
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    result = load(str(SAMPLE), "--url", stack.url, "--json", str(report_path), api_key="not-the-key-" + "x" * 8)
    assert time.monotonic() - started < 15
    assert result.returncode == 2
    report = json.loads(report_path.read_text())
    assert (report["requests"], report["accepted"], report["rejected"]) == (1, 0, {"401": 1})
    assert report["not_sent"] == SAMPLE_ARTICLES - 1
    assert "refused the API key (401" in result.stderr
    assert "not-the-key" not in result.stdout + result.stderr


@pytest.mark.slow
def test_full_queue_is_retried_until_everything_is_counted(tiny_queue_stack, tmp_path):
    stack = tiny_queue_stack
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", stack.url, "--concurrency", "8", "--json", str(report_path), api_key=stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["retry_reasons"].get("503", 0) > 0, "a queue of 2 behind 8 senders must have answered 503"
    assert report["requests"] == SAMPLE_ARTICLES + report["retries"]
    assert (report["accepted"], report["lost"], report["rejected"]) == (SAMPLE_ARTICLES, 0, {})
    assert delta(before, stack.settled_counts()) == sample_counts()


@pytest.mark.slow
def test_batch_that_never_fits_is_given_up_after_honouring_retry_after(tiny_queue_stack, tmp_path):
    """5 articles never fit a queue of 2: one retry after Retry-After (1 s), then lost, and the run stops."""
    stack = tiny_queue_stack
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", stack.url, "--batch", "5", "--max-retries", "1", "--json", str(report_path),
                  api_key=stack.api_key)
    report = json.loads(report_path.read_text())
    assert result.returncode == 1
    assert (report["requests"], report["retries"], report["accepted"], report["lost"]) == (2, 1, 0, 5)
    assert report["not_sent"] == SAMPLE_ARTICLES - 5
    assert report["wall_seconds"] >= 1.0, "the retry must wait for Retry-After"
    assert "gave up after 2 attempts" in result.stderr and f"{SAMPLE}:1" in result.stderr
    assert stack.settled_counts() == before


@pytest.mark.slow
def test_ctrl_c_mid_run_reports_exactly_what_was_accepted(tiny_queue_stack, tmp_path):
    """Interrupted while the queue is full: the report still matches what the store ends up counting."""
    stack = tiny_queue_stack
    before = stack.settled_counts()
    accepted_before = stack.backend.status()["accepted"]
    dataset = tmp_path / "sample-x4.jsonl"
    dataset.write_text(SAMPLE.read_text() * 4)  # far more than fits through a queue of 2 in the time it takes
    report_path = tmp_path / "report.json"
    status, out = interrupted_load(str(dataset), "--url", stack.url, "--concurrency", "4", "--json", str(report_path),
                                   api_key=stack.api_key, when=lambda: stack.backend.status()["accepted"] >= accepted_before + 3)
    assert status == 130
    report = json.loads(report_path.read_text())
    assert report["stopped"] == "interrupted" and "stopped: interrupted" in out
    assert 3 <= report["accepted"] < 4 * SAMPLE_ARTICLES
    assert report["sent"] == report["accepted"] and report["not_sent"] == 4 * SAMPLE_ARTICLES - report["accepted"], json.dumps(report)
    assert sum(delta(before, stack.settled_counts()).values()) == report["accepted"], json.dumps(report)


# --- failures before or without a server ------------------------------------------------------------------

def test_unreachable_frontend_is_lost_quickly_exit_1(tmp_path):
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", f"http://127.0.0.1:{free_port()}", "--max-retries", "2", "--json", str(report_path),
                  api_key="k", timeout=30)
    assert result.returncode == 1
    report = json.loads(report_path.read_text())
    assert (report["requests"], report["retries"], report["lost"], report["not_sent"]) == (3, 2, 1, SAMPLE_ARTICLES - 1)
    assert report["retry_reasons"] == {"ConnectError": 2}
    assert "gave up after 3 attempts" in result.stderr


def test_dataset_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"publication": "P", "content": "ok"}\n{"publication": "P", "content": 7}\n')
    result = load(str(bad), "--url", f"http://127.0.0.1:{free_port()}", api_key="k")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ingest-load: error: {bad}:2: 'content' must be a string, found number"]
    assert result.stdout == ""


def test_missing_api_key_and_bad_arguments_exit_2(tmp_path):
    result = load(str(SAMPLE), api_key=None, env={"INGEST_VAR_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no API key" in result.stderr and "Traceback" not in result.stderr
    assert load(str(SAMPLE), "--concurrency", "0", api_key="k").returncode == 2
    assert load(str(SAMPLE), "--url", "127.0.0.1:8000", api_key="k").returncode == 2
    missing = load(str(tmp_path / "nope.jsonl"), api_key="k")
    assert missing.returncode == 2 and "nope.jsonl: cannot read" in missing.stderr


# --- pieces -----------------------------------------------------------------------------------------

def test_api_key_sources_in_order(tmp_path):
    keyfile = tmp_path / "api_keys"
    keyfile.write_text("# comment\n\nfile-key\n")
    assert resolve_api_key("flag", {"INGEST_API_KEY": "env"}) == "flag"
    assert resolve_api_key(None, {"INGEST_API_KEY": "env", "INGEST_API_KEYS": "a,b"}) == "env"
    assert resolve_api_key(None, {"INGEST_API_KEYS": " , a, b"}) == "a"
    assert resolve_api_key(None, {"INGEST_VAR_DIR": str(tmp_path)}) == "file-key"


def test_plan_batches_by_count_and_bytes():
    articles = [Article("P", "x" * 100, f"f:{i}") for i in range(1, 8)]
    single = list(plan(articles, None, 10_000))
    assert [(w.path, w.articles) for w in single] == [("/post/enqueue", 1)] * 7
    assert json.loads(single[0].body) == {"publication": "P", "content": "x" * 100}
    batches = list(plan(articles, 3, 10_000))
    assert [w.articles for w in batches] == [3, 3, 1] and [w.where for w in batches] == ["f:1", "f:4", "f:7"]
    assert [len(json.loads(w.body)) for w in batches] == [3, 3, 1]
    small = list(plan(articles, 10, 300))  # each item is ~135 bytes: two fit under 300
    assert [w.articles for w in small] == [2, 2, 2, 1] and all(len(w.body) <= 300 for w in small)


def test_retry_after_and_percentiles():
    def resp(value):
        return httpx.Response(503, headers={"Retry-After": value} if value is not None else {})

    assert retry_after(resp("2")) == 2.0
    assert retry_after(resp("9999")) == 30.0  # capped
    assert retry_after(resp(None)) is None and retry_after(resp("soon")) is None
    assert retry_after(resp("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # a date in the past
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50.0, 95.0, 99.0)
