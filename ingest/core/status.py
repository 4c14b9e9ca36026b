"""The backend's status, as the frontend reads it through the manager: which numbers only grow.

`/metrics` exports these keys of `status()` as Prometheus counters and every other number as a
gauge. The backend's `Counters` must carry exactly these names (a test checks it).
"""

INTAKE_COUNTERS = ("accepted", "duplicates", "rejected_full", "rejected_draining", "replayed")
HUB_COUNTERS = ("processed", "flushes", "store_batches", "store_writes", "store_commits", "store_errors",
                "redelivered", "suspects", "quarantined_total", "worker_deaths", "saver_deaths")
JOURNAL_COUNTERS = ("journal_commits", "client_ids_evicted")
COUNTERS = frozenset(INTAKE_COUNTERS + HUB_COUNTERS + JOURNAL_COUNTERS)
