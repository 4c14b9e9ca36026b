"""`ingestiond dead-letters list|replay`: what a fleet's dead-letter topic holds, listed or sent back.

A message lands on the dead-letter topic when a backend dead-letters it (one of its articles
killed workers twice, or it is not an ingest message) or when the subscription's own policy does
(it was delivered 100 times without an acknowledgement: it kills backends). The topic's
subscription (deploy/fleet.sh: NAME-dead-keep) keeps it 7 days; then it is gone. `list` pulls
them without acknowledging and hands each back. `replay` publishes each chosen one to the main
topic with its group id and attributes, and acknowledges it on the dead-letter subscription only
once Pub/Sub has the copy: the group id is the id of the store batch that counts it, so a message
replayed twice (or replayed after it was counted after all) is counted once.
`DeadLetterCount` counts the backlog for a backend's status every 60 s (`waiting`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field

from ...core.exitcodes import ExitCode
from ...core.intakeurl import (ARTICLES_ATTRIBUTE, GROUP_ATTRIBUTE, IntakeURL, IntakeURLError, decode, is_group,
                               parse_intake_url)

log = logging.getLogger("ingest.pubsub")

PROG = "ingestiond dead-letters"
KEEP_SUFFIX = "-keep"       # the dead-letter topic's subscription: TOPIC-keep unless named (deploy/fleet.sh)
PULL_SIZE = 100             # messages asked for per pull (a dead letter may be 8 MB: a bounded batch in memory)
PULL_TIMEOUT = 3.0          # seconds a pull waits; an empty pull ends a sweep
LEASE = 600                 # seconds a listed or replayed message is held (the maximum) until acked or handed back
COUNT_LEASE = 30            # seconds a counted one is: a backend killed mid-count hides them this long at most
CALL_TIMEOUT = 30.0         # seconds any other call may take
PUBLISH_TIMEOUT = 60.0      # seconds a replay waits for Pub/Sub to acknowledge the copy
COUNT_EVERY = 60.0          # seconds between two counts of the backlog in a backend
COUNT_LIMIT = 10_000        # a count stops here (the gauge then reads "at least this many")
# Pub/Sub's own dead-lettering adds these; ingestiond's adds the last two. A replay leaves them out.
SOURCE_ATTEMPTS = "CloudPubSubDeadLetterSourceDeliveryCount"
SOURCE_PUBLISHED = "CloudPubSubDeadLetterSourceTopicPublishTime"
DEAD_LETTER_ATTRIBUTES = ("CloudPubSubDeadLetter", "dead_lettered_by", "reason")


class DeadLetterError(Exception):
    """Why the dead letters cannot be reached, in one line."""


@dataclass(frozen=True)
class Place:
    """Where a fleet's messages and dead letters are (full resource paths)."""

    subscription: str
    topic: str
    dead_letter_topic: str
    dead_letter_subscription: str


@dataclass
class Letter:
    """One message on the dead-letter subscription, as pulled."""

    message_id: str
    data: bytes
    attributes: dict
    publish_time: str
    delivery_attempt: int = 0
    problem: str | None = None        # why it is not an ingest message, if it is not
    publications: list = field(default_factory=list)
    posts: int | None = None          # articles in it, when it is an ingest message

    @classmethod
    def of(cls, received) -> Letter:
        m = received.message
        stamp = m.publish_time.isoformat(timespec="seconds") if m.publish_time else ""
        letter = cls(m.message_id, bytes(m.data), dict(m.attributes), stamp, received.delivery_attempt)
        try:
            if not is_group(letter.group):
                raise ValueError(f"no valid {GROUP_ATTRIBUTE!r} attribute")
            posts = decode(letter.data)
        except ValueError as exc:
            letter.problem = str(exc)
        else:
            letter.publications = list(dict.fromkeys(p[0] for p in posts))
            letter.posts = len(posts)
        return letter

    @property
    def group(self) -> str:
        return self.attributes.get(GROUP_ATTRIBUTE, "")

    @property
    def articles(self) -> str:
        return str(self.posts) if self.posts is not None else self.attributes.get(ARTICLES_ATTRIBUTE, "?")

    @property
    def attempts(self) -> str:
        """Deliveries before it was dead-lettered (Pub/Sub's policy says; ingestiond's own does not)."""
        return self.attributes.get(SOURCE_ATTEMPTS) or (str(self.delivery_attempt) if self.delivery_attempt else "-")

    @property
    def reason(self) -> str:
        return self.attributes.get("reason") or self.problem or (
            "delivered without an acknowledgement (the subscription's policy)" if SOURCE_ATTEMPTS in self.attributes
            else "")

    @property
    def published(self) -> str:
        """When the frontend published it (Pub/Sub's dead-lettering keeps that), else when it was dead-lettered."""
        return self.attributes.get(SOURCE_PUBLISHED) or self.publish_time

    def replay_attributes(self) -> dict:
        return {k: v for k, v in self.attributes.items() if not k.startswith(DEAD_LETTER_ATTRIBUTES)}

    def row(self) -> dict:
        return {"group": self.group or None, "message_id": self.message_id, "publications": self.publications,
                "articles": self.articles, "delivery_attempts": self.attempts, "reason": self.reason or None,
                "published": self.published}

    def line(self) -> str:
        names = [" ".join(p.split()) for p in self.publications]  # one line, whatever a name holds
        pubs = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
        text = (f"{self.group or '(no group) ' + self.message_id}\t{pubs or '?'}\t{self.articles} articles\t"
                f"{self.attempts} delivery attempts\tpublished {self.published}")
        return text + (f"\t{self.reason}" if self.reason else "")


# -- where things are, and Pub/Sub's errors in one line ----------------------------------------------

def explain(exc: Exception, what: str) -> DeadLetterError:
    """A Google API error as one line an operator can act on."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError)):
        host = os.environ.get("PUBSUB_EMULATOR_HOST")
        where = f"the Pub/Sub emulator at {host} (PUBSUB_EMULATOR_HOST)" if host else "Pub/Sub"
        return DeadLetterError(f"{what}: {where} did not answer ({type(exc).__name__})")
    first = str(getattr(exc, "message", "") or exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DeadLetterError(f"{what}: {type(exc).__name__}: {first}")


def locate(subscriber, url: IntakeURL, dead_letter_subscription: str | None = None) -> Place:
    """The main topic (the subscription's), the dead-letter topic (`?dead_letter=`, else the
    subscription's dead-letter policy) and its subscription (named, else TOPIC-keep), checked."""
    from google.api_core import exceptions as gexc

    try:
        main = subscriber.get_subscription(request={"subscription": url.subscription_path}, timeout=CALL_TIMEOUT,
                                           retry=None)
    except gexc.NotFound:
        raise DeadLetterError(f"no subscription {url.subscription_path} (the backends' --intake)") from None
    except Exception as exc:
        raise explain(exc, f"cannot read {url.subscription_path}") from None
    topic = url.option("dead_letter")
    dead_topic = f"projects/{url.project}/topics/{topic}" if topic else main.dead_letter_policy.dead_letter_topic
    if not dead_topic:
        raise DeadLetterError(f"{url.subscription_path} has no dead-letter topic: give it in the URL "
                              f"(pubsub://{url.project}/{url.name}?dead_letter=TOPIC)")
    name = dead_letter_subscription or dead_topic.rsplit("/", 1)[1] + KEEP_SUFFIX
    path = name if name.startswith("projects/") else f"projects/{url.project}/subscriptions/{name}"
    try:
        dead = subscriber.get_subscription(request={"subscription": path}, timeout=CALL_TIMEOUT, retry=None)
    except gexc.NotFound:
        raise DeadLetterError(f"no subscription {path} on the dead-letter topic {dead_topic}: what lands there "
                              f"is lost; create it (gcloud pubsub subscriptions create {path.rsplit('/', 1)[1]} "
                              f"--topic={dead_topic.rsplit('/', 1)[1]} --message-retention-duration=7d) or name "
                              "another with --dead-letter-subscription") from None
    except Exception as exc:
        raise explain(exc, f"cannot read {path}") from None
    if dead.topic != dead_topic:
        raise DeadLetterError(f"{path} is a subscription of {dead.topic}, not of the dead-letter topic {dead_topic}")
    return Place(url.subscription_path, main.topic, dead_topic, path)


# -- a sweep of the dead-letter subscription ---------------------------------------------------------

class Sweep:
    """Pulls the dead-letter subscription until it is empty (or `limit`), holding what it pulled
    (leases of LEASE s) until it acknowledges it or hands it back. A redelivery of a message it holds
    rides with the first. It keeps ids, not messages: memory follows one pull, not the backlog."""

    def __init__(self, subscriber, path: str, limit: int, pull_timeout: float = PULL_TIMEOUT, lease: int = LEASE):
        self.subscriber, self.path, self.limit, self.pull_timeout = subscriber, path, limit, pull_timeout
        self.lease = lease
        self.seen: dict[str, list] = {}  # message id -> every ack id it came with
        self.held: set[str] = set()     # ack ids pulled and not acknowledged: handed back at the end
        self.done: set[str] = set()     # message ids acknowledged (replayed)

    def batches(self):
        """Lists of the messages (ReceivedMessage) not seen before, as pulled."""
        from google.api_core import exceptions as gexc

        while len(self.seen) < self.limit:
            try:
                response = self.subscriber.pull(
                    request={"subscription": self.path, "max_messages": min(PULL_SIZE, self.limit - len(self.seen))},
                    timeout=self.pull_timeout, retry=None)
            except gexc.DeadlineExceeded:
                return
            except Exception as exc:
                raise explain(exc, f"cannot pull from {self.path}") from None
            received = list(response.received_messages)
            if not received:
                return
            self.held.update(m.ack_id for m in received)
            self._call("modify_ack_deadline", [m.ack_id for m in received], ack_deadline_seconds=self.lease)
            fresh = []
            for m in received:
                earlier = self.seen.get(m.message.message_id)
                if earlier is None:
                    self.seen[m.message.message_id] = [m.ack_id]
                    fresh.append(m)
                elif m.message.message_id in self.done:
                    self._acknowledge([m.ack_id])
                else:
                    earlier.append(m.ack_id)
            yield fresh

    def acknowledge(self, message_id: str) -> None:
        """Every delivery of this message, and of any later one: it is settled."""
        self._acknowledge(self.seen[message_id])
        self.done.add(message_id)

    def _acknowledge(self, ack_ids: list[str]) -> None:
        self._call("acknowledge", ack_ids)
        self.held.difference_update(ack_ids)

    def hand_back(self) -> None:
        """Every letter held and not acknowledged, redeliverable at once."""
        held, self.held = sorted(self.held), set()
        self._call("modify_ack_deadline", held, ack_deadline_seconds=0)

    def _call(self, method: str, ack_ids: list[str], **extra) -> None:
        for start in range(0, len(ack_ids), 1000):
            try:
                getattr(self.subscriber, method)(request={"subscription": self.path,
                                                          "ack_ids": ack_ids[start:start + 1000], **extra},
                                                 timeout=CALL_TIMEOUT)
            except Exception as exc:  # a lease lost or a hand-back missed: the lease runs out, nothing is lost
                raise explain(exc, f"{method} on {self.path}") from None


def waiting(subscriber, path: str, limit: int = COUNT_LIMIT, pull_timeout: float = 1.0) -> int:
    """Messages waiting on the dead-letter subscription `path` (at most `limit`): pulled without
    acknowledgement, counted, handed back at once."""
    sweep = Sweep(subscriber, path, limit, pull_timeout, COUNT_LEASE)
    try:
        for _ in sweep.batches():
            pass
    finally:
        sweep.hand_back()
    return len(sweep.seen)


class DeadLetterCount:
    """A backend's count of the dead-letter backlog (`pubsub_dead_letters_waiting` in its status),
    refreshed every COUNT_EVERY seconds by a thread of its own; absent until first counted."""

    def __init__(self, url: IntakeURL, every: float = COUNT_EVERY):
        self.url, self.every = url, every
        self.value: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._said = ""

    def start(self, subscriber) -> None:
        self._thread = threading.Thread(target=self._run, args=(subscriber,), name="pubsub-dead-letters", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop counting; a count under way is not waited for long (a drain must not wait on a gauge)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def status(self) -> dict:
        return {} if self.value is None else {"pubsub_dead_letters_waiting": self.value}

    def _run(self, subscriber) -> None:
        path = None
        while not self._stop.is_set():
            try:
                path = path or locate(subscriber, self.url).dead_letter_subscription
                self.value = waiting(subscriber, path)
                if self.value and self._said != "waiting":
                    log.warning("%d messages wait on the dead-letter subscription %s (`ingestiond dead-letters list`)",
                                self.value, path)
                self._said = "waiting" if self.value else ""
            except Exception as exc:  # a gauge never stops the backend: say why, once per distinct problem
                why = str(exc) if isinstance(exc, DeadLetterError) else f"{type(exc).__name__}: {exc}"
                if why != self._said:
                    log.warning("dead letters not counted: %s", why)
                    self._said = why
            self._stop.wait(self.every)


# -- the command --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--intake", default=os.environ.get("INGEST_INTAKE"),
                        help="the backends' pubsub://PROJECT/SUBSCRIPTION[?dead_letter=TOPIC] "
                             "(default: INGEST_INTAKE)")
    common.add_argument("--dead-letter-subscription", metavar="NAME",
                        help="the dead-letter topic's subscription (default: TOPIC-keep, as deploy/fleet.sh makes it)")
    common.add_argument("--limit", type=int, default=COUNT_LIMIT,
                        help=f"messages swept at most (default {COUNT_LIMIT})")
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("list", parents=[common], help="one line per dead letter (group, publications, articles, "
                                                         "delivery attempts, publish time, why); none is acknowledged")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    again = sub.add_parser("replay", parents=[common], help="publish dead letters to the main topic (same group id: "
                                                            "counted once), then acknowledge them here")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--group", action="append", metavar="ID", help="a group id from `list` (repeatable)")
    which.add_argument("--all", action="store_true", help="every ingest message waiting")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.intake:
        print(f"{PROG}: error: give --intake pubsub://PROJECT/SUBSCRIPTION (or set INGEST_INTAKE)", file=sys.stderr)
        return ExitCode.USAGE
    if args.limit < 1:
        print(f"{PROG}: error: --limit must be at least 1", file=sys.stderr)
        return ExitCode.USAGE
    try:
        url = parse_intake_url(args.intake)
    except IntakeURLError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    try:
        place = locate(subscriber, url, args.dead_letter_subscription)
        sweep = Sweep(subscriber, place.dead_letter_subscription, args.limit)
        try:
            return show(sweep, args) if args.action == "list" else replay(sweep, place, args)
        finally:
            sweep.hand_back()
    except DeadLetterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    finally:
        subscriber.close()


def show(sweep: Sweep, args) -> int:
    count = articles = 0
    for received in sweep.batches():
        for letter in map(Letter.of, received):
            print(json.dumps(letter.row()) if args.json else letter.line(), flush=True)
            count += 1
            articles += int(letter.articles) if letter.articles.isdigit() else 0
    more = " (--limit reached: there may be more)" if count >= args.limit else ""
    print(f"{count} dead letters ({articles} articles) on {sweep.path}{more}; none acknowledged", file=sys.stderr)
    return ExitCode.OK


def replay(sweep: Sweep, place: Place, args) -> int:
    """Each chosen letter published to the main topic, then acknowledged; the others handed back."""
    from google.cloud import pubsub_v1

    wanted, found = set(args.group or ()), set()
    publisher = pubsub_v1.PublisherClient()
    replayed, failed, skipped = 0, 0, 0
    try:
        for received in sweep.batches():
            for letter in map(Letter.of, received):
                if not args.all and letter.group not in wanted:
                    continue
                found.add(letter.group)
                if letter.problem:
                    skipped += 1
                    print(f"{letter.group or letter.message_id}: not an ingest message ({letter.problem}): "
                          "left on the dead-letter subscription", file=sys.stderr)
                    continue
                if publish(publisher, place.topic, letter):
                    sweep.acknowledge(letter.message_id)
                    replayed += 1
                    print(f"{letter.group}: replayed to {place.topic} ({letter.articles} articles)", flush=True)
                else:
                    failed += 1
    finally:
        publisher.stop()
    missing = sorted(wanted - found)
    for group in missing:
        print(f"{group}: not on {sweep.path} (`{PROG} list` shows what is)", file=sys.stderr)
    print(f"{replayed} dead letters replayed, {failed} failed, {skipped} not ingest messages, "
          f"{len(missing)} not found", file=sys.stderr)
    return ExitCode.OK if not (failed or skipped or missing) else ExitCode.UNFINISHED


def publish(publisher, topic: str, letter: Letter) -> bool:
    """True once Pub/Sub has the copy. A failure leaves the letter where it is: replaying it again is
    harmless (its group id), so an unknown outcome is simply a failure here."""
    try:
        publisher.publish(topic, letter.data, **letter.replay_attributes()).result(timeout=PUBLISH_TIMEOUT)
    except Exception as exc:
        print(f"{letter.group}: {explain(exc, 'publish failed')}; left on the dead-letter subscription",
              file=sys.stderr)
        return False
    return True

