"""The SQLite store's window reads on a synthetic year: p50/p99 of the queries the API runs.

One publication x 365 days x 5,000 entities a day (drawn from a Zipf-like vocabulary of 60,000),
written through the store's own day tables (ingest/stores/sqlite_days.py), then timed: the top 20
entities of a 7-, 30- and 90-day window and of the whole year, a 30-day series of the publication
and of one entity, and "rising" over 7 days. Prints a table and writes benchmarks/results-windows.json.

    .venv/bin/python benchmarks/windows.py [--days 365] [--entities 5000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.core.days import DayCounts, Window  # noqa: E402
from ingest.stores import sqlite_days  # noqa: E402


def build(path: Path, days: int, per_day: int, vocabulary: int, seed: int = 7) -> tuple[sqlite3.Connection, str]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(sqlite_days.DAY_SCHEMA)
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(vocabulary)]
    names = [f"entity {n}" for n in range(vocabulary)]
    first = date(2016, 1, 1)
    for n in tqdm(range(days), desc="building", unit="day"):
        counts = DayCounts(articles=400, mentions=0)
        for entity in set(rng.choices(names, weights, k=per_day * 3)):
            if len(counts.entities) == per_day:
                break
            m = 1 + int(rng.expovariate(0.5))
            counts.entities[entity] = [m, max(1, m // 2)]
            counts.mentions += m
        conn.execute("BEGIN")
        sqlite_days.add_days(conn, "the daily", {(first + timedelta(n)).isoformat(): counts})
        conn.execute("COMMIT")
    return conn, (first + timedelta(days - 1)).isoformat()


def timed(fn, repeat: int) -> dict:
    fn()  # warm the page cache once, as a running store's is
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--entities", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results-windows.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        conn, last = build(Path(tmp) / "year.db", args.days, args.entities, vocabulary=60_000)
        end = date.fromisoformat(last)

        def window(n):
            return Window((end - timedelta(n - 1)).isoformat(), last)
        queries = {
            "top 20, 7 days": lambda: sqlite_days.window_entities(conn, "the daily", window(7), 20, 0),
            "top 20, 30 days": lambda: sqlite_days.window_entities(conn, "the daily", window(30), 20, 0),
            "top 20, 90 days": lambda: sqlite_days.window_entities(conn, "the daily", window(90), 20, 0),
            "top 20, the year": lambda: sqlite_days.window_entities(conn, "the daily", Window(), 20, 0),
            "series, 30 days": lambda: sqlite_days.day_series(conn, "the daily", window(30)),
            "one entity's series, 90 days": lambda: sqlite_days.entity_series(conn, "the daily", "entity 3",
                                                                              window(90)),
            "rising, 7 days": lambda: sqlite_days.rising(conn, "the daily", 7, last, 20, 3),
        }
        rows = {}
        for name, fn in tqdm(queries.items(), desc="timing", unit="query"):
            repeat = args.repeat if "year" not in name else max(5, args.repeat // 10)
            rows[name] = timed(fn, repeat)
        size = (Path(tmp) / "year.db").stat().st_size
        conn.close()
    print(f"\nSQLite window reads: 1 publication x {args.days} days x {args.entities} entities a day "
          f"({size / 2**20:.0f} MiB)\n")
    print("| query | p50 ms | p99 ms |\n| --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']} | {r['p99_ms']} |")
    Path(args.json).write_text(json.dumps({"days": args.days, "entities_per_day": args.entities,
                                           "database_bytes": size, "queries": rows}, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
