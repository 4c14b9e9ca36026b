"""A fleet through Google Pub/Sub: frontends publish (202 once acknowledged), backends pull and
acknowledge after the store commit that counted a message; a redelivered message counts once
(its group id is the store batch id). Real emulators, real processes, real spaCy; see docs/pubsub.md."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import httpx
import psutil
import pytest

from ingest.core import intakeurl
from ingest.core.intakeurl import IntakeURLError, parse_intake_url
from ingest.core.rules import publication_key
from tests.corpus import articles
from tests.frontend_support import start_frontend
from tests.pubsub_emulator import pubsub_emulator, pubsub_topic  # noqa: F401 (fixtures)
from tests.support import expected_counts, start_backend, store_counts, wait_for


# -- the URL and the message format (no emulator) ------------------------------------------------

def test_intake_urls():
    url = parse_intake_url("pubsub://my-project/ingest-articles?dead_letter=ingest-dead")
    assert (url.project, url.name, url.option("dead_letter")) == ("my-project", "ingest-articles", "ingest-dead")
    assert url.topic_path == "projects/my-project/topics/ingest-articles"
    assert url.subscription_path == "projects/my-project/subscriptions/ingest-articles"
    for bad in ("nats://p/t", "pubsub://p", "pubsub://proj/ab", "pubsub://proj/goog-x", "pubsub://proj/t1?x=1",
                "pubsub:///topic"):
        with pytest.raises(IntakeURLError):
            parse_intake_url(bad)


def test_a_request_is_one_message_whose_group_is_stable_when_every_post_has_an_id():
    posts = [("The Planet", "Lois Lane met Clark Kent.", "a"), ("Gazette", "Bruce Wayne in Gotham.", "b")]
    [(group, data, n)] = intakeurl.split_messages(posts)
    assert n == 2 and intakeurl.is_group(group) and group.startswith("i")
    assert intakeurl.decode(data) == posts
    # a retry of the same request, spelled or ordered differently, has the same group: one batch id
    retry = [("gazette ", "Bruce Wayne in Gotham.", "b"), ("the  PLANET", "Lois Lane met Clark Kent.", "a")]
    assert intakeurl.group_id(retry) == group
    assert intakeurl.group_id(posts[:1]) != group
    anonymous = [("The Planet", "x y", None)]
    assert intakeurl.group_id(anonymous).startswith("r") and intakeurl.group_id(anonymous) != intakeurl.group_id(anonymous)
    assert intakeurl.unique_posts(posts + [("THE planet", "again", "a")]) == (posts, 1)


def test_a_request_over_the_message_limit_is_split_and_garbage_is_refused():
    posts = [(f"P{i}", "word " * 300, None) for i in range(40)]
    messages = intakeurl.split_messages(posts, limit=20_000)
    assert len(messages) > 1 and sum(n for _, _, n in messages) == 40
    assert all(len(data) <= 20_000 for _, data, _ in messages)
    assert [p for _, data, _ in messages for p in intakeurl.decode(data)] == posts
    for garbage in (b"\xff", b"{}", b'{"posts": []}', b'{"posts": [["", "x", null]]}', b'{"posts": [["p", 1, null]]}'):
        with pytest.raises(ValueError):
            intakeurl.decode(garbage)
    tagged = intakeurl.tag("r" + "0" * 32, "  The Planet")
    assert intakeurl.untag(publication_key(tagged)) == ("r" + "0" * 32, " the planet")


# -- real emulators and processes -------------------------------------------------------------

def traced(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(publication, content, id): one publication per article, so each can be traced."""
    return [(f"Trace {i:04d}", content, f"https://example.test/{seed}/{i}")
            for i, (_, content) in enumerate(articles(n, seed=seed))]


def fleet_backend(tmp_path, setup, store_url, *flags, env=None, name="b", wait_ready=True):
    (tmp_path / name).mkdir(exist_ok=True)
    return start_backend(tmp_path / name, "--workers", "1", "--cache-size", "8", "--flush-interval", "0.5",
                         "--intake", setup.backend_url, *flags, store_url=store_url,
                         env={**setup.env, **(env or {})}, wait_ready=wait_ready)


def held_settled(backends) -> bool:
    """Every backend idle: nothing held from Pub/Sub, nothing in flight or unsaved."""
    for b in backends:
        s = b.status()
        if s["pubsub_held_messages"] or s["depth"] or s["in_flight"] or s["unsaved"]:
            return False
    return True


def undelivered(setup) -> int:
    """Messages still in the subscription (a pull that takes nothing away: leases of 0 s handed back)."""
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    try:
        path = sub.subscription_path(setup.project, setup.subscription)
        response = sub.pull(request={"subscription": path, "max_messages": 100}, timeout=5, retry=None)
        ids = [m.ack_id for m in response.received_messages]
        if ids:
            sub.modify_ack_deadline(request={"subscription": path, "ack_ids": ids, "ack_deadline_seconds": 0})
        return len(ids)
    except Exception:  # DeadlineExceeded: nothing to pull
        return 0
    finally:
        sub.close()


@pytest.mark.slow
def test_frontend_publishes_and_a_backend_counts_and_acknowledges(tmp_path, pubsub_topic, recount):
    """One frontend, one backend, SQLite: 202 after the publish, counts equal a recount, every message
    acknowledged (none left in the subscription), a retried request counted once, SIGTERM exits 0."""
    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    posts = traced(60, seed=41)
    backend = fleet_backend(tmp_path, pubsub_topic, store_url)
    frontend = start_frontend(tmp_path, {"INGEST_STORE": store_url},
                              env={**pubsub_topic.env, "INGEST_INTAKE": pubsub_topic.frontend_url})
    try:
        with frontend.client(headers={"X-API-Key": frontend.api_key}) as http:
            for start in range(0, len(posts), 10):
                body = [{"publication": p, "content": c, "id": i} for p, c, i in posts[start:start + 10]]
                r = http.post("/posts", json=body)
                assert r.status_code == 202, r.text
                assert r.json() == {"accepted": 10, "duplicates": 0}
            again = http.post("/posts", json=[{"publication": p, "content": c, "id": i} for p, c, i in posts[:10]])
            assert again.status_code == 202  # a retry of a whole request: the store counts its batch once
            assert http.get("/readyz").status_code == 200
        wait_for(lambda: held_settled([backend]) and backend.status()["pubsub_acked"] >= 7, 120, 0.2,
                 "the backend to count and acknowledge everything")
        assert undelivered(pubsub_topic) == 0
    finally:
        frontend.stop()
        code = backend.stop()
    assert code == 0, backend.log()[-3000:]
    assert "Traceback" not in backend.log(), backend.log()[-3000:]
    assert store_counts(store_url) == expected_counts(recount, posts)
