"""Firestore document writes per 1,000 articles with single-article requests, through the emulators.

    .venv/bin/python benchmarks/fleet_writes.py [--articles 600] [--mode fleet|one]

fleet: one backend (`--intake pubsub://...`, packed layout) fed by N single-article Pub/Sub
messages published at once (each its own group, as a frontend publishes a one-post request);
one: the same articles POSTed to a one-machine backend's manager in requests of 100 (as
bench.py (h)). Writes = the backend's `store_writes` (documents a commit writes, markers
included). Both emulators run in their own process groups and are stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.core import intakeurl  # noqa: E402
from tests.corpus import articles  # noqa: E402
from tests.firestore_emulator import running_emulator as firestore_running  # noqa: E402
from tests.pubsub_emulator import create, running_emulator as pubsub_running  # noqa: E402
from tests.support import start_backend, wait_for  # noqa: E402


def corpus(n: int) -> list[tuple[str, str, str]]:
    return [(f"Outlet {i % 9}", content, f"https://example.test/w/{i}")
            for i, (_, content) in enumerate(articles(n, 31))]


def publish(setup, posts) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(setup.project, setup.topic)
    futures = []
    for post in posts:
        [(group, data, n)] = intakeurl.split_messages([post])
        futures.append(publisher.publish(topic, data, **{intakeurl.GROUP_ATTRIBUTE: group,
                                                         intakeurl.ARTICLES_ATTRIBUTE: str(n)}))
    for f in futures:
        f.result(timeout=60)


def run(mode: str, n: int, workers: int) -> dict:
    posts = corpus(n)
    project = "writes-" + uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as tmp, firestore_running() as fs_host:
        env = {"FIRESTORE_EMULATOR_HOST": fs_host, "GOOGLE_CLOUD_PROJECT": project}
        store_url = f"firestore://{project}?layout=packed"
        flags = ["--workers", str(workers)]
        if mode == "one":
            backend = start_backend(Path(tmp), *flags, store_url=store_url, env=env)
            started = time.monotonic()
            for s in range(0, n, 100):
                backend.client.put_many(posts[s:s + 100])
            status = backend.wait_idle(600)
        else:
            with pubsub_running() as ps_host:
                setup = create(ps_host, project, ack_deadline=60)
                backend = start_backend(Path(tmp), *flags, "--intake", setup.backend_url, store_url=store_url,
                                        env={**env, **setup.env})
                started = time.monotonic()
                publish(setup, posts)
                status = wait_for(lambda: (s := backend.status())["pubsub_acked"] >= n
                                  and s["pubsub_held_messages"] == 0 and s, 900, 0.5, "every message acknowledged")
                code = backend.stop()
                assert code == 0, backend.log()[-2000:]
        seconds = time.monotonic() - started
        if mode == "one":
            backend.stop()
    processed = max(1, status["processed"])
    return {"mode": mode, "articles": n, "processed": status["processed"], "seconds": round(seconds, 1),
            "store_writes": status["store_writes"], "store_batches": status["store_batches"],
            "store_commits": status["store_commits"],
            "writes_per_1000": round(1000 * status["store_writes"] / processed, 1),
            "batches_per_1000": round(1000 * status["store_batches"] / processed, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--articles", type=int, default=600)
    p.add_argument("--mode", choices=("fleet", "one"), default="fleet")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    print(json.dumps(run(args.mode, args.articles, args.workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
