"""The fleet backend's intake: Pub/Sub messages pulled, held, leased, acknowledged, dead-lettered.

PubSubIntake is an Intake (the arbiter drives it the same way): one thread pulls while the bounds
leave room (at most --pubsub-max-messages messages, the article bound, the scratch journal's
bytes; the rest of a backlog waits in Pub/Sub), journals each message's articles with their
publication tagged by its group (`GROUP\\x00name`) and queues them for the workers. Another thread
extends the leases of what is held, acknowledges a message once the hub reports its group
committed (`committed`), hands back what is not committed at the end (`close`), and publishes a
message one of whose articles killed workers twice (`kill`) to the dead-letter topic
(`?dead_letter=TOPIC`; without one it is handed back, and the subscription's own policy moves it).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from datetime import timezone
from dataclasses import dataclass, field

from ...core.intakeurl import (ARTICLES_ATTRIBUTE, GROUP_ATTRIBUTE, decode, encode, is_group, parse_intake_url,
                               tag, untag)
from ...core.protocol import QueueFull
from ..errors import BootError
from ..intake import Intake
from ..journal import Entry, Journal
from .deadletters import DeadLetterCount

log = logging.getLogger("ingest.pubsub")

PULL_TIMEOUT = 2.0        # seconds one pull waits for messages (a drain waits at most this long for the puller)
PULL_BATCH = 500          # messages asked for per pull
ACK_CHUNK = 1000          # ack ids per acknowledge / modifyAckDeadline request (its limit: 512 KB)
ACK_EVERY = 0.05          # seconds acknowledgements of committed batches may wait to share one request
DONE_MEMORY = 100_000     # committed group ids remembered, so a redelivery of one is acknowledged at once


@dataclass(slots=True)
class Group:
    """One held message: its articles in the journal, the ack ids it was delivered with, its counts so far."""

    id: str
    ack_ids: list
    seqs: list
    total: int
    attributes: dict
    publications: list = field(default_factory=list)  # as sent, in the order of seqs (for a dead letter)
    flushed: int = 0
    aggregates: dict = field(default_factory=dict)   # publication key -> Aggregate (untagged)
    batched: bool = False
    dead: bool = False
    why: str = "killed workers"                      # the reason a dead letter carries


@dataclass(slots=True)
class Waiting:
    """A pulled message the journal has no room for yet: held, its lease extended, never handed back."""

    group: str
    message: object
    posts: list
    ack_ids: list

    @property
    def articles(self) -> int:
        return len(self.posts)


class PubSubIntake(Intake):
    """The intake of a fleet backend: messages pulled from a subscription, held until committed."""

    def __init__(self, journal: Journal, settings, on_put=None):
        super().__init__(journal, settings.queue_size, on_put=on_put,
                         max_article_chars=settings.max_article_chars)
        self.url = parse_intake_url(settings.intake)
        self.max_messages = settings.pubsub_max_messages
        self.deadline = settings.pubsub_ack_deadline
        self.groups: dict[str, Group] = {}
        self.done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.glock = threading.Lock()              # guards groups, done and the queues below
        self._acks: list[str] = []
        self._nacks: list[str] = []
        self._dead: list[tuple[Group, bytes]] = []
        self.waiting: collections.deque[Waiting] = collections.deque()  # pulled, not yet journaled
        self.waiting_by_group: dict[str, Waiting] = {}
        self.messages_seen = self.articles_seen = 0  # for the size of the next pull
        self._wake_acker = threading.Event()
        self._stop_pulling = threading.Event()
        self._closing = threading.Event()
        self._subscriber = None
        self._publisher = None
        self._puller: threading.Thread | None = None
        self._acker: threading.Thread | None = None
        self.counts = collections.Counter()        # pulled, acked, nacked, redelivered, dead_lettered, errors
        self.dead_letters = DeadLetterCount(self.url)  # the dead-letter backlog, counted every 60 s
        self.heartbeat = time.monotonic()          # the pull loop's last turn (backend/health.py reports its age)
        self._last_error_log = 0.0

    # -- the Google clients, made in this process --------------------------------------
    @property
    def subscriber(self):
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def start(self) -> None:
        """Begin pulling (after the arbiter recovered and spawned its children)."""
        try:
            self.subscriber.get_subscription(request={"subscription": self.url.subscription_path}, timeout=30)
        except Exception as exc:  # no such subscription, no permission, nothing listening: a boot error
            raise BootError(f"cannot read the subscription {self.url.subscription_path}: {type(exc).__name__}: "
                            f"{exc}") from None
        self._puller = threading.Thread(target=self._pull_loop, name="pubsub-pull", daemon=True)
        self._acker = threading.Thread(target=self._ack_loop, name="pubsub-ack", daemon=True)
        self._puller.start()
        self._acker.start()
        self.dead_letters.start(self.subscriber)
        log.info("pulling from %s: at most %d messages held, leases of %ds", self.url.subscription_path,
                 self.max_messages, self.deadline)

    # -- the frontend's path is not this backend's -------------------------------------
    def put_many(self, posts: list, token: str | None = None) -> dict:
        raise RuntimeError(f"this backend takes its articles from Pub/Sub ({self.url}); "
                           "point the frontend at the topic with INGEST_INTAKE")

    # -- pulling -----------------------------------------------------------------------
    def held_articles(self) -> int:
        """Every article this backend holds for Pub/Sub: queued, in workers, waiting for the store,
        and pulled but not yet journaled. Only a commit (or a dead letter) lowers it."""
        with self.glock:
            return sum(g.total for g in self.groups.values()) + sum(w.articles for w in self.waiting)

    def _pull_size(self) -> int:
        """Messages to ask for: what the message bound, the article bound and the journal's bytes
        leave room for, estimating a message's articles from those seen so far."""
        with self.glock:
            if self.waiting:
                return 0
            messages = self.max_messages - len(self.groups)
        stats = self.journal.stats()
        if stats["journal_bytes"] >= 0.9 * stats["journal_capacity_bytes"]:
            return 0
        held = self.held_articles()
        articles = self.capacity - held
        if articles <= 0:
            return 0
        if not self.messages_seen:
            return 1  # a first message tells the size of the next ones (its `articles`)
        per_message = max(1.0, self.articles_seen / self.messages_seen)
        return max(0, min(PULL_BATCH, messages, max(1, int(articles // per_message))))

    def _pull_loop(self) -> None:
        from google.api_core import exceptions as gexc

        path = self.url.subscription_path
        while not self._stop_pulling.is_set():
            self.heartbeat = time.monotonic()
            if not self._admit():
                self._stop_pulling.wait(0.05)
                continue
            size = self._pull_size()
            if size <= 0:
                self._stop_pulling.wait(0.05)
                continue
            try:
                response = self.subscriber.pull(request={"subscription": path, "max_messages": size},
                                                timeout=PULL_TIMEOUT, retry=None)
            except (gexc.DeadlineExceeded, gexc.RetryError):
                continue
            except Exception as exc:  # unavailable, permission, a deleted subscription: say so, keep trying
                self._error("pull", exc)
                self._stop_pulling.wait(1.0)
                continue
            received = list(response.received_messages)
            if not received:
                continue
            if self._stop_pulling.is_set():  # pulled while the drain began: hand them straight back
                self._nack([m.ack_id for m in received])
                break
            self._appending += 1
            try:
                self._sort(received)
                self._admit()
            finally:
                self._appending -= 1

    def _sort(self, received) -> None:
        """Extend the new messages' leases; acknowledge or attach redeliveries; dead-letter what is
        not ours; the rest wait (held, their leases extended) until the journal has room for them."""
        self.counts["pulled"] += len(received)
        self._extend([m.ack_id for m in received])
        fresh, ack_now = [], []
        with self.glock:
            for m in received:
                gid = m.message.attributes.get(GROUP_ATTRIBUTE, "")
                held = self.groups.get(gid) or self.waiting_by_group.get(gid)
                if held is not None:             # delivered again while we hold it: acknowledged with it
                    held.ack_ids.append(m.ack_id)
                    self.counts["redelivered"] += 1
                elif gid in self.done:           # committed by us already: its ack was lost
                    ack_now.append(m.ack_id)
                    self.counts["redelivered"] += 1
                else:
                    try:
                        if not is_group(gid):
                            raise ValueError(f"no valid {GROUP_ATTRIBUTE!r} attribute")
                        posts = decode(m.message.data, self.max_article_chars)
                    except ValueError as exc:
                        fresh.append((m, exc))
                        continue
                    waiting = Waiting(gid, m, posts, [m.ack_id])
                    self.waiting.append(waiting)
                    self.waiting_by_group[gid] = waiting
                    self.messages_seen += 1
                    self.articles_seen += len(posts)
        self._ack(ack_now)
        for m, exc in fresh:
            why = str(exc) if str(exc).startswith("not an ingest message") else f"not an ingest message: {exc}"
            log.error("message %s dead-lettered: %s", m.message.message_id, why)
            gid = m.message.attributes.get(GROUP_ATTRIBUTE, "")
            self._dead_letter(Group(gid or m.message.message_id, [m.ack_id], [], 0, dict(m.message.attributes),
                                    why=why), bytes(m.message.data))

    def _admit(self) -> bool:
        """Journal (one commit) the waiting messages that fit, oldest first, and queue them for the
        workers. A message is never handed back for want of room here: it waits, its lease extended.
        True when none is left waiting."""
        with self.glock:
            held = sum(g.total for g in self.groups.values())
            admitted = []
            for waiting in self.waiting:
                if held and held + waiting.articles > self.capacity:
                    break
                held += waiting.articles
                admitted.append(waiting)
        if not admitted:
            return not self.waiting
        try:
            self._journal(admitted)
        except QueueFull as exc:  # the scratch journal's bytes or its disk: they wait, their leases extended
            self._error("journal", exc)
            return False
        except ValueError as exc:  # the journal cannot keep one of them: each alone, the one it refuses dead-lettered
            if len(admitted) == 1:
                self._refuse(admitted[0], exc)
            else:
                for waiting in admitted:
                    try:
                        self._journal([waiting])
                    except QueueFull as full:
                        self._error("journal", full)
                        return False
                    except ValueError as alone:
                        self._refuse(waiting, alone)
        return not self.waiting

    def _journal(self, admitted: list) -> None:
        """Journal the messages in one commit (QueueFull, ValueError: none of them) and queue their articles."""
        items = [(tag(w.group, p[0]), p[1], None, (p[3] if len(p) > 3 else None) or _published_day(w))
                 for w in admitted for p in w.posts]
        result = self.journal.append(items)
        entries = iter(result["entries"])
        queued = []
        with self.glock:
            for w in admitted:
                self.waiting.remove(w)
                del self.waiting_by_group[w.group]
                mine = [Entry(seq, pub, size) for seq, pub, size in (next(entries) for _ in w.posts)]
                self.groups[w.group] = Group(w.group, w.ack_ids, [e.seq for e in mine], len(mine),
                                             dict(w.message.message.attributes), [p[0] for p in w.posts])
                queued.extend(mine)
        with self._lock:
            self._items.extend(queued)
            self.accepted += len(queued)
        self._on_put()

    def _refuse(self, waiting, exc: Exception) -> None:
        """A message the journal cannot keep is malformed for this backend: dead-lettered at once."""
        with self.glock:
            self.waiting.remove(waiting)
            self.waiting_by_group.pop(waiting.group, None)
        m = waiting.message
        why = f"not an ingest message: the journal cannot keep it ({exc})"
        log.error("message %s dead-lettered: %s", m.message.message_id, why)
        self._dead_letter(Group(waiting.group, waiting.ack_ids, [], 0, dict(m.message.attributes), why=why),
                          bytes(m.message.data))

    # -- what the hub reports back ---------------------------------------------------------
    def committed(self, gid: str) -> None:
        """The store committed the group's batch: acknowledge every delivery of its message."""
        with self.glock:
            group = self.groups.pop(gid, None)
            self.done[gid] = None
            while len(self.done) > DONE_MEMORY:
                self.done.popitem(last=False)
        if group is not None:
            self._ack(group.ack_ids)

    def kill(self, group: Group, posts: list[tuple]) -> None:
        """A message one of whose articles killed workers twice: dead-letter it whole."""
        with self.glock:
            self.groups.pop(group.id, None)
        with self._lock:
            self._items = collections.deque(e for e in self._items if untag(e.publication)[0] != group.id)
        self.journal.discard(group.seqs)  # its articles leave the bounds now, not at the next start
        self._dead_letter(group, encode(posts))

    def take(self, n: int, max_bytes: int | None = None) -> list[Entry]:
        taken = super().take(n, max_bytes)
        with self.glock:
            return [e for e in taken if untag(e.publication)[0] in self.groups]  # a dead group's: dropped

    def contents(self, entries: list[Entry]) -> list[tuple]:
        """As the journal has them (publication, text, None, day); an article of a group dead-lettered
        meanwhile reads as a blank."""
        texts = self.journal.texts_and_days([e.seq for e in entries])
        out = []
        for e in entries:
            text, day = texts.get(e.seq, (" ", None))
            out.append((e.publication, text, None, day))
        return out

    # -- acknowledgements, leases, dead letters: one thread ------------------------------------
    def _ack(self, ack_ids: list[str]) -> None:
        if ack_ids:
            with self.glock:
                self._acks.extend(ack_ids)
            self._wake_acker.set()

    def _nack(self, ack_ids: list[str]) -> None:
        if ack_ids:
            with self.glock:
                self._nacks.extend(ack_ids)
            self._wake_acker.set()

    def _dead_letter(self, group: Group, data: bytes) -> None:
        with self.glock:
            self._dead.append((group, data))
        self._wake_acker.set()

    def _ack_loop(self) -> None:
        next_lease = time.monotonic() + self.deadline / 3
        while True:
            self._wake_acker.wait(timeout=1.0)
            closing = self._closing.is_set()
            if not closing:
                time.sleep(ACK_EVERY)  # let the acknowledgements of a few commits share a request
            self._wake_acker.clear()
            self._send_pending()
            if time.monotonic() >= next_lease:
                next_lease = time.monotonic() + self.deadline / 3
                with self.glock:
                    held = [a for g in [*self.groups.values(), *self.waiting] for a in g.ack_ids]
                self._extend(held)
            if closing:
                return

    def _send_pending(self) -> None:
        with self.glock:
            acks, self._acks = self._acks, []
            nacks, self._nacks = self._nacks, []
            dead, self._dead = self._dead, []
        for group, data in dead:
            if self._publish_dead_letter(group, data):
                acks.extend(group.ack_ids)
            else:
                nacks.extend(group.ack_ids)
        self._call("acknowledge", acks, "acked")
        self._call("modify_ack_deadline", nacks, "nacked", ack_deadline_seconds=0)

    def _extend(self, ack_ids: list[str]) -> None:
        self._call("modify_ack_deadline", ack_ids, None, ack_deadline_seconds=self.deadline)

    def _call(self, method: str, ack_ids: list[str], counter: str | None, **extra) -> None:
        for start in range(0, len(ack_ids), ACK_CHUNK):
            chunk = ack_ids[start:start + ACK_CHUNK]
            try:
                getattr(self.subscriber, method)(request={"subscription": self.url.subscription_path,
                                                          "ack_ids": chunk, **extra}, timeout=30)
            except Exception as exc:  # a lost ack is a redelivery, which the store's batch marker absorbs
                self._error(method, exc)
                continue
            if counter:
                self.counts[counter] += len(chunk)

    def _publish_dead_letter(self, group: Group, data: bytes) -> bool:
        topic = self.url.option("dead_letter")
        if not topic:
            log.error("message group=%s: no dead_letter topic in --intake; handed back to Pub/Sub (its "
                      "subscription's dead-letter policy moves it after the maximum delivery attempts)", group.id)
            return False
        try:
            if self._publisher is None:
                from google.cloud import pubsub_v1

                self._publisher = pubsub_v1.PublisherClient()
            attributes = {k: v for k, v in group.attributes.items()}
            attributes.update({"dead_lettered_by": "ingestiond", "reason": group.why[:1000]})
            self._publisher.publish(f"projects/{self.url.project}/topics/{topic}", data,
                                    **attributes).result(timeout=30)
        except Exception as exc:
            self._error("dead-letter publish", exc)
            return False
        self.counts["dead_lettered"] += 1
        log.error("message group=%s (%s articles) published to the dead-letter topic %s and acknowledged",
                  group.id, group.attributes.get(ARTICLES_ATTRIBUTE, group.total), topic)
        return True

    def _error(self, what: str, exc: Exception) -> None:
        self.counts["errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log > 10:  # one line per 10 s: an outage must not flood the log
            self._last_error_log = now
            log.warning("pubsub %s failed: %s: %s", what, type(exc).__name__, exc)

    # -- the arbiter's side ----------------------------------------------------------------
    def stop_accepting(self) -> None:
        super().stop_accepting()
        self._stop_pulling.set()

    def busy(self) -> bool:
        return self._appending > 0 or (self._puller is not None and self._puller.is_alive())

    def close(self) -> int:
        """The last step of every exit: acknowledge what is committed, hand back what is not. Returns the latter."""
        self._stop_pulling.set()
        if self._puller is not None:
            self._puller.join(PULL_TIMEOUT + 5)
        with self.glock:
            unfinished = [a for g in [*self.groups.values(), *self.waiting] for a in g.ack_ids]
            articles = sum(g.total for g in self.groups.values()) + sum(w.articles for w in self.waiting)
            self.groups.clear()
            self.waiting.clear()
            self.waiting_by_group.clear()
        self._nack(unfinished)
        self.dead_letters.stop()
        if self._acker is not None:
            self._closing.set()
            self._wake_acker.set()
            self._acker.join(60)
        elif self._subscriber is not None:
            self._send_pending()
        for client in (self._subscriber, self._publisher):
            try:
                if client is not None and hasattr(client, "close"):
                    client.close()
            except Exception:  # closing must not mask the exit code
                log.debug("closing a Pub/Sub client failed", exc_info=True)
        if unfinished:
            log.warning("%d messages (%d articles) not committed: handed back to Pub/Sub for any backend",
                        len(unfinished), articles)
        return articles

    def status(self) -> dict:
        status = super().status()
        with self.glock:
            status["pubsub_held_messages"] = len(self.groups) + len(self.waiting)
            status["pubsub_waiting_messages"] = len(self.waiting)
        for name in ("pulled", "acked", "nacked", "redelivered", "dead_lettered", "errors"):
            status[f"pubsub_{name}"] = self.counts[name]
        status.update(self.dead_letters.status())
        pulling = self._puller is not None and self._puller.is_alive() and not self._stop_pulling.is_set()
        status["pubsub_puller_seconds"] = round(time.monotonic() - self.heartbeat, 1) if pulling else None
        status["intake"] = str(self.url)
        return status


def _published_day(waiting) -> str | None:
    """A post without a day (a publisher other than our frontend) counts on the UTC day Pub/Sub accepted
    its message: the same on every redelivery, to whichever backend."""
    published = getattr(waiting.message.message, "publish_time", None)
    try:
        return published.astimezone(timezone.utc).date().isoformat() if published else None
    except (AttributeError, ValueError, TypeError):
        return None
