"""The frontend's intake for a fleet: `INGEST_INTAKE=pubsub://PROJECT/TOPIC` publishes to Pub/Sub.

It has the IngestClient's face (`put_many`, `status`), so the API answers the same: `put_many`
returns only once Pub/Sub has acknowledged every message of the request, so a 202 means "Pub/Sub
has it". The client library batches messages of concurrent requests into one publish call and
bounds what is outstanding (flow control: a request waits while the bound is reached). Any
failure to publish is `BackendUnavailable` (503 with Retry-After); no acknowledgement within the
timeout is `OutcomeUnknown` (504): the library may still deliver the messages. Honours PUBSUB_EMULATOR_HOST.
One client per process, made after gunicorn's fork (gRPC does not survive a fork).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures

from ..core.intakeurl import ARTICLES_ATTRIBUTE, GROUP_ATTRIBUTE, parse_intake_url, split_messages, unique_posts
from ..core.protocol import BackendUnavailable, OutcomeUnknown, TooLarge

log = logging.getLogger("ingest.web.publisher")

PUBLISH_TIMEOUT = 30.0       # seconds a request waits for Pub/Sub's acknowledgement before 504 outcome_unknown
MAX_LATENCY = 0.01           # seconds a message may wait for others to share its publish call
MAX_OUTSTANDING_MESSAGES = 1000
MAX_OUTSTANDING_BYTES = 64 * 1024 * 1024


class PubSubPublisher:
    def __init__(self, url: str, *, max_article_chars: int = 200_000, timeout: float = PUBLISH_TIMEOUT):
        self.url = parse_intake_url(url)
        self.max_article_chars = max_article_chars
        self.timeout = timeout
        self._client = None
        self._pid = None
        self._lock = threading.Lock()
        self.published = 0
        self.failures = 0

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    from google.cloud import pubsub_v1
                    from google.cloud.pubsub_v1 import types

                    self._client = pubsub_v1.PublisherClient(
                        batch_settings=types.BatchSettings(max_messages=100, max_bytes=9 * 1024 * 1024,
                                                           max_latency=MAX_LATENCY),
                        publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
                            message_limit=MAX_OUTSTANDING_MESSAGES, byte_limit=MAX_OUTSTANDING_BYTES,
                            limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK)))
                    self._pid = os.getpid()
        return self._client

    def put_many(self, posts: list, token: str | None = None) -> dict:
        """All the posts of a request, acknowledged by Pub/Sub: {"accepted": n, "duplicates": m}.

        `duplicates` counts only ids repeated inside this request; a retry of a whole request is
        recognised by the backends' store (the same group id), so it is answered as accepted."""
        posts, duplicates = unique_posts([tuple(p) for p in posts])
        if any(len(p[1]) > self.max_article_chars for p in posts):
            raise TooLarge(f"an article is longer than {self.max_article_chars:,} characters")
        try:
            client = self.client
            pending = [client.publish(self.url.topic_path, data, **{GROUP_ATTRIBUTE: group,
                                                                      ARTICLES_ATTRIBUTE: str(n)})
                       for group, data, n in split_messages(posts)]
            done, not_done = futures.wait(pending, timeout=self.timeout)
            if not_done:  # still being published (the library keeps trying): it may yet arrive, so not a 503
                self.failures += 1
                raise OutcomeUnknown(f"Pub/Sub did not acknowledge {self.url} within {self.timeout:.0f}s; "
                                     "the messages may still be delivered")
            for future in done:
                future.result()
        except OutcomeUnknown:
            raise
        except Exception as exc:  # no topic, no credentials, emulator down: not accepted
            self.failures += 1
            raise BackendUnavailable(f"cannot publish to {self.url}: {type(exc).__name__}: {exc}") from None
        self.published += len(pending)
        return {"accepted": len(posts), "duplicates": duplicates}

    def put(self, publication: str, content: str, id: str | None = None) -> dict:
        return self.put_many([(publication, content, id)])

    def status(self) -> dict:
        """What /readyz and /metrics see of this intake: accepting; the backends report elsewhere."""
        return {"state": "accepting", "intake": str(self.url), "depth": 0, "capacity": 0,
                "published_messages": self.published, "publish_failures": self.failures}
