"""ingest-load against the real stack: ingestiond (spaCy, SQLite) + ingest-frontend (gunicorn) on loopback.

What a user relies on: the report's accepted count equals what the store counts, a full queue (503 with
Retry-After) is waited out rather than lost, and failures end the run quickly with a clear exit status.
Ids: sent where the dataset has them, and a request is resent after a failure that may have followed
its delivery (read timeout, dropped connection) only when every article in it has one; a fake frontend
on loopback that drops or stalls chosen requests shows both sides of that.
After sending, ingest-load waits until the backend has processed what was accepted (GET /readyz
counters): the real stack shows the store complete the moment it returns; the fake frontend's scripted
/readyz answers show the wait's rules (baseline, idle, 503 JSON, timeout, restart, quarantine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import pytest

from ingest.tools.datasets import Article, Dataset
from ingest.tools.load.cli import EXIT_STATUS, build_parser, main, resolve_api_key
from ingest.tools.load.plan import Work, plan
from ingest.tools.load.report import Report, percentile
from ingest.tools.load.send import SAFE_TO_RETRY, Sender, Stats, may_resend, retry_after
from ingest.tools.load.wait import drained, progress_of, wait_for_backend
from ingest.core.rules import publication_key
from tests.frontend_support import start_frontend
from tests.support import BIN, ROOT, free_port, start_backend, wait_for

SAMPLE = ROOT / "data" / "sample.jsonl"
SAMPLE_ARTICLES = 34

# ingest-load runs as a process against a real HTTP server on loopback (a fake frontend, or the stack)
pytestmark = pytest.mark.slow


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


def interrupted_load(*args: str, api_key: str, when, interrupted=lambda: None) -> tuple[int, str]:
    """Start ingest-load, Ctrl-C it (SIGINT to its PID only) once `when()` is true; then `interrupted()`."""
    proc = subprocess.Popen([str(BIN / "ingest-load"), *args], env=_env(api_key, None), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    try:
        wait_for(when, 60, 0.05, "the load to get going")
        proc.send_signal(signal.SIGINT)
        interrupted()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def read_report(path: Path) -> Report:
    """The --json report, read back into the dataclass: a key missing from the file, or one too many, fails."""
    return Report.from_dict(json.loads(path.read_text()))


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
    result = load(str(SAMPLE), "--url", stack.url, "--concurrency", "4", "--json", str(report_path),
                  api_key=stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    report = read_report(report_path)
    assert (report.articles, report.sent, report.accepted, report.lost) == (SAMPLE_ARTICLES,) * 3 + (0,)
    assert report.rejected == {} and report.requests == SAMPLE_ARTICLES and report.ok is True
    assert all(getattr(report.latency_ms, p) > 0 for p in ("p50", "p95", "p99"))
    # it waited: the moment it returns, the backend has processed and stored everything it sent
    assert delta(before, stored_articles(stack.url)) == sample_counts()
    assert (report.processed, report.quarantined, report.wait.drained) == (SAMPLE_ARTICLES, 0, True)
    assert report.drain_seconds > 0 and report.total_seconds > report.wall_seconds
    assert 0 < report.processed_per_second < report.accepted_per_second == report.articles_per_second
    assert report.wait.backend_after["processed"] - report.wait.backend_before["processed"] == SAMPLE_ARTICLES
    assert delta(before, stack.settled_counts()) == sample_counts()
    for label in ("accepted     34", "rejected     0", "processed    34", "drain time", "accepted/s", "processed/s",
                  "articles/s", "latency p50", "latency p95", "latency p99",
                  "result: OK, every article accepted and processed"):
        assert label in result.stdout
    assert "ingest-load: " in result.stderr and "processing: " in result.stderr  # the two progress bars
    assert stack.api_key not in result.stdout + result.stderr + report_path.read_text()


@pytest.mark.slow
def test_batches_are_all_counted(stack, tmp_path):
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    status = main([str(SAMPLE), "--url", stack.url, "--api-key", stack.api_key, "--batch", "8", "--limit", "20",
                   "--no-progress", "--json", str(report_path)])
    report = read_report(report_path)
    assert status == 0
    assert (report.endpoint, report.accepted, report.requests) == ("/posts", 20, 3)  # 8 + 8 + 4
    assert report.processed == report.sent == 20 and report.wait.drained is True
    assert sum(delta(before, stored_articles(stack.url)).values()) == report.accepted == 20  # no wait_idle needed


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
    result = load(str(dataset), "--url", stack.url, "--concurrency", "1", "--json", str(report_path),
                  api_key=stack.api_key)
    report = read_report(report_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (report.accepted, report.rejected, report.lost, report.ok) == (2, {"413": 1}, 0, False)
    assert (report.articles, report.skipped_rows) == (3, {"empty content": 1})
    assert report.rejected_examples["413"].startswith(f"{dataset}:2: ")
    assert "first 413:" in result.stdout and "INCOMPLETE" in result.stdout
    assert delta(before, stack.settled_counts()) == {"loadtest weekly": 2}


@pytest.mark.slow
def test_wrong_api_key_stops_after_one_request_exit_1(stack, tmp_path):
    """A refused key is a rejection (exit 1, as --help says), not a usage error."""
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    result = load(str(SAMPLE), "--url", stack.url, "--json", str(report_path), api_key="not-the-key-" + "x" * 8)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    report = read_report(report_path)
    assert (report.requests, report.accepted, report.rejected) == (1, 0, {"401": 1})
    assert report.not_sent == SAMPLE_ARTICLES - 1
    assert "refused the API key (401" in result.stderr
    assert "not-the-key" not in result.stdout + result.stderr


@pytest.mark.slow
def test_full_queue_is_retried_until_everything_is_counted(tiny_queue_stack, tmp_path):
    stack = tiny_queue_stack
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", stack.url, "--concurrency", "8", "--json", str(report_path),
                  api_key=stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    report = read_report(report_path)
    assert report.retry_reasons.get("503", 0) > 0, "a queue of 2 behind 8 senders must have answered 503"
    assert report.requests == SAMPLE_ARTICLES + report.retries
    assert (report.accepted, report.lost, report.rejected) == (SAMPLE_ARTICLES, 0, {})
    assert delta(before, stack.settled_counts()) == sample_counts()


@pytest.mark.slow
def test_batch_that_never_fits_is_given_up_after_honouring_retry_after(tiny_queue_stack, tmp_path):
    """5 articles never fit a queue of 2: one retry after Retry-After (1 s), then lost, and the run stops."""
    stack = tiny_queue_stack
    before = stack.settled_counts()
    report_path = tmp_path / "report.json"
    result = load(str(SAMPLE), "--url", stack.url, "--batch", "5", "--max-retries", "1", "--json", str(report_path),
                  api_key=stack.api_key)
    report = read_report(report_path)
    assert result.returncode == 1
    assert (report.requests, report.retries, report.accepted, report.lost) == (2, 1, 0, 5)
    assert report.not_sent == SAMPLE_ARTICLES - 5
    assert report.wall_seconds >= 1.0, "the retry must wait for Retry-After"
    assert "gave up after 2 attempts" in result.stderr and f"{SAMPLE}:1" in result.stderr
    assert stack.settled_counts() == before


@pytest.mark.slow
def test_ctrl_c_mid_run_reports_exactly_what_was_accepted(tiny_queue_stack, tmp_path):
    """Interrupted while the queue is full: the report still matches what the store ends up counting.

    Once three articles are in, the backend's children are stopped (SIGSTOP): the queue of two fills
    and stays full, and with retries unbounded the load cannot finish before the interrupt, however
    fast this machine is (it once did, and the test saw exit 0 instead of 130)."""
    stack = tiny_queue_stack
    before = stack.settled_counts()
    accepted_before = stack.backend.status()["accepted"]
    children = psutil.Process(stack.backend.proc.pid).children(recursive=True)
    report_path = tmp_path / "report.json"
    stopped: list = []
    refused: list = []

    def three_in_and_children_stopped() -> bool:
        status = stack.backend.status()
        if status["accepted"] < accepted_before + 3:
            return False
        if not stopped:
            for child in children:
                child.send_signal(signal.SIGSTOP)
                stopped.append(child)
            refused.append(status["rejected_full"])
            return False
        return status["rejected_full"] > refused[0]  # full after the stop, and nothing takes from it now

    def resume() -> None:  # the interrupted load still waits for what it sent to be processed
        for child in stopped:
            child.send_signal(signal.SIGCONT)

    try:
        status, out = interrupted_load(str(SAMPLE), "--url", stack.url, "--concurrency", "4",
                                       "--json", str(report_path), "--max-retries", "1000000",
                                       "--max-retry-time", "3600",
                                       api_key=stack.api_key, when=three_in_and_children_stopped, interrupted=resume)
    finally:
        resume()
    assert status == 130, out
    report = read_report(report_path)
    assert report.stopped == "interrupted" and "stopped: interrupted" in out
    assert 3 <= report.accepted < SAMPLE_ARTICLES
    assert report.sent == report.accepted and report.not_sent == SAMPLE_ARTICLES - report.accepted, report
    assert sum(delta(before, stack.settled_counts()).values()) == report.accepted, report


@pytest.mark.slow
def test_ids_are_sent_and_a_second_run_is_all_duplicates(stack, tmp_path):
    """The real server deduplicates on (publication, id): loading the same file again counts nothing twice."""
    dataset = tmp_path / "ids.jsonl"
    rows = [{"publication": "Idempotent Gazette", "content": f"Ada Lovelace met Charles Babbage in London, part {i}.",
             "id": f"{tmp_path.name}-{i}"} for i in range(6)]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = stack.settled_counts()
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert main([str(dataset), "--url", stack.url, "--api-key", stack.api_key, "--batch", "4", "--no-progress",
                 "--json", str(first)]) == 0
    result = load(str(dataset), "--url", stack.url, "--json", str(second), api_key=stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    r1, r2 = read_report(first), read_report(second)
    assert (r1.accepted, r1.duplicates, r1.ok) == (6, 0, True)
    assert (r2.accepted, r2.duplicates, r2.lost, r2.ok) == (0, 6, 0, True)
    assert "duplicates   6  (accepted before with the same id: counted once)" in result.stdout
    assert "OK, every article accepted (6 of them as duplicates)" in result.stdout
    assert delta(before, stack.settled_counts()) == {"idempotent gazette": 6}


# --- a fake frontend on loopback: drops or stalls chosen requests after reading them -----------------------

def counters(status: int = 200, **values) -> tuple[int, dict]:
    """A /readyz answer as the real frontend gives it: backend counters since the backend started."""
    body = {"ready": status == 200, "state": "accepting", "depth": 0, "capacity": 1000, "accepted": 0, "duplicates": 0,
            "processed": 0, "in_flight": 0, "unsaved": 0, "quarantined": 0, "journal_articles": 0}
    body.update(values)
    return status, body


def instant_backend(fake: "FakeFrontend", read: int) -> tuple[int, dict]:
    """Processes each article the moment it is accepted; it had processed 500 before the test."""
    return counters(accepted=500 + len(fake.counted), processed=500 + len(fake.counted))


class FakeFrontend:
    """POST /post/enqueue and /posts, deduplicating on (publication key, id) like the real server; GET /readyz.

    `misbehave` maps a request number (1-based) to "drop" (read the body, keep its articles, hang up
    without answering), "stall" (keep them, then answer nothing for `stall_seconds`) or "garble" (keep
    them, answer 202 with a body that cannot be decoded), "unknown" (keep them, answer 504
    outcome_unknown, as when the backend went away after journaling them) or "busy" (keep nothing,
    answer 503 queue_full). A dropped or
    stalled request was delivered: its articles count, as they would behind a real front door.
    `readyz(fake, read)` answers the read-th GET /readyz (1-based) with (status, JSON body), or None to
    hang up; the default backend processes everything at once. `reject` answers every POST with that
    status (and an error body), counting nothing.
    """

    def __init__(self, misbehave: dict[int, str] | None = None, stall_seconds: float = 2.0, on_request=None,  # noqa: C901
                 readyz=instant_backend, reject: int | None = None):  # C901: the nested handler closes over the fake
        self.misbehave = dict(misbehave or {})
        self.stall_seconds = stall_seconds
        self.on_request = on_request
        self.readyz = readyz
        self.reject = reject
        self.readyz_reads = 0
        self.lock = threading.Lock()
        self.requests: list[list[dict]] = []  # the posts of every request, in arrival order
        self.counted: list[dict] = []  # posts counted (each (publication key, id) once)
        self.seen_ids: set[tuple[str, str]] = set()
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body) -> None:
                answer = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self):
                if self.path != "/readyz":
                    return self._answer(404, {"error": "not_found", "detail": self.path})
                with fake.lock:
                    fake.readyz_reads += 1
                    answer = fake.readyz(fake, fake.readyz_reads)
                if answer is None:
                    self.close_connection = True  # hang up without a response
                    return
                self._answer(*answer)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.reject is not None:
                    return self._answer(fake.reject, {"error": "unauthorized", "detail": "missing or wrong API key"})
                posts = body if isinstance(body, list) else [body]
                with fake.lock:
                    fake.requests.append(posts)
                    number = len(fake.requests)
                    if fake.misbehave.get(number) == "busy":  # refused: nothing kept
                        return self._answer(503, {"error": "queue_full", "detail": "no room; retry later"})
                    accepted = duplicates = 0
                    for post in posts:
                        key = (publication_key(post["publication"]), post["id"]) if "id" in post else None
                        if key is not None and key in fake.seen_ids:
                            duplicates += 1
                            continue
                        if key is not None:
                            fake.seen_ids.add(key)
                        fake.counted.append(post)
                        accepted += 1
                if fake.on_request:
                    fake.on_request(number)
                action = fake.misbehave.get(number)
                if action == "stall":
                    fake.released.wait(fake.stall_seconds)
                if action in ("drop", "stall"):
                    self.close_connection = True  # hang up without a response
                    return
                if action == "unknown":
                    return self._answer(504, {"error": "outcome_unknown", "detail": "the backend went away; resend "
                                                                                   "only if every article has an id"})
                if action == "garble":  # an answer whose body cannot be decoded, as from a broken proxy
                    self.send_response(202)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"not gzip!")
                    return
                answer = json.dumps({"accepted": accepted, "duplicates": duplicates}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def jsonl(path: Path, ids: list[str | None]) -> Path:
    rows = [{"publication": "Loopback Times", "content": f"Article {i}.", **({"id": v} if v is not None else {})}
            for i, v in enumerate(ids)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fake_load(path: Path, url: str, *flags: str, report: Path) -> tuple[int, Report]:
    status = main([str(path), "--url", url, "--api-key", "k", "--concurrency", "1", "--no-progress",
                   "--json", str(report), *flags])
    return status, read_report(report)


def test_posts_carry_the_dataset_ids(tmp_path):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", None, "c", "d", "e"])
    with FakeFrontend() as fake:
        status, report = fake_load(dataset, fake.url, "--batch", "2", report=tmp_path / "r.json")
        single, _ = fake_load(dataset, fake.url, "--no-ids", report=tmp_path / "r2.json")
    assert status == 0 and single == 0
    assert [[p.get("id") for p in posts] for posts in fake.requests[:3]] == [["a", None], ["c", "d"], ["e"]]
    assert "id" not in fake.requests[0][1]  # no id: the key is left out, not sent as null
    assert all("id" not in posts[0] for posts in fake.requests[3:]) and len(fake.requests) == 8  # --no-ids
    assert (report.accepted, report.duplicates) == (5, 0)


def test_posts_carry_the_dataset_dates(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"publication": "P", "content": "Ada Lovelace.", "published": "2017-01-02"}\n'
                       '{"publication": "P", "content": "Alan Turing."}\n', encoding="utf-8")
    with FakeFrontend() as fake:
        status, _ = fake_load(dataset, fake.url, "--batch", "2", report=tmp_path / "r.json")
    assert status == 0
    assert [p.get("published") for p in fake.requests[0]] == ["2017-01-02", None]
    assert "published" not in fake.requests[0][1]  # none: the key is left out, the frontend's day counts


def test_dropped_connection_is_resent_when_every_article_has_an_id(tmp_path, capsys):
    """The first request arrives, the connection drops before the answer: the resend comes back a duplicate."""
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend({1: "drop"}) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0
    assert (report.accepted, report.duplicates, report.lost, report.ok) == (2, 1, 0, True)
    assert (report.requests, report.retries, report.retry_reasons) == (4, 1, {"RemoteProtocolError": 1})
    assert [p["id"] for p in fake.counted] == ["a", "b", "c"]  # each counted once
    out = capsys.readouterr().out
    assert "duplicates   1  (accepted before with the same id: counted once)" in out
    assert "OK, every article accepted (1 of them as duplicates)" in out


@pytest.mark.parametrize("ids, resent", [(["a", "b"], True), ([None, "b"], False)])
def test_an_answer_that_cannot_be_decoded_is_a_maybe_delivered_failure_not_a_traceback(tmp_path, ids, resent):
    """Before: httpx.DecodingError escaped the sender. The request had arrived, so it is resent only
    when its article has an id (then it comes back a duplicate); otherwise it is lost, outcome unknown."""
    dataset = jsonl(tmp_path / "d.jsonl", ids)
    with FakeFrontend({1: "garble"}) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    if resent:
        assert status == 0 and (report.accepted, report.duplicates) == (1, 1)
        assert report.retry_reasons == {"DecodingError": 1} and len(fake.counted) == 2
    else:
        assert status == 1 and report.lost_reasons == {"DecodingError (outcome unknown)": 1}
        assert len(fake.counted) == 1


@pytest.mark.parametrize("batch", [None, "2"])
def test_a_504_outcome_unknown_is_resent_only_when_every_article_has_an_id_else_reported_unknown(tmp_path, capsys,
                                                                                                   batch):
    flags = ["--batch", batch] if batch else []
    keyed = jsonl(tmp_path / "keyed.jsonl", ["a", "b", "c"])
    with FakeFrontend({1: "unknown"}) as fake:
        status, report = fake_load(keyed, fake.url, *flags, report=tmp_path / "r1.json")
    first = 2 if batch else 1
    assert status == 0 and (report.accepted, report.duplicates, report.unknown) == (3 - first, first, 0)
    assert report.retry_reasons == {"504": 1} and len(fake.counted) == 3  # the resend came back a duplicate
    capsys.readouterr()
    bare = jsonl(tmp_path / "bare.jsonl", [None, "b", "c"])
    with FakeFrontend({1: "unknown"}) as fake:
        status, report = fake_load(bare, fake.url, *flags, report=tmp_path / "r2.json")
    assert status == 1 and len(fake.requests) == 1, "resending could count its articles twice"
    assert (report.accepted, report.rejected, report.lost, report.unknown) == (0, {}, 0, first)
    assert report.unknown_reasons == {"504 outcome_unknown": first} and report.retries == 0
    assert report.not_sent == 3 - first and "not resent" in report.stopped and not report.ok
    out = capsys.readouterr().out
    assert f"unknown      {first}  (504 outcome_unknown: {first})" in out and "INCOMPLETE" in out


def test_a_503_is_resent_without_ids_too_nothing_was_queued(tmp_path):
    dataset = jsonl(tmp_path / "d.jsonl", [None, None])
    with FakeFrontend({1: "busy", 2: "busy"}) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0 and (report.accepted, report.unknown, report.retry_reasons) == (2, 0, {"503": 2})
    assert len(fake.requests) == 4 and len(fake.counted) == 2


def test_read_timeout_is_resent_when_every_article_has_an_id(tmp_path):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b"])
    with FakeFrontend({1: "stall"}) as fake:
        started = time.monotonic()
        status, report = fake_load(dataset, fake.url, "--timeout", "0.3", report=tmp_path / "r.json")
    assert status == 0 and time.monotonic() - started < 5
    assert (report.accepted, report.duplicates, report.retry_reasons) == (1, 1, {"ReadTimeout": 1})
    assert len(fake.counted) == 2


@pytest.mark.parametrize("ids, batch", [([None, "b"], None), (["a", None, "c"], "2")])
def test_failure_after_sending_is_not_resent_when_an_article_has_no_id(tmp_path, ids, batch):
    """Single post without an id, or a batch with one article without an id: lost (outcome unknown), run stops."""
    dataset = jsonl(tmp_path / "d.jsonl", ids)
    with FakeFrontend({1: "drop"}) as fake:
        flags = ["--batch", batch] if batch else []
        status, report = fake_load(dataset, fake.url, *flags, report=tmp_path / "r.json")
    first = 2 if batch else 1
    assert status == 1
    assert (report.requests, report.retries, report.accepted, report.duplicates) == (1, 0, 0, 0)
    assert report.lost_reasons == {"RemoteProtocolError (outcome unknown)": first}
    assert report.not_sent == len(ids) - first and "some of its articles have no id" in report.stopped
    assert len(fake.requests) == 1 and len(fake.counted) == first  # it had arrived: resending would count it twice


def test_resends_after_sending_are_bounded_and_the_outcome_stays_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.tools.load.send.backoff", lambda attempt: 0.0)  # the bound is under test, not waits
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b"])
    with FakeFrontend({n: "drop" for n in range(1, 20)}) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 1
    assert (report.requests, report.retries, report.lost) == (6, 5, 1)  # CONNECT_RETRIES = 5
    assert report.lost_reasons == {"gave up after RemoteProtocolError (outcome unknown)": 1}
    assert "may have been queued" in report.stopped and len(fake.counted) == 1


def test_run_stopped_before_a_resend_counts_the_request_lost_not_unsent():
    """An article that may have arrived is never reported "not sent", even when the run ends before its retry."""
    stop = threading.Event()
    with FakeFrontend({1: "drop"}, on_request=lambda n: stop.set()) as fake, httpx.Client(base_url=fake.url) as client:
        stats = Stats()
        work = next(plan([Article("P", "text", "f:1", "a")], None, 10_000))
        Sender(client, stats, stop, max_retries=20, max_retry_time=120).send(work)
    assert (stats.sent, stats.lost, stats.settled, stats.retries) == (1, 1, 1, 0)
    assert stats.lost_reasons == {"RemoteProtocolError (outcome unknown: stopped before the retry)": 1}
    assert len(fake.counted) == 1


# --- failures before or without a server ------------------------------------------------------------------

JSON_KEYS = ["dataset", "url", "endpoint", "batch", "concurrency", "articles", "sent", "accepted", "duplicates",
             "rejected", "rejected_examples", "lost", "lost_reasons", "unknown", "unknown_reasons", "not_sent",
             "requests", "retries", "retry_reasons", "wall_seconds", "accepted_per_second", "articles_per_second",
             "processed", "quarantined", "drain_seconds", "total_seconds", "processed_per_second", "wait",
             "latency_ms", "skipped_rows", "bad_rows", "stopped", "ok"]


def test_unreachable_frontend_is_one_line_is_the_stack_running_exit_1(tmp_path):
    """Nothing listening: one line on stderr (no ConnectError traceback, no retry story), the report on stdout."""
    report_path = tmp_path / "report.json"
    url = f"http://127.0.0.1:{free_port()}"
    result = load(str(SAMPLE), "--url", url, "--max-retries", "2", "--no-progress", "--json", str(report_path),
                  api_key="k", timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"ingest-load: cannot connect to {url}: is the stack running? (make run)"]
    assert "gave up after 3 attempts" in result.stdout and "result: INCOMPLETE" in result.stdout
    report = read_report(report_path)
    assert (report.requests, report.retries, report.lost, report.not_sent) == (3, 2, 1, SAMPLE_ARTICLES - 1)
    assert report.retry_reasons == {"ConnectError": 2}
    assert list(json.loads(report_path.read_text())) == JSON_KEYS  # the file other tools read keeps its layout
    no_wait = load(str(SAMPLE), "--url", url, "--no-wait", "--no-progress", api_key="k", timeout=30)
    assert no_wait.returncode == 1 and no_wait.stderr.splitlines() == result.stderr.splitlines()


def test_a_frontend_that_answered_then_vanished_is_not_called_not_running(tmp_path, monkeypatch):
    """Only a frontend that never answered is "not running": one that went away mid-run is a stopped run."""
    monkeypatch.setattr("ingest.tools.load.send.backoff", lambda attempt: 0.0)
    first, second = plan([Article("P", "one", "f:1", "a"), Article("P", "two", "f:2", "b")], None, 10_000)
    nobody = f"http://127.0.0.1:{free_port()}"
    with FakeFrontend() as fake, httpx.Client(base_url=fake.url) as client, httpx.Client(base_url=nobody) as gone:
        sender = Sender(client, Stats(), threading.Event(), max_retries=20, max_retry_time=120)
        sender.send(first)
        sender.client = gone  # the same run, the frontend gone
        sender.send(second)
        never = Sender(gone, Stats(), threading.Event(), max_retries=20, max_retry_time=120)
        never.send(second)
    assert (sender.stats.accepted, sender.stats.lost, sender.cannot_connect) == (1, 1, False)
    assert "last: ConnectError" in sender.fatal
    assert (never.stats.lost, never.cannot_connect) == (1, True)


def test_dataset_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"publication": "P", "content": "ok"}\n{"publication": "P", "content": 7}\n')
    result = load(str(bad), "--url", f"http://127.0.0.1:{free_port()}", api_key="k")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ingest-load: error: {bad}:2: 'content' must be a string, found "
                                                  "number (--skip-bad-rows skips and lists such rows)"]
    assert result.stdout == ""


def bad_csv(path: Path) -> Path:
    """Rows 2 and 6 are fine; 3 has bad quoting, 4 too few fields, 5 a byte that is not UTF-8."""
    path.write_bytes(b'publication,id,content\nLoopback Times,a,Ada met Alan.\nLoopback Times,b,"broken"quote\n'
                     b'Loopback Times,c\nLoopback Times,d,caf\xe9\nLoopback Times,e,"Grace\nHopper"\n')
    return path


def test_bad_csv_row_stops_the_load_with_file_and_line_exit_2(tmp_path):
    dataset = bad_csv(tmp_path / "bad.csv")
    with FakeFrontend() as fake:
        status = main([str(dataset), "--url", fake.url, "--api-key", "k", "--no-progress", "--format", "csv"])
    assert status == 2 and fake.requests == [] and fake.readyz_reads == 0  # nothing sent, not even a probe


def test_skip_bad_rows_skips_reports_each_and_counts_them(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    lines = dataset.read_text().splitlines()
    lines.insert(1, '{"publication": "Loopback Times", "content": 7}')
    lines.insert(3, "not json")
    dataset.write_text("\n".join(lines) + "\n")
    with FakeFrontend() as fake:
        status, report = fake_load(dataset, fake.url, "--skip-bad-rows", report=tmp_path / "r.json")
    assert status == 0 and report.ok is True
    assert [p["id"] for p in fake.counted] == ["a", "b", "c"]
    assert report.bad_rows == {"count": 2, "rows": [
        {"where": f"{dataset}:2", "error": "'content' must be a string, found number"},
        {"where": f"{dataset}:4", "error": "invalid JSON: Expecting value (column 1)"}]}
    assert report.articles == report.accepted == 3
    out, err = capsys.readouterr()
    assert f"ingest-load: skipped bad row: {dataset}:2: 'content' must be a string, found number" in err
    assert f"ingest-load: skipped bad row: {dataset}:4: invalid JSON" in err
    assert "bad rows     2 skipped" in out and "result: OK" in out


def test_skip_bad_rows_in_a_csv_as_a_user_runs_it(tmp_path):
    dataset = bad_csv(tmp_path / "bad.csv")
    with FakeFrontend() as fake:
        result = load(str(dataset), "--url", fake.url, "--skip-bad-rows", "--json", str(tmp_path / "r.json"),
                      api_key="k")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(p["id"], p["content"]) for p in fake.counted] == [("a", "Ada met Alan."), ("e", "Grace\nHopper")]
    skipped = [line for line in result.stderr.splitlines() if "skipped bad row" in line]
    assert [line.split(": ", 3)[2] for line in skipped] == [f"{dataset}:{n}" for n in (3, 4, 5)]
    assert read_report(tmp_path / "r.json").bad_rows["count"] == 3
    assert "bad rows     3 skipped" in result.stdout


def test_directory_as_dataset_is_a_clear_error_exit_2(tmp_path, capsys):
    """Not "cannot tell the format from the extension": with or without one, with or without --format."""
    for folder in (tmp_path / "data", tmp_path / "news.jsonl"):
        folder.mkdir()
        for extra in ([], ["--format", "csv"]):
            assert main([str(folder), *extra, "--url", f"http://127.0.0.1:{free_port()}", "--api-key", "k"]) == 2
            out, err = capsys.readouterr()
            assert (out, err) == ("", f"ingest-load: error: {folder}: is a directory: give a .jsonl, .csv, .whl or "
                                      ".zip file\n")


def test_refused_api_key_is_a_rejection_exit_1_after_one_request(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend(reject=401) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 1 == min(code for code, text in EXIT_STATUS.items() if "refused API key" in text)
    assert (report.requests, report.rejected, report.not_sent, report.ok) == (1, {"401": 1}, 2, False)
    assert report.wait.waited is False and fake.readyz_reads == 1  # the baseline only: nothing to wait for
    assert "refused the API key (401" in capsys.readouterr().err


def test_help_lists_exactly_the_exit_codes_the_tool_uses():
    epilog = build_parser().format_help().split("exit status:", 1)[1]
    listed = [int(line.split()[0]) for line in epilog.splitlines() if line[:2] == "  " and line.split()[0].isdigit()]
    assert listed == [0, 1, 2, 130] == list(EXIT_STATUS)
    text = " ".join(epilog.split())
    assert "1 something rejected (a refused API key included), lost, quarantined, or not processed" in text
    assert "2 usage or input error" in text and "a directory" in text and "--skip-bad-rows" in text


def test_missing_api_key_and_bad_arguments_exit_2(tmp_path):
    result = load(str(SAMPLE), api_key=None, env={"INGEST_VAR_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no API key" in result.stderr and "Traceback" not in result.stderr
    assert load(str(SAMPLE), "--concurrency", "0", api_key="k").returncode == 2
    assert load(str(SAMPLE), "--url", "127.0.0.1:8000", api_key="k").returncode == 2
    missing = load(str(tmp_path / "nope.jsonl"), api_key="k")
    assert missing.returncode == 2 and "nope.jsonl: cannot read" in missing.stderr


def test_a_url_no_request_can_use_is_a_usage_error_not_a_connection_failure(capsys):
    """Before: "http://[::1" was an httpx.InvalidURL traceback, "http://" a "cannot connect"."""
    for url, why in [("http://", "names no valid host"), ("http://exa mple:80", "names no valid host"),
                     ("http://127.0.0.1:99999", "port 99999 is out of range"), ("http://[::1", "Invalid port"),
                     ("127.0.0.1:8000", "must start with http:// or https://")]:
        assert main([str(SAMPLE), "--url", url, "--api-key", "k", "--no-progress"]) == 2, url
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"ingest-load: error: --url {url!r}") and why in err, err
        assert len(err.splitlines()) == 1, err


# --- pieces -----------------------------------------------------------------------------------------

def test_api_key_sources_in_order(tmp_path):
    keyfile = tmp_path / "api_keys"
    keyfile.write_text("# comment\n\nfile-key\n")
    assert resolve_api_key("flag", {"INGEST_API_KEY": "env"}) == "flag"
    assert resolve_api_key(None, {"INGEST_API_KEY": "env", "INGEST_API_KEYS": "a,b"}) == "env"
    assert resolve_api_key(None, {"INGEST_API_KEYS": " , a, b"}) == "a"
    assert resolve_api_key(None, {"INGEST_VAR_DIR": str(tmp_path)}) == "file-key"


def test_plan_sends_ids_and_marks_requests_whose_articles_all_have_one():
    articles = [Article("P", "one", "f:1", "u1"), Article("P", "two", "f:2"), Article("P", "three", "f:3", "u3"),
                Article("P", "four", "f:4", "u4")]
    single = list(plan(articles, None, 10_000))
    assert [json.loads(w.body).get("id") for w in single] == ["u1", None, "u3", "u4"]
    assert json.loads(single[1].body) == {"publication": "P", "content": "two"}
    assert [w.idempotent for w in single] == [True, False, True, True]
    batches = list(plan(articles, 2, 10_000))
    assert [[p.get("id") for p in json.loads(w.body)] for w in batches] == [["u1", None], ["u3", "u4"]]
    assert [w.idempotent for w in batches] == [False, True]
    bare = list(plan(articles, 2, 10_000, ids=False))
    assert all("id" not in p for w in bare for p in json.loads(w.body)) and not any(w.idempotent for w in bare)


def test_resend_decision():
    """Before delivery: always. After it may have been delivered: only when every article has an id."""
    request = httpx.Request("POST", "http://127.0.0.1/post/enqueue")
    keyed, unkeyed = Work("/post/enqueue", b"{}", 1, "f:1", True), Work("/post/enqueue", b"{}", 1, "f:1", False)
    before = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout]
    after = [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.CloseError]
    never = [httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.ProxyError]
    assert set(before) == set(SAFE_TO_RETRY)
    for cls in before:
        assert may_resend(cls("x", request=request), keyed) and may_resend(cls("x", request=request), unkeyed), cls
    for cls in after:
        assert may_resend(cls("x", request=request), keyed) and not may_resend(cls("x", request=request), unkeyed), cls
    for cls in never:
        assert not may_resend(cls("x", request=request), keyed), cls


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


# --- waiting for the backend (fake /readyz) -----------------------------------------------------------

@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr("ingest.tools.load.wait.WAIT_POLL", 0.02)


def lagging_backend(per_read: int = 1, start: int = 500, hold_unsaved: int = 0, quarantine: int = 0, status: int = 200,
                    **extra):
    """Counters since start (`start` processed before the test) that catch up `per_read` articles per read;
    articles processed wait `hold_unsaved` further reads as unsaved; the last `quarantine` are quarantined."""
    state = {"processed": 0, "unsaved_reads": 0}

    def readyz(fake, read):
        accepted = len(fake.counted)
        if read > 1:  # the first read is the baseline, before anything was sent
            state["processed"] = min(accepted - quarantine, state["processed"] + per_read)
        done = state["processed"]
        unsaved = 0
        if done == accepted - quarantine and accepted:
            state["unsaved_reads"] += 1
            unsaved = 1 if state["unsaved_reads"] <= hold_unsaved else 0
        backlog = max(0, accepted - quarantine - done)
        return counters(status, accepted=start + accepted, processed=start + done, in_flight=min(backlog, 2),
                        depth=max(0, backlog - 2), unsaved=unsaved, journal_articles=backlog + unsaved,
                        quarantined=quarantine if done == accepted - quarantine and accepted else 0, **extra)
    return readyz


def test_waits_until_the_backend_has_processed_what_was_accepted(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c", "d", "e"])
    with FakeFrontend(readyz=lagging_backend(per_read=1)) as fake:
        status, report = fake_load(dataset, fake.url, "--batch", "2", report=tmp_path / "r.json")
    assert status == 0 and report.ok is True
    assert fake.readyz_reads == 1 + 5  # the baseline, then one article processed per read
    wait = report.wait
    assert (wait.waited, wait.drained, wait.processed, wait.quarantined) == (True, True, 5, 0)
    assert (wait.backend_before["processed"], wait.backend_after["processed"]) == (500, 505)
    assert report.processed == report.accepted == 5 and report.drain_seconds > 0
    assert report.total_seconds == pytest.approx(report.wall_seconds + report.drain_seconds, abs=0.002)
    assert report.processed_per_second == pytest.approx(5 / report.total_seconds, rel=0.01)
    assert report.processed_per_second < report.accepted_per_second
    out = capsys.readouterr().out
    for label in ("processed    5", "drain time", "accepted/s", "articles/s at the front door", "processed/s",
                  "articles/s end to end",
                  "result: OK, every article accepted and processed by the backend"):
        assert label in out


def test_the_wait_needs_an_idle_backend_not_just_the_count(tmp_path):
    """Processed caught up, but the store has not committed yet (unsaved): keep waiting."""
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b"])
    with FakeFrontend(readyz=lagging_backend(per_read=5, hold_unsaved=3)) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0 and fake.readyz_reads == 1 + 4  # caught up at once, then 3 reads with unsaved 1
    assert report.wait.backend_after["unsaved"] == 0


def test_a_503_readyz_is_read_for_its_counters_too(tmp_path):
    """A full queue makes /readyz answer 503, with the same fields: the wait reads them either way."""
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend(readyz=lagging_backend(per_read=2, status=503, error="queue_full")) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0 and report.wait.drained is True and report.processed == 3


def test_other_clients_articles_do_not_end_the_wait_early():
    """Counters since the backend started, other clients' articles among them: the baseline and idle decide."""
    before = counters(accepted=900, processed=880, depth=20, journal_articles=20)[1]
    busy = counters(accepted=910, processed=905, in_flight=2, depth=3, journal_articles=5)[1]  # 25 more, not idle
    assert progress_of(before, busy) == 25 and not drained(before, busy, 10)
    idle_short = counters(accepted=910, processed=889)[1]  # idle, but only 9 processed since the baseline: stale
    assert not drained(before, idle_short, 10)
    assert drained(before, counters(accepted=910, processed=890)[1], 10)
    assert drained(before, counters(accepted=910, processed=889, quarantined=1)[1], 10)  # kept, not counted
    for busy_field in ("depth", "in_flight", "unsaved", "journal_articles"):
        assert not drained(before, counters(accepted=910, processed=990, **{busy_field: 1})[1], 10), busy_field
    restarted = counters(accepted=3, processed=2)[1]  # counters went backwards: idle with an empty journal decides
    assert progress_of(before, restarted) is None and drained(before, restarted, 10)
    assert not drained(None, counters(journal_articles=1)[1], 10) and drained(None, counters()[1], 10)


def test_wait_timeout_is_reported_and_exits_1(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend(readyz=lagging_backend(per_read=0)) as fake:  # never processes anything
        started = time.monotonic()
        status, report = fake_load(dataset, fake.url, "--wait-timeout", "0.5", report=tmp_path / "r.json")
    assert status == 1 and 0.5 <= time.monotonic() - started < 5
    wait = report.wait
    assert (report.ok, wait.drained, wait.timeout, report.processed, report.accepted) == (False, False, 0.5, 0, 3)
    assert wait.drain_seconds >= 0.5 and report.processed_per_second is None
    assert "processed 0 of the 3 accepted" in wait.note and "--wait-timeout 0.5 s" in wait.note
    out, err = capsys.readouterr()
    assert "result: INCOMPLETE: every article accepted, but not known to be processed" in out
    assert "gave up: not processed yet" in out and "--wait-timeout 0.5 s" in err


def test_no_wait_reads_no_counters_and_says_the_counts_may_not_be_final(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b"])
    with FakeFrontend(readyz=lambda fake, read: pytest.fail("/readyz read under --no-wait")) as fake:
        status, report = fake_load(dataset, fake.url, "--no-wait", report=tmp_path / "r.json")
    assert status == 0 and report.ok is True and fake.readyz_reads == 0
    assert (report.wait.waited, report.processed, report.drain_seconds, report.processed_per_second) == (
        False, None, None, None)
    out = capsys.readouterr().out
    assert "not waited for the backend (--no-wait): the counts may not be final yet" in out
    assert "processed    -  (not waited: --no-wait)" in out


def test_a_frontend_without_counters_is_refused_before_sending_exit_2(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a"])
    with FakeFrontend(readyz=lambda fake, read: (200, {"status": "ok"})) as fake:
        status = main([str(dataset), "--url", fake.url, "--api-key", "k", "--no-progress"])
    assert status == 2 and fake.requests == []
    err = capsys.readouterr().err
    assert "gave no backend counters" in err and "--no-wait" in err


def test_backend_unreachable_before_sending_the_wait_goes_by_an_empty_journal(tmp_path, capsys):
    """No baseline (503 without counters): idle with nothing uncommitted in the journal ends the wait."""
    def readyz(fake, read):
        if read <= 2:
            return 503, {"ready": False, "error": "backend_unavailable", "detail": "connection refused"}
        left = max(0, len(fake.counted) - (read - 2))
        return counters(accepted=len(fake.counted), processed=len(fake.counted) - left, journal_articles=left)
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b"])
    with FakeFrontend(readyz=readyz) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0 and report.wait.drained is True and fake.readyz_reads == 4  # 503, 503, 1 left, done
    assert report.wait.backend_before is None and report.processed is None
    assert "processed    all  (no baseline" in capsys.readouterr().out


def test_backend_restart_during_the_wait_is_noticed(tmp_path):
    def readyz(fake, read):
        if read == 1:
            return counters(accepted=700, processed=700)
        if read < 4:  # restarted: counters from zero, recovering the journal
            return counters(accepted=0, processed=read, journal_articles=4 - read)
        return counters(accepted=0, processed=3)
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend(readyz=readyz) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 0 and report.wait.drained is True and "restarted" in report.wait.note
    assert report.processed is None


def test_quarantined_articles_end_the_wait_but_exit_1(tmp_path, capsys):
    dataset = jsonl(tmp_path / "d.jsonl", ["a", "b", "c"])
    with FakeFrontend(readyz=lagging_backend(per_read=3, quarantine=1)) as fake:
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 1 and report.ok is False
    assert (report.wait.drained, report.processed, report.quarantined) == (True, 2, 1)
    out, err = capsys.readouterr()
    assert "quarantined  1" in out and "INCOMPLETE: every article accepted, 1 quarantined" in out
    assert "ingestiond quarantine list" in err


def test_a_frontend_gone_silent_ends_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.tools.load.wait.UNREACHABLE_GIVE_UP", 0.3)
    dataset = jsonl(tmp_path / "d.jsonl", ["a"])
    with FakeFrontend(readyz=lambda fake, read: counters(accepted=1) if read == 1 else None) as fake:
        started = time.monotonic()
        status, report = fake_load(dataset, fake.url, report=tmp_path / "r.json")
    assert status == 1 and time.monotonic() - started < 5
    assert report.wait.drained is False and "did not answer GET /readyz" in report.wait.note


def test_ctrl_c_during_the_wait_is_reported():
    busy = FakeFrontend(readyz=lambda fake, read: counters(in_flight=1))
    with busy as fake, httpx.Client(base_url=fake.url) as client:
        calls = []

        def bar_update(n):
            calls.append(n)
            raise KeyboardInterrupt

        class Bar:
            n, total = 0, 1
            update = staticmethod(bar_update)

            def set_postfix(self, **kw):
                pass

        before = counters()[1]
        result = wait_for_backend(client, before, 1, timeout=10, bar=Bar(), poll=0.01)
    assert result.interrupted and not result.drained and "interrupted" in result.note and calls == [0]
