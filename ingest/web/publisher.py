"""The frontend's intake for a fleet: `INGEST_INTAKE=pubsub://PROJECT/TOPIC` publishes to Pub/Sub.

It has the IngestClient's face (`put_many`, `status`), so the API answers the same: `put_many`
returns only once Pub/Sub has acknowledged every message of the request, so a 202 means "Pub/Sub
has it". The client library batches messages of concurrent requests into one publish call and
bounds what is outstanding (flow control: a request waits while the bound is reached). A refusal
(no topic, no permission) is `BackendUnavailable` (503 with Retry-After); a failure that may have
delivered a message is retried as the same message (its group id: counted once) until the
deadline, then `OutcomeUnknown` (504), as is no acknowledgement in time. Honours PUBSUB_EMULATOR_HOST.
One client per process, made after gunicorn's fork (gRPC does not survive a fork).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from typing import Callable

from ..core.forksafe import PerProcess
from ..core.intakeurl import ARTICLES_ATTRIBUTE, GROUP_ATTRIBUTE, parse_intake_url, split_messages, unique_posts
from ..core.protocol import BackendUnavailable, OutcomeUnknown, TooLarge
from ..core.rules import MAX_ARTICLE_CHARS

log = logging.getLogger("ingest.web.publisher")

PUBLISH_TIMEOUT = 30.0       # seconds a request waits for Pub/Sub's acknowledgement before 504 outcome_unknown
MAX_LATENCY = 0.01           # seconds a message may wait for others to share its publish call
MAX_OUTSTANDING_MESSAGES = 1000
MAX_OUTSTANDING_BYTES = 64 * 1024 * 1024

RETRY_FIRST_PAUSE = 0.05  # seconds before the first resend of a message whose publish failed; doubling
RETRY_MAX_PAUSE = 1.0     # ... up to this, until the request's deadline


class _Refused(Exception):
    """The client library would not take the message: nothing was sent."""


def _refusals() -> tuple:
    """Pub/Sub's answers that mean "not published" for certain: retrying the same call cannot help."""
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - google-cloud-pubsub depends on it
        return (_Refused,)
    return (_Refused, gexc.NotFound, gexc.PermissionDenied, gexc.Unauthenticated, gexc.InvalidArgument,
            gexc.FailedPrecondition)


REFUSED = _refusals()


def _new_client():
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    return pubsub_v1.PublisherClient(
        batch_settings=types.BatchSettings(max_messages=100, max_bytes=9 * 1024 * 1024, max_latency=MAX_LATENCY),
        publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
            message_limit=MAX_OUTSTANDING_MESSAGES, byte_limit=MAX_OUTSTANDING_BYTES,
            limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK)))


class PubSubPublisher:
    def __init__(self, url: str, *, max_article_chars: int = MAX_ARTICLE_CHARS, timeout: float = PUBLISH_TIMEOUT,
                 make_client: Callable[[], object] = _new_client):
        self.url = parse_intake_url(url)
        self.max_article_chars = max_article_chars
        self.timeout = timeout
        self._clients = PerProcess(make_client)  # gRPC does not survive a fork: one per process
        self.published = 0
        self.failures = 0

    @property
    def client(self):
        return self._clients.get()

    def put_many(self, posts: list, token: str | None = None) -> dict:
        """All the posts of a request, acknowledged by Pub/Sub: {"accepted": n, "duplicates": m}.

        `duplicates` counts only ids repeated inside this request; a retry of a whole request is
        recognised by the backends' store (the same group id), so it is answered as accepted.
        A message whose publish failed in a way that may have delivered it (a deadline, an
        unavailable or internal error) is published again as the same message — its group id, so a
        backend counts it once — until the deadline; then OutcomeUnknown (504). Only when Pub/Sub
        refused every message outright (no topic, no permission) is it BackendUnavailable (503)."""
        posts, duplicates = unique_posts([tuple(p) for p in posts])
        if any(len(p[1]) > self.max_article_chars for p in posts):
            raise TooLarge(f"an article is longer than {self.max_article_chars:,} characters")
        messages = split_messages(posts)
        give_up = time.monotonic() + self.timeout
        pending = {i: self._publish(m) for i, m in enumerate(messages)}
        delivered, refused, last, attempts = set(), [], None, {}
        while pending:
            done, _ = futures.wait(list(pending.values()), timeout=max(0.0, give_up - time.monotonic()),
                                   return_when=futures.FIRST_COMPLETED)
            if not done:  # still being published (the library keeps trying): it may yet arrive
                self.failures += 1
                raise OutcomeUnknown(f"Pub/Sub did not acknowledge {self.url} within {self.timeout:.0f}s; "
                                     "the messages may still be delivered")
            for i, future in [(i, f) for i, f in pending.items() if f in done]:
                exc = future.exception()
                if exc is None:
                    delivered.add(i)
                    del pending[i]
                elif isinstance(exc, REFUSED):
                    refused.append(exc)
                    del pending[i]
                else:  # it may have been delivered: the same message again (its group id), within the deadline
                    last = exc
                    if time.monotonic() >= give_up:
                        self.failures += 1
                        raise OutcomeUnknown(f"publishing to {self.url} failed ({type(exc).__name__}) and no retry "
                                             f"was acknowledged within {self.timeout:.0f}s") from None
                    attempts[i] = attempts.get(i, 0) + 1
                    pause = min(RETRY_MAX_PAUSE, RETRY_FIRST_PAUSE * 2 ** (attempts[i] - 1))
                    log.warning("publish to %s failed (%s: %s); publishing the same message again in %.2fs",
                                self.url, type(exc).__name__, exc, pause)
                    time.sleep(min(pause, max(0.0, give_up - time.monotonic())))  # a fast failure is no reason to spin
                    pending[i] = self._publish(messages[i])
        if refused:
            self.failures += 1
            if delivered or last is not None:  # some of the request is in Pub/Sub, or may be
                raise OutcomeUnknown(f"Pub/Sub refused part of the request ({type(refused[0]).__name__}) after the "
                                     "rest was published")
            raise BackendUnavailable(f"cannot publish to {self.url}: {type(refused[0]).__name__}: {refused[0]}")
        self.published += len(messages)
        return {"accepted": len(posts), "duplicates": duplicates}

    def _publish(self, message: tuple) -> futures.Future:
        group, data, n = message
        try:
            return self.client.publish(self.url.topic_path, data,
                                       **{GROUP_ATTRIBUTE: group, ARTICLES_ATTRIBUTE: str(n)})
        except Exception as exc:  # the client could not even take it (made, flow control): nothing was sent
            failed: futures.Future = futures.Future()
            failed.set_exception(_Refused(f"{type(exc).__name__}: {exc}"))
            return failed

    def put(self, publication: str, content: str, id: str | None = None) -> dict:
        return self.put_many([(publication, content, id)])

    def status(self) -> dict:
        """What /readyz and /metrics see of this intake: accepting; the backends report elsewhere."""
        return {"state": "accepting", "intake": str(self.url), "depth": 0, "capacity": 0,
                "published_messages": self.published, "publish_failures": self.failures}
