"""`ingestiond dead-letters list|replay` on the Pub/Sub emulator: nothing on the dead-letter topic is
lost silently. A dead letter is listed (and stays), replayed to the main topic under its group id,
counted once by a real backend (SQLite), and a second replay of it counts nothing more. What cannot
be replayed stays where it is; a missing subscription or an emulator that is down is one line."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ingest.core import intakeurl
from tests.corpus import articles
from tests.support import BIN, expected_counts, free_port, start_backend, store_counts, wait_for

pytestmark = pytest.mark.slow  # the Pub/Sub emulator


def dead_letters(setup, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    child = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    child.update({**setup.env, **(env or {})})
    return subprocess.run([str(BIN / "ingestiond"), "dead-letters", *args], capture_output=True, text=True,
                          env=child, timeout=120, stdin=subprocess.DEVNULL)


def to_dead_letter_topic(setup, data: bytes, **attributes: str) -> None:
    """What Pub/Sub's dead-letter policy (or a backend) does with a message: publish it to the dead-letter topic."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    publisher.publish(publisher.topic_path(setup.project, setup.dead_letter), data, **attributes).result(timeout=60)


def publish_raw(setup, data: bytes, **attributes: str) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    publisher.publish(publisher.topic_path(setup.project, setup.topic), data, **attributes).result(timeout=60)


def as_the_policy_would(setup, posts) -> tuple[str, bytes, dict]:
    """A frontend's message as the subscription's policy dead-letters it after 100 delivery attempts."""
    group = intakeurl.group_id(posts)
    attributes = {"group": group, "articles": str(len(posts)), "CloudPubSubDeadLetterSourceDeliveryCount": "100",
                  "CloudPubSubDeadLetterSourceSubscription": setup.subscription,
                  "CloudPubSubDeadLetterSourceSubscriptionProject": setup.project,
                  "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-12-01T08:00:00+00:00"}
    return group, intakeurl.encode(posts), attributes


def pull_all(setup, subscription: str) -> list:
    """Every message waiting on `subscription`, acknowledged (taken away)."""
    from google.cloud import pubsub_v1

    sub = pubsub_v1.SubscriberClient()
    path = sub.subscription_path(setup.project, subscription)
    got = []
    try:
        while True:
            received = sub.pull(request={"subscription": path, "max_messages": 100}, timeout=5,
                                retry=None).received_messages
            if not received:
                return got
            got.extend(received)
            sub.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in received]})
    finally:
        sub.close()


def waiting_now(setup) -> int:
    from google.cloud import pubsub_v1

    from ingest.backend.fleet.deadletters import waiting

    sub = pubsub_v1.SubscriberClient()
    try:
        return waiting(sub, sub.subscription_path(setup.project, setup.dead_letter_subscription))
    finally:
        sub.close()


def test_a_dead_lettered_message_is_listed_replayed_and_counted_once_however_often_replayed(
        tmp_path, pubsub_topic, recount):
    posts = [("Dead Letter Gazette", content, f"https://example.test/dead/{i}")
             for i, (_, content) in enumerate(articles(50, seed=61))]
    group, data, attributes = as_the_policy_would(pubsub_topic, posts)
    to_dead_letter_topic(pubsub_topic, data, **attributes)
    url = pubsub_topic.backend_url

    for _ in range(2):  # listing acknowledges nothing: the second list sees it too
        listed = dead_letters(pubsub_topic, "list", "--intake", url)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(group + "\t"), listed.stdout
        assert "Dead Letter Gazette" in lines[0] and "\t50 articles\t" in lines[0]
        assert "100 delivery attempts" in lines[0] and "published 2026-12-01T08:00:00" in lines[0]
        assert "1 dead letters (50 articles)" in listed.stderr

    store_url = f"sqlite:///{tmp_path / 'fleet.db'}"

    def backend(name):
        (tmp_path / name).mkdir()
        return start_backend(tmp_path / name, "--workers", "1", "--flush-interval", "0.5", "--intake", url,
                             store_url=store_url, env=pubsub_topic.env)

    def counted(b, acked):
        s = b.status()
        return s["pubsub_acked"] >= acked and not (s["pubsub_held_messages"] or s["depth"] or s["in_flight"]
                                                   or s["unsaved"])

    first = backend("b1")
    try:
        wait_for(lambda: first.status().get("pubsub_dead_letters_waiting") == 1, 60, 0.2,
                 "the backend to count the dead letter in its status")
        health = tmp_path / "b1" / "var" / "backend-health.json"  # what a fleet VM's probe and operator read
        wait_for(lambda: json.loads(health.read_text()).get("dead_letters_waiting") == 1, 30, 0.2, "the health file")
        replayed = dead_letters(pubsub_topic, "replay", "--intake", url, "--group", group)
        assert replayed.returncode == 0, replayed.stderr
        assert f"{group}: replayed" in replayed.stdout
        wait_for(lambda: counted(first, 1), 120, 0.2, "the replayed message to be counted and acknowledged")
        assert waiting_now(pubsub_topic) == 0, "acknowledged on the dead-letter subscription after the replay"
        # a message no store can keep (a lone surrogate), from another publisher: the backend dead-letters it
        # at once, and `list` says why
        publish_raw(pubsub_topic, json.dumps({"posts": [["The Planet", "Ada \ud800 Lovelace", None]]}).encode(),
                    group="r" + "5" * 32, articles="1")
        wait_for(lambda: first.status()["pubsub_dead_lettered"] == 1, 60, 0.2, "the malformed message dead-lettered")
        rows = [json.loads(line) for line in dead_letters(pubsub_topic, "list", "--intake", url, "--json").stdout
                .splitlines()]
        assert [(r["group"], r["reason"].startswith("not an ingest message") and "post 0" in r["reason"])
                for r in rows] == [("r" + "5" * 32, True)], rows
    finally:
        assert first.stop() == 0, first.log()[-3000:]
    assert store_counts(store_url) == expected_counts(recount, posts)

    # the same dead letter again (Pub/Sub dead-letters at least once), replayed to a backend that never saw it:
    # the store's marker for its group id decides
    to_dead_letter_topic(pubsub_topic, data, **attributes)
    second = backend("b2")
    try:
        again = dead_letters(pubsub_topic, "replay", "--intake", url, "--group", group)
        assert again.returncode == 0 and f"{group}: replayed" in again.stdout, again.stderr
        wait_for(lambda: counted(second, 1), 120, 0.2, "the second replay to be acknowledged")
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    assert store_counts(store_url) == expected_counts(recount, posts), "a second replay counted it again"
    assert "Traceback" not in first.log() + second.log()


def test_list_says_why_and_replay_leaves_what_it_cannot_replay(pubsub_topic):
    """A backend's own dead letter (reason: killed workers) and a stranger's garbage: both listed with
    why; a replay sends the first back (its group and articles kept, the dead-letter marks left out)
    and leaves the garbage on the dead-letter subscription, exit 1."""
    poisoned = [("Poisoned Outlet", "Angela Merkel visited Paris.", "p1"), ("Poisoned Outlet", "Berlin.", "p2")]
    group = intakeurl.group_id(poisoned)
    to_dead_letter_topic(pubsub_topic, intakeurl.encode(poisoned), group=group, articles="2",
                         dead_lettered_by="ingestiond", reason="killed workers")
    to_dead_letter_topic(pubsub_topic, b"\xff not json")
    url = pubsub_topic.backend_url

    listed = dead_letters(pubsub_topic, "list", "--intake", url, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["group"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {group, None}
    assert rows[group]["reason"] == "killed workers" and rows[group]["articles"] == "2"
    assert rows[group]["publications"] == ["Poisoned Outlet"] and rows[group]["delivery_attempts"] == "-"
    assert "not an ingest message" in rows[None]["reason"] or "group" in rows[None]["reason"]

    missing = dead_letters(pubsub_topic, "replay", "--intake", url, "--group", "i" + "0" * 32)
    assert missing.returncode == 1 and "not on" in missing.stderr
    assert waiting_now(pubsub_topic) == 2, "a replay of nothing left everything where it was"

    replayed = dead_letters(pubsub_topic, "replay", "--intake", url, "--all")
    assert replayed.returncode == 1, replayed.stderr
    assert f"{group}: replayed" in replayed.stdout and "left on the dead-letter subscription" in replayed.stderr
    main = pull_all(pubsub_topic, pubsub_topic.subscription)
    assert len(main) == 1 and dict(main[0].message.attributes) == {"group": group, "articles": "2"}
    assert sorted(p[:3] for p in intakeurl.decode(main[0].message.data)) == sorted(poisoned)
    left = pull_all(pubsub_topic, pubsub_topic.dead_letter_subscription)
    assert [bytes(m.message.data) for m in left] == [b"\xff not json"]


def test_no_subscription_or_no_emulator_is_one_line(pubsub_topic):
    url = pubsub_topic.backend_url
    cases = [
        (("list", "--intake", url, "--dead-letter-subscription", "nope-sub"), {}, "no subscription"),
        (("list", "--intake", f"pubsub://{pubsub_topic.project}/nope-sub?dead_letter=x-dead"), {}, "no subscription"),
        (("replay", "--all", "--intake", url), {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}, "did not answer"),
        (("list", "--intake", "pubsub://p/x"), {}, "not a Pub/Sub"),
        (("list",), {}, "--intake"),
    ]
    for args, env, words in cases:
        result = dead_letters(pubsub_topic, *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_backend_counts_the_backlog_hands_it_back_and_says_when_dead_letters_would_be_lost(pubsub_topic, caplog):
    """The backend's gauge (what PubSubIntake.status() reports): the waiting dead letters, every one
    handed back; a dead-letter topic without a subscription is a warning (what lands there is lost)."""
    from google.cloud import pubsub_v1

    from ingest.backend.fleet.deadletters import DeadLetterCount
    from ingest.core.intakeurl import parse_intake_url

    for n in range(3):
        to_dead_letter_topic(pubsub_topic, intakeurl.encode([("Outlet", f"Story {n}.", None)]),
                             group=f"r{n:032x}", articles="1", reason="killed workers")
    subscriber = pubsub_v1.SubscriberClient()
    counts = [DeadLetterCount(parse_intake_url(pubsub_topic.backend_url)),
              DeadLetterCount(parse_intake_url(f"pubsub://{pubsub_topic.project}/{pubsub_topic.subscription}"
                                               "?dead_letter=nobody-keeps-it"))]
    try:
        with caplog.at_level("WARNING", logger="ingest.pubsub"):
            for count in counts:
                count.start(subscriber)
            wait_for(lambda: counts[0].status() == {"pubsub_dead_letters_waiting": 3}, 60, 0.1, "the count")
            wait_for(lambda: "what lands there is lost" in caplog.text, 60, 0.1, "the warning")
        assert counts[1].status() == {}, "no count is better than a false 0"
        assert "3 messages wait on the dead-letter subscription" in caplog.text
    finally:
        for count in counts:
            count.stop()
        subscriber.close()
    assert waiting_now(pubsub_topic) == 3, "counting took nothing away"
