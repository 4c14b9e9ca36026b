"""A fleet through Google Pub/Sub: frontends publish (202 once acknowledged), backends pull and
acknowledge after the store commit that counted a message; a redelivered message counts once
(its group id is the store batch id). Real emulators, real processes, real spaCy; see docs/pubsub.md."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest

from ingest.core import intakeurl
from ingest.core.intakeurl import IntakeURLError, parse_intake_url
from ingest.core.rules import publication_key
from tests.corpus import articles
from tests.frontend_support import start_frontend
from tests.support import expected_counts, kill_backend_group, start_backend, store_counts, wait_for


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
    assert intakeurl.decode(data) == [(*p, None) for p in posts]
    # a retry of the same request, spelled or ordered differently, has the same group: one batch id
    retry = [("gazette ", "Bruce Wayne in Gotham.", "b"), ("the  PLANET", "Lois Lane met Clark Kent.", "a")]
    assert intakeurl.group_id(retry) == group
    assert intakeurl.group_id(posts[:1]) != group
    anonymous = [("The Planet", "x y", None)]
    assert intakeurl.group_id(anonymous).startswith("r") \
        and intakeurl.group_id(anonymous) != intakeurl.group_id(anonymous)
    assert intakeurl.unique_posts(posts + [("THE planet", "again", "a")]) == (posts, 1)


def test_a_request_over_the_message_limit_is_split_and_garbage_is_refused():
    posts = [(f"P{i}", "word " * 300, None) for i in range(40)]
    messages = intakeurl.split_messages(posts, limit=20_000)
    assert len(messages) > 1 and sum(n for _, _, n in messages) == 40
    assert all(len(data) <= 20_000 for _, data, _ in messages)
    assert [p for _, data, _ in messages for p in intakeurl.decode(data)] == [(*p, None) for p in posts]
    for garbage in (b"\xff", b"{}", b'{"posts": []}', b'{"posts": [["", "x", null]]}', b'{"posts": [["p", 1, null]]}'):
        with pytest.raises(ValueError):
            intakeurl.decode(garbage)
    tagged = intakeurl.tag("r" + "0" * 32, "  The Planet")
    assert intakeurl.untag(publication_key(tagged)) == ("r" + "0" * 32, " the planet")


def test_a_request_with_ids_resent_in_another_order_splits_into_the_same_messages():
    import random

    posts = [(f"Outlet {i % 3}", "word " * 300, f"https://example.test/{i}") for i in range(40)]
    shuffled = posts[:]
    random.Random(7).shuffle(shuffled)
    first, again = intakeurl.split_messages(posts, limit=20_000), intakeurl.split_messages(shuffled, limit=20_000)
    assert len(first) > 1
    assert [(g, n) for g, _, n in first] == [(g, n) for g, _, n in again]  # the same groups: counted once


@pytest.mark.parametrize("post, why", [
    (["The Planet", "Ada \\ud800 Lovelace", None], "unicode"),                 # a lone surrogate: no store keeps it
    (["The Planet", "Ada", "id-\\udfff"], "unicode"),
    (["P" * 1001, "Ada Lovelace", None], "1000 bytes"),                        # longer than the front door takes
    (["The Planet", "Ada Lovelace", "i" * 201], "200 characters"),
    (["The Planet", "x" * 101, None], "the limit is 100"),                      # over --max-article-chars
    (["   ", "Ada Lovelace", None], "empty"),
])
def test_a_message_the_frontend_could_not_have_published_is_refused(post, why):
    """Any publisher may write to the topic: what the front door refuses, decode refuses too (and
    the intake dead-letters it at once) instead of letting it reach the journal."""
    data = ('{"posts": [[%s, %s, %s]]}' % tuple("null" if v is None else '"%s"' % v for v in post)).encode()
    with pytest.raises(ValueError, match=why):
        intakeurl.decode(data, max_article_chars=100)
    assert intakeurl.decode(b'{"posts": [["The Planet", "Ada Lovelace", null]]}', max_article_chars=100) == \
        [("The Planet", "Ada Lovelace", None, None)]
    assert intakeurl.decode(b'{"posts": [["The Planet", "Ada Lovelace", null, "2017-02-07"]]}') == \
        [("The Planet", "Ada Lovelace", None, "2017-02-07")]
    with pytest.raises(ValueError, match="date YYYY-MM-DD"):
        intakeurl.decode(b'{"posts": [["The Planet", "Ada Lovelace", null, "2017-02-30"]]}')



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


class Sender(threading.Thread):
    """POSTs its requests to one frontend. A refusal that says nothing was published (429, 503) is
    resent; any other answer but 202 is an error here: a request with id-less articles resent after
    an unknown outcome could be counted twice, which the test could not tell from a fleet bug."""

    def __init__(self, frontend, requests, pause: float):
        super().__init__(daemon=True)
        self.frontend, self.requests, self.pause = frontend, requests, pause
        self.sent = 0
        self.retries = 0
        self.error: Exception | None = None

    def run(self):
        try:
            with self.frontend.client(headers={"X-API-Key": self.frontend.api_key}) as http:
                for body in self.requests:
                    while (r := http.post("/posts", json=body)).status_code != 202:
                        if r.status_code not in (429, 503):
                            raise AssertionError(f"{r.status_code} {r.text[:300]}")
                        self.retries += 1
                        time.sleep(0.2)
                    assert r.json()["accepted"] == len(body), r.text
                    self.sent += len(body)
                    time.sleep(self.pause)
        except Exception as exc:  # reported by the test
            self.error = exc


@pytest.mark.slow
@pytest.mark.firestore
def test_two_frontends_three_backends_a_sigkill_and_a_sigterm_mid_load_count_each_article_once(
        tmp_path, pubsub_topic, firestore_emulator, firestore_project, recount):
    """The issue's fleet: 1,000 articles through 2 frontends and Pub/Sub into 3 backends storing in the
    Firestore emulator, one frontend sending single-article requests (300: a message and a group
    each), the other batched ones (14 of 50 articles, a fifth of them without ids); one backend
    SIGKILLed (its whole group) and one SIGTERMed mid-load, both restarted. Every article is counted
    exactly once: the store equals an independent recount."""
    from ingest.stores.firestore import FirestoreStore

    store_url = f"firestore://{firestore_project}"
    env = {"FIRESTORE_EMULATOR_HOST": firestore_emulator}
    posts = [(f"Outlet {i % 100:02d}", content, None if i >= 300 and i % 5 == 0 else f"https://example.test/fleet/{i}")
             for i, (_, content) in enumerate(articles(1000, seed=51))]

    def as_json(chunk):
        return [{"publication": p, "content": c, **({"id": i} if i else {})} for p, c, i in chunk]

    singles = [as_json([post]) for post in posts[:300]]
    batches = [as_json(posts[s:s + 50]) for s in range(300, 1000, 50)]
    flags = ("--pubsub-ack-deadline", "10", "--savers", "1")

    def backend(n):
        return fleet_backend(tmp_path, pubsub_topic, store_url, *flags, env=env, name=f"b{n}")

    backends = [backend(n) for n in range(3)]
    frontends, senders = [], []
    try:
        for _ in range(2):
            frontends.append(start_frontend(tmp_path, {"INGEST_STORE": store_url},
                                            env={**pubsub_topic.env, **env,
                                                 "INGEST_INTAKE": pubsub_topic.frontend_url}))
        senders = [Sender(frontends[0], singles, pause=0.05), Sender(frontends[1], batches, pause=1.5)]
        started = time.monotonic()
        for s in senders:
            s.start()
        sent = lambda: sum(s.sent for s in senders)  # noqa: E731
        # holding 50 articles or more: a batched message among them (a group commits whole)
        wait_for(lambda: sent() >= 300 and (s := backends[0].status())["pubsub_held_messages"] > 0
                 and s["journal_articles"] >= 50, 120, 0.01, "backend 0 to hold a batched message mid-load")
        held = backends[0].status()["pubsub_held_messages"]
        kill_backend_group(backends[0])
        killed_at = time.monotonic()
        backends[0] = backend(0)
        wait_for(lambda: sent() >= 600, 120, 0.02, "more of the load")
        assert backends[1].stop(signal.SIGTERM) == 0, backends[1].log()[-3000:]
        backends[1] = backend(1)
        for s in senders:
            s.join(300)
        assert not any(s.is_alive() for s in senders) and not any(s.error for s in senders), [s.error for s in senders]
        assert sent() == 1000
        load_seconds = time.monotonic() - started

        store = FirestoreStore(project=firestore_project)
        try:
            stored = lambda: sum(p.articles for p in store.publications())  # noqa: E731
            wait_for(lambda: stored() >= 1000 and held_settled(backends), 240, 0.5, "every article to be counted")
            # past the killed backend's leases: anything still to be redelivered has been, and counted once
            time.sleep(max(0.0, killed_at + 12 - time.monotonic()))
            wait_for(lambda: held_settled(backends), 60, 0.5, "the fleet to settle")
            assert stored() == 1000
        finally:
            store.close()
        assert undelivered(pubsub_topic) == 0
        statuses = [b.status() for b in backends]
    finally:
        for s in senders:
            s.join(1)
        for f in frontends:
            f.stop()
        codes = [b.stop() for b in backends]
    assert codes == [0, 0, 0], [b.log()[-3000:] for b in backends]
    for b in backends:
        assert "Traceback" not in b.log(), b.log()[-3000:]
    got = store_counts(store_url)
    doubled = {k: v[0] for k, v in got.items() if v[0] != 10}
    assert not doubled and len(got) == 100, f"outlets with other than 10 articles: {doubled}"
    assert got == expected_counts(recount, posts)
    print(f"load {load_seconds:.1f}s; backend 0 held {held} messages when killed; retries "
          f"{[s.retries for s in senders]}; acked {[s['pubsub_acked'] for s in statuses]}, "
          f"redelivered {[s['pubsub_redelivered'] for s in statuses]}")


def publish_raw(setup, messages) -> None:
    """Publish (group, posts) messages straight to the topic, as a frontend would, and wait for every ack."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(setup.project, setup.topic)
    futures = [publisher.publish(topic, intakeurl.encode(posts), group=group, articles=str(len(posts)))
               for group, posts in messages]
    for future in futures:
        future.result(timeout=120)


@pytest.mark.slow
def test_the_same_message_delivered_to_two_backends_is_counted_once(tmp_path, pubsub_topic, recount):
    """What a redelivery after a lost ack or an expired lease is: a second copy of a message, taken by
    any backend, maybe while the first is still being counted. Each message is published twice here;
    the copies land on two backends, and the store's batch marker (the group id) counts each once."""
    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    posts = traced(80, seed=43)
    messages = [(intakeurl.group_id(posts[i:i + 4]), posts[i:i + 4]) for i in range(0, 80, 4)]
    # holding two messages at a time each, the two backends share the stream and its copies
    backends = [fleet_backend(tmp_path, pubsub_topic, store_url, "--pubsub-max-messages", "2", name=f"b{n}")
                for n in range(2)]
    try:
        publish_raw(pubsub_topic, messages + messages[::-1])
        wait_for(lambda: sum(b.status()["pubsub_acked"] for b in backends) >= 40 and held_settled(backends),
                 120, 0.2, "both copies of every message to be acknowledged")
        processed = [b.status()["processed"] for b in backends]
    finally:
        codes = [b.stop() for b in backends]
    assert codes == [0, 0], [b.log()[-3000:] for b in backends]
    logs = "".join(b.log() for b in backends)
    skipped, refused = logs.count("already applied"), logs.count("refused by the store")
    print(f"processed {processed}; {skipped} batches found already applied; {refused} merged batches refused "
          "(a group recorded by the other backend) and sent again one group per batch")
    assert min(processed) > 0 and skipped > 0, "copies must have been counted by both backends to prove anything"
    assert store_counts(store_url) == expected_counts(recount, posts)


@pytest.mark.slow
def test_a_backlog_of_50000_messages_waits_in_pubsub_while_the_backend_stays_small(tmp_path, pubsub_topic):
    """Flow control: the backend holds at most --pubsub-max-messages; its memory does not follow the backlog."""
    short = articles(50, seed=44)
    messages = [("r%032x" % i, [(short[i % 50][0], short[i % 50][1], None)]) for i in range(50_000)]
    published = time.monotonic()
    publish_raw(pubsub_topic, messages)
    published = time.monotonic() - published
    backend = fleet_backend(tmp_path, pubsub_topic, f"sqlite:///{tmp_path / 'big.db'}",
                            "--pubsub-max-messages", "300")
    samples, held = [], []
    try:
        proc = psutil.Process(backend.proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            samples.append(proc.memory_info().rss)
            held.append(backend.status()["pubsub_held_messages"])
            time.sleep(0.5)
        status = backend.status()
    finally:
        code = backend.stop()
    assert code == 0, backend.log()[-3000:]
    assert 0 < status["pubsub_acked"] < 50_000 - 10_000, "most of the backlog must still be waiting in Pub/Sub"
    assert max(held) <= 300
    growth = (max(samples[4:]) - samples[4]) / 2**20
    print(f"published 50,000 in {published:.1f}s; {status['pubsub_acked']} acked in 20 s; held <= {max(held)}; "
          f"main process RSS {samples[4] / 2**20:.0f} -> max {max(samples) / 2**20:.0f} MB (+{growth:.1f} MB)")
    assert growth < 40, f"the backend's RSS grew {growth:.0f} MB while the backlog waited"


@pytest.mark.slow
def test_a_message_that_keeps_killing_workers_goes_to_the_dead_letter_topic(tmp_path, pubsub_topic, recount):
    """Its article kills a worker twice: the whole message is published to the dead-letter topic and
    acknowledged; the other messages are counted; nothing of the poisoned message is."""
    from google.cloud import pubsub_v1

    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    good = traced(12, seed=45)
    poisoned = [("Poisoned Outlet", "Angela Merkel visited Paris. POISON-7f3a", "p1"),
                ("Poisoned Outlet", "Berlin.", "p2")]
    messages = [(intakeurl.group_id(good[i:i + 4]), good[i:i + 4]) for i in range(0, 12, 4)]
    messages.insert(1, (intakeurl.group_id(poisoned), poisoned))
    backend = fleet_backend(tmp_path, pubsub_topic, store_url, env={"INGEST_TEST_POISON_TOKEN": "POISON-7f3a"})
    try:
        publish_raw(pubsub_topic, messages)
        wait_for(lambda: backend.status()["pubsub_dead_lettered"] == 1 and backend.status()["pubsub_acked"] == 4
                 and held_settled([backend]), 120, 0.2, "the poisoned message to be dead-lettered")
    finally:
        code = backend.stop()
    assert code == 0, backend.log()[-3000:]
    assert store_counts(store_url) == expected_counts(recount, good)
    sub = pubsub_v1.SubscriberClient()
    try:
        path = sub.subscription_path(pubsub_topic.project, pubsub_topic.dead_letter_subscription)
        got = sub.pull(request={"subscription": path, "max_messages": 10}, timeout=10, retry=None).received_messages
    finally:
        sub.close()
    assert len(got) == 1 and got[0].message.attributes["group"] == messages[1][0]
    # the dead letter carries each post's day (the journal's): a replay counts it on the same day
    assert sorted(p[:3] for p in intakeurl.decode(got[0].message.data)) == sorted((p, c, None) for p, c, _ in poisoned)
    assert {p[3] for p in intakeurl.decode(got[0].message.data)} != {None}


@pytest.mark.slow
def test_a_lone_surrogate_and_an_over_long_publication_published_raw_are_dead_lettered_at_once(
        tmp_path, pubsub_topic, recount):
    """Any publisher may write to the topic. A lone surrogate (no store can keep it; before, it
    killed the scratch journal's writer thread and wedged the backend, then the next one) and a
    publication longer than the front door takes, published raw between healthy messages: each is
    published to the dead-letter topic on its first delivery, and every healthy article is counted."""
    from google.cloud import pubsub_v1

    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    good = traced(24, seed=47)
    messages = [(intakeurl.group_id(good[i:i + 4]), intakeurl.encode(good[i:i + 4])) for i in range(0, 24, 4)]
    surrogate = ("r" + "a" * 32, b'{"posts":[["The Planet","Ada \\ud800 Lovelace met Charles Babbage.",null]]}')
    long_name = ("r" + "b" * 32, b'{"posts":[["' + b"P" * 1001 + b'","Ada Lovelace met Charles Babbage.",null]]}')
    messages[2:2] = [surrogate]
    messages[5:5] = [long_name]
    backend = fleet_backend(tmp_path, pubsub_topic, store_url)
    publisher = pubsub_v1.PublisherClient()
    try:
        topic = publisher.topic_path(pubsub_topic.project, pubsub_topic.topic)
        for group, data in messages:  # in order: healthy ones before, between and after the two
            publisher.publish(topic, data, group=group, articles="1" if group[1] in "ab" else "4").result(timeout=60)
        wait_for(lambda: (s := backend.status())["pubsub_dead_lettered"] == 2 and s["pubsub_acked"] == 8
                 and held_settled([backend]), 120, 0.2, "two dead letters and six healthy messages counted")
        status = backend.status()
    finally:
        code = backend.stop()
    assert code == 0, backend.log()[-3000:]
    assert "Traceback" not in backend.log(), backend.log()[-3000:]
    assert (status["pubsub_nacked"], status["pubsub_redelivered"], status["pubsub_pulled"]) == (0, 0, 8)
    assert status["processed"] == 24 and status["quarantined"] == 0
    assert store_counts(store_url) == expected_counts(recount, good)
    sub = pubsub_v1.SubscriberClient()
    try:
        path = sub.subscription_path(pubsub_topic.project, pubsub_topic.dead_letter_subscription)
        got = sub.pull(request={"subscription": path, "max_messages": 10}, timeout=10, retry=None).received_messages
    finally:
        sub.close()
    dead = {m.message.attributes["group"]: m.message for m in got}
    assert sorted(dead) == sorted([surrogate[0], long_name[0]])
    for group, data in (surrogate, long_name):
        assert dead[group].data == data  # as published, for `dead-letters replay` or a person to read
        assert dead[group].attributes["reason"].startswith("not an ingest message")
