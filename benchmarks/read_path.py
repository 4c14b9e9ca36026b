"""The packed layout's read path: CPU and document reads of `/publications` with nothing changed.

Builds PUBS publications x WRITERS writers in Google's Firestore emulator (really written through
the store, each writer one batch; started by tests/firestore_emulator.py's running_emulator(), its
own process group, stopped by PID), then calls the frontend's read (`FirestoreStore.publications()`,
what `/publications` calls) on one reader: once cold, then CALLS times with nothing changed, then once
after one publication changed. Then the reads over time: one publication written by WRITERS
writers over 60 days (DAY_ARTICLES articles a day, ~24 distinct entities each, like the news corpus),
and a 30-day window of it read cold: the day series (`/publications/P/days`) and the entity list
(`/publications/P/entities?since&until`), their document reads and wall time. Prints a table and
writes benchmarks/results-read-path.json.

    .venv/bin/python benchmarks/read_path.py [--pubs 1000] [--writers 4] [--calls 20] [--day-articles 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pubs", type=int, default=1000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--day-articles", type=int, default=8, help="articles a day in the 60-day publication")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-read-path.json"))
    args = ap.parse_args()

    from ingest.core.models import Aggregate, Delta, merge
    from ingest.stores.firestore import FirestoreStore
    from tests.firestore_emulator import running_emulator

    def post(publication, entities):
        [total] = merge({}, [Aggregate.from_article(publication, entities)]).values()
        return total

    with running_emulator() as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        project = "bench-" + uuid.uuid4().hex[:8]
        t0 = time.time()
        for w in range(args.writers):  # every publication has every writer: the union is computed
            store = FirestoreStore(project=project, layout="packed", writer=f"w{w}", timeout=60)
            store.apply(Delta.of(f"b{w}", [post(f"Pub {p:04d}", ["shared", f"only {w}", f"p{p}"])
                                           for p in range(args.pubs)]))
            store.close()
        built = time.time() - t0
        reader = FirestoreStore(project=project, timeout=60)
        reads = reader.layout().reads

        def measure():
            before = reads.doc_reads
            cpu, wall = time.process_time(), time.perf_counter()
            rows = reader.publications()
            return ((time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000,
                    reads.doc_reads - before, rows)

        cold_cpu, cold_wall, cold_reads, rows = measure()
        assert len(rows) == args.pubs and all(r.articles == args.writers for r in rows)
        warm = [measure() for _ in range(args.calls)]
        changer = FirestoreStore(project=project, layout="packed", writer="w1", timeout=60)
        changer.apply(Delta.of("change", [post("Pub 0007", ["new"])]))
        changed_cpu, changed_wall, changed_reads, rows = measure()
        assert {r.publication: r.entities for r in rows}["Pub 0007"] == args.writers + 2 + 1
        reader.close()
        changer.close()
        window = measure_window(project, args.writers, args.day_articles)

    warm_cpu = sorted(m[0] for m in warm)
    warm_wall = sorted(m[1] for m in warm)
    result = {
        "what": "FirestoreStore.publications() (what /publications calls), packed layout, Firestore emulator",
        "built_in": "the emulator, through the store (each writer one batch)",
        "publications": args.pubs, "writers": args.writers, "build_seconds": round(built, 1),
        "cold": {"cpu_ms": round(cold_cpu, 1), "wall_ms": round(cold_wall, 1), "document_reads": cold_reads},
        "nothing_changed": {"calls": args.calls, "cpu_ms_median": round(warm_cpu[len(warm_cpu) // 2], 2),
                            "cpu_ms_max": round(warm_cpu[-1], 2),
                            "wall_ms_median": round(warm_wall[len(warm_wall) // 2], 2),
                            "document_reads_total": sum(m[2] for m in warm)},
        "one_publication_changed": {"cpu_ms": round(changed_cpu, 1), "wall_ms": round(changed_wall, 1),
                                    "document_reads": changed_reads},
        "window_30_days": window,
        "note": "wall time includes the (empty) query's round trip to the emulator; Firestore bills at "
                "least one read per query even when it returns nothing",
    }
    print(f"{args.pubs} publications x {args.writers} writers (built in the emulator in {built:.0f}s)")
    print(f"{'/publications call':<28}{'CPU ms':>10}{'wall ms':>10}{'doc reads':>11}")
    print(f"{'cold (first)':<28}{cold_cpu:>10.1f}{cold_wall:>10.1f}{cold_reads:>11}")
    print(f"{'nothing changed (median)':<28}{result['nothing_changed']['cpu_ms_median']:>10.2f}"
          f"{result['nothing_changed']['wall_ms_median']:>10.2f}{0 if not warm else warm[len(warm) // 2][2]:>11}")
    print(f"{'nothing changed (max)':<28}{warm_cpu[-1]:>10.2f}{warm_wall[-1]:>10.2f}"
          f"{max(m[2] for m in warm):>11}")
    print(f"{'one publication changed':<28}{changed_cpu:>10.1f}{changed_wall:>10.1f}{changed_reads:>11}")
    print(f"30-day window of one publication ({args.writers} writers, {args.day_articles} articles a day, 60 days):")
    for name in ("days", "entities_in"):
        w = window[name]
        print(f"  {name:<26}{w['wall_ms']:>10.1f} ms{w['document_reads']:>11} document reads ({w['rows']} rows)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


def measure_window(project: str, writers: int, day_articles: int) -> dict:
    """One publication over 60 days from `writers` writers (each a share of each day's articles, one batch
    per 5 days as a flush would), then a 30-day window read cold by a fresh reader: days() and entities_in()."""
    import random
    from datetime import date, timedelta

    from ingest.core.days import Window
    from ingest.core.models import Aggregate, Delta, merge
    from ingest.stores.firestore import FirestoreStore

    rng = random.Random(28)
    first = date(2017, 1, 1)
    stores = [FirestoreStore(project=project, layout="packed", writer=f"d{w}", timeout=60) for w in range(writers)]
    for start in range(0, 60, 5):
        batches: list[list] = [[] for _ in range(writers)]
        for n in range(start, start + 5):
            day = (first + timedelta(days=n)).isoformat()
            for k in range(day_articles):
                names = [(f"name {rng.randrange(3000)}", rng.choice(["PERSON", "ORG", "GPE"])) for _ in range(24)]
                batches[k % writers].append(Aggregate.from_article("Window Daily", names, day))
        for w, posts in enumerate(batches):
            if posts:
                stores[w].apply(Delta(f"days-{w}-{start}", merge({}, posts)))
    for store in stores:
        store.close()
    reader = FirestoreStore(project=project, timeout=60)
    reads = reader.layout().reads
    window = Window("2017-01-16", "2017-02-14")
    out = {"publication_days": 60, "writers": writers, "articles_a_day": day_articles, "window": [window.since,
                                                                                                   window.until]}
    for name, call in (("days", lambda: reader.days("window daily", window)[1]),
                       ("entities_in", lambda: reader.entities_in("window daily", window, 20))):
        before, wall = reads.doc_reads, time.perf_counter()
        rows = call()
        out[name] = {"wall_ms": round((time.perf_counter() - wall) * 1000, 1),
                     "document_reads": reads.doc_reads - before, "rows": len(rows)}
    reader.close()
    out["note"] = ("document reads: one per writer and day of the window with data (their day documents), plus "
                   "the publication's summaries (one per writer), plus for entities_in the shards of the all-time "
                   "list its labels come from (once per process while nothing changes)")
    return out


if __name__ == "__main__":
    sys.exit(main())
