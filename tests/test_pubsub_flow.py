"""The fleet intake's flow control against a fake subscription that keeps score: delivery
attempts per message, nacks, and the dead-letter policy the emulator does not enforce (5 attempts,
stricter than the 100 deploy/fleet.sh sets). No emulator needed: the subscription is the part being faked."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from ingest.backend.fleet.puller import PubSubIntake
from ingest.backend.fleet.scratch import scratch_journal
from ingest.config import BackendSettings
from ingest.core.intakeurl import ARTICLES_ATTRIBUTE, GROUP_ATTRIBUTE, encode, untag
from tests.support import wait_for

MAX_DELIVERIES = 5


class FakeSubscription:
    """Messages with leases: pull hands out those not leased, a nack (deadline 0) makes one
    deliverable again and counts; past MAX_DELIVERIES deliveries a message is dead-lettered."""

    def __init__(self, messages: list[tuple[str, bytes, int]]):
        self.lock = threading.Lock()
        self.pending = {f"m{i}": (gid, data, n) for i, (gid, data, n) in enumerate(messages)}
        self.leased: set[str] = set()
        self.deliveries: dict[str, int] = {}
        self.nacks: dict[str, int] = {}
        self.acked: set[str] = set()
        self.dead_lettered: set[str] = set()
        self.pulls = 0

    def get_subscription(self, request, timeout=None):
        return SimpleNamespace(name=request["subscription"])

    def pull(self, request, timeout=None, retry=None):
        with self.lock:
            self.pulls += 1
            out = []
            for mid, (gid, data, n) in self.pending.items():
                if len(out) >= request["max_messages"]:
                    break
                if mid in self.leased:
                    continue
                if self.deliveries.get(mid, 0) >= MAX_DELIVERIES:
                    self.dead_lettered.add(mid)
                    continue
                self.deliveries[mid] = self.deliveries.get(mid, 0) + 1
                self.leased.add(mid)
                ack_id = f"{mid}/{self.deliveries[mid]}"
                out.append(SimpleNamespace(ack_id=ack_id, message=SimpleNamespace(
                    message_id=mid, data=data, attributes={GROUP_ATTRIBUTE: gid, ARTICLES_ATTRIBUTE: str(n)})))
            for mid in self.dead_lettered:
                self.pending.pop(mid, None)
        if not out:
            time.sleep(0.01)  # a real pull waits for messages; the loop must not spin on an empty one
        return SimpleNamespace(received_messages=out)

    def acknowledge(self, request, timeout=None):
        with self.lock:
            for ack_id in request["ack_ids"]:
                mid = ack_id.split("/")[0]
                self.pending.pop(mid, None)
                self.leased.discard(mid)
                self.acked.add(mid)

    def modify_ack_deadline(self, request, timeout=None):
        if request["ack_deadline_seconds"] > 0:
            return  # an extension: the lease holds
        with self.lock:
            for ack_id in request["ack_ids"]:
                mid = ack_id.split("/")[0]
                self.leased.discard(mid)
                self.nacks[mid] = self.nacks.get(mid, 0) + 1


def _intake(tmp_path, subscription, **settings) -> PubSubIntake:
    s = BackendSettings(var_dir=tmp_path, intake="pubsub://test-project/ingest-sub", **settings)
    intake = PubSubIntake(scratch_journal(s), s)
    intake._subscriber = subscription
    return intake


def _messages(count: int, articles: int) -> list[tuple[str, bytes, int]]:
    out = []
    for i in range(count):
        posts = [(f"Outlet {i % 7}", f"Story {i}-{j}. Ada Lovelace met Charles Babbage.", None)
                 for j in range(articles)]
        out.append((f"r{i:032x}", encode(posts), articles))
    return out


class Consumer(threading.Thread):
    """The workers and the store: takes the intake's articles; while `store_up` is clear it commits
    nothing (the store is down), then commits each message once all its articles are taken."""

    def __init__(self, intake: PubSubIntake):
        super().__init__(daemon=True)
        self.intake = intake
        self.store_up = threading.Event()
        self.stop = threading.Event()
        self.taken: dict[str, list[int]] = {}
        self.committed = 0

    def run(self) -> None:
        while not self.stop.is_set():
            entries = self.intake.take(200)
            for e in entries:
                self.taken.setdefault(untag(e.publication)[0], []).append(e.seq)
            if self.store_up.is_set():
                with self.intake.glock:
                    ready = [g for g in self.intake.groups.values() if len(self.taken.get(g.id, ())) >= g.total]
                for group in ready:
                    self.intake.journal.discard(self.taken.pop(group.id))
                    self.intake.committed(group.id)
                    self.committed += 1
            if not entries:
                self.stop.wait(0.005)


@pytest.mark.slow  # 100,000 articles through the real intake: seconds, not milliseconds
def test_a_backlog_of_50_article_messages_is_never_handed_back_for_want_of_room(tmp_path):
    """2,000 messages of 50 articles (the batching docs/pubsub.md advises) behind a store that is
    down until the intake has filled its bounds: the intake holds what it can, waits, and hands
    nothing back; every message is then acknowledged once, none dead-lettered. Before: one pull of
    500 messages x 50 articles was refused whole by the 10,000-article bound and nacked, again and
    again, until the policy dead-lettered healthy, accepted articles."""
    subscription = FakeSubscription(_messages(2000, 50))
    intake = _intake(tmp_path, subscription, queue_size=10_000)
    consumer = Consumer(intake)
    consumer.start()
    zero_rooms = []
    pull_size = intake._pull_size
    intake._pull_size = lambda: zero_rooms.append(1) or 0 if (n := pull_size()) == 0 else n  # counts the waits
    intake.start()
    try:
        wait_for(lambda: intake.held_articles() >= intake.capacity - 50 and len(zero_rooms) >= 50, 60, 0.01,
                 "the intake to fill its bound and wait")
        held = intake.held_articles()
        assert held <= intake.capacity, f"{held} articles held over a bound of {intake.capacity}"
        consumer.store_up.set()
        wait_for(lambda: len(subscription.acked) == 2000, 120, 0.05, "every message to be acknowledged")
    finally:
        consumer.stop.set()
        intake.stop_accepting()
        intake.close()
    assert subscription.nacks == {}, f"{len(subscription.nacks)} messages handed back for want of room"
    assert subscription.dead_lettered == set()
    assert set(subscription.deliveries.values()) == {1}
    assert consumer.committed == 2000 and intake.journal.stats()["journal_articles"] == 0
    intake.journal.close()


def test_a_message_bigger_than_the_bound_is_taken_alone_and_not_handed_back(tmp_path):
    subscription = FakeSubscription(_messages(3, 30))
    intake = _intake(tmp_path, subscription, queue_size=20)
    consumer = Consumer(intake)
    consumer.store_up.set()
    consumer.start()
    intake.start()
    try:
        wait_for(lambda: len(subscription.acked) == 3, 60, 0.02, "every message to be acknowledged")
    finally:
        consumer.stop.set()
        intake.stop_accepting()
        intake.close()
    assert subscription.nacks == {} and consumer.committed == 3
    intake.journal.close()


@pytest.mark.parametrize("articles", [50])
def test_a_dead_lettered_message_releases_its_articles_from_the_bounds(tmp_path, articles):
    """Before, a message dead-lettered for killing workers left its other articles counted in the
    scratch journal for the life of the process: ~10 such messages of 1,000 and every pull was nacked."""
    subscription = FakeSubscription(_messages(2, articles))
    intake = _intake(tmp_path, subscription)
    intake._publish_dead_letter = lambda group, data: True  # the dead-letter topic: accepted
    intake.start()
    try:
        wait_for(lambda: len(intake.groups) == 2, 30, 0.01, "both messages held")
        assert intake.journal.stats()["journal_articles"] == 2 * articles
        group = next(iter(intake.groups.values()))
        texts = intake.journal.contents(group.seqs)
        intake.kill(group, [(p, texts[s], None) for s, p in zip(group.seqs, group.publications, strict=True)])
        assert intake.journal.stats()["journal_articles"] == articles
        assert intake.held_articles() == articles
        wait_for(lambda: len(subscription.acked) == 1, 30, 0.01, "the dead letter to be acknowledged")
    finally:
        intake.stop_accepting()
        intake.close()
        intake.journal.close()


def test_a_message_the_journal_cannot_keep_is_dead_lettered_alone_and_the_others_are_counted(tmp_path):
    """A message that passes decode but that the scratch journal refuses (ValueError: the journal's
    'this request alone fails') must not stop the puller nor take the messages pulled with it along."""
    messages = _messages(3, 4)
    bad = encode([("Outlet 1", "UNKEEPABLE text", None)])
    messages[1] = (messages[1][0], bad, 1)
    subscription = FakeSubscription(messages)
    intake = _intake(tmp_path, subscription)
    real_append = intake.journal.append

    def append(posts, token=None):
        if any("UNKEEPABLE" in p[1] for p in posts):
            raise ValueError("the journal cannot keep this request: TypeError")
        return real_append(posts, token)
    intake.journal.append = append
    dead = []
    intake._publish_dead_letter = lambda group, data: dead.append((group.id, group.why, data)) or True
    consumer = Consumer(intake)
    consumer.store_up.set()
    consumer.start()
    intake.start()
    try:
        wait_for(lambda: len(subscription.acked) == 3, 30, 0.01, "every message settled")
    finally:
        consumer.stop.set()
        intake.stop_accepting()
        intake.close()
        intake.journal.close()
    assert consumer.committed == 2 and subscription.nacks == {}
    assert [(gid, data) for gid, _, data in dead] == [(messages[1][0], bad)]
    assert "journal cannot keep" in dead[0][1]


# -- what the intake feeds the health file (backend/health.py; judged by web/backend_health.py) ----

def _verdict(intake: PubSubIntake, health_file, **limits):
    """One arbiter tick's write of the health file, and the frontend's reading of it."""
    from ingest.backend.health import HealthFile
    from ingest.web.backend_health import BackendHealth

    if not hasattr(intake, "_health"):
        intake._health = HealthFile(health_file)
    intake._health.next_write = 0.0  # due now: the test ticks faster than the arbiter writes
    intake._health.tick(time.monotonic(), "running", intake.status)
    return BackendHealth(health_file, **limits).problem()


class HangingSubscription(FakeSubscription):
    """Its second pull never returns until released: a puller blocked (on the network, on the journal)."""

    def __init__(self, messages):
        super().__init__(messages)
        self.release = threading.Event()

    def pull(self, request, timeout=None, retry=None):
        if self.pulls:
            self.release.wait()
        return super().pull(request, timeout, retry)


def test_a_puller_that_stops_turning_makes_the_backend_unhealthy(tmp_path):
    subscription = HangingSubscription(_messages(1, 3))
    intake = _intake(tmp_path, subscription)
    intake.start()
    try:
        wait_for(lambda: subscription.pulls >= 1, 10, 0.01, "the first pull")
        code, reason = wait_for(lambda: _verdict(intake, tmp_path / "health.json", stall_seconds=0.5), 30, 0.05,
                                "the health file to show the stopped puller")
        assert code == "backend_wedged" and "puller" in reason, reason
        subscription.release.set()
        wait_for(lambda: _verdict(intake, tmp_path / "health.json", stall_seconds=0.5) is None, 30, 0.01,
                 "the verdict to clear once the puller turns again")
    finally:
        subscription.release.set()
        intake.stop_accepting()
        intake.close()
        intake.journal.close()


def test_a_backend_that_keeps_handing_a_message_back_is_nack_looping(tmp_path):
    """A malformed message and no dead-letter topic in the intake URL: it can only be handed back,
    delivery after delivery (the subscription's policy ends it after 5). Healthy messages are not."""
    subscription = FakeSubscription([("r" + "f" * 32, b"not json", 1)] + _messages(3, 2))
    intake = _intake(tmp_path, subscription)
    consumer = Consumer(intake)
    consumer.store_up.set()
    consumer.start()
    intake.start()
    try:
        code, reason = wait_for(lambda: _verdict(intake, tmp_path / "health.json", nacks_per_minute=3), 30, 0.02,
                                "the health file to show the message handed back again and again")
        assert code == "backend_nack_looping" and "in the last minute" in reason, reason
        wait_for(lambda: len(subscription.acked) == 3 and subscription.dead_lettered == {"m0"}, 30, 0.02,
                 "the healthy messages acknowledged, the other moved by the subscription's policy")
    finally:
        consumer.stop.set()
        intake.stop_accepting()
        intake.close()
        intake.journal.close()
    assert subscription.nacks == {"m0": MAX_DELIVERIES}
