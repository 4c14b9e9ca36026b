"""The fleet frontend's publisher against a fake Pub/Sub client that fails as the real one can: a
failure that may have delivered the message is retried as the same message (its group id, so the
backends count it once) until the deadline, then 504; only an outright refusal is 503."""

from __future__ import annotations

from concurrent import futures

import pytest
from google.api_core import exceptions as gexc

from ingest.core.protocol import BackendUnavailable, OutcomeUnknown
from ingest.web.publisher import PubSubPublisher


class FakeClient:
    """publish() answers with the next of `outcomes` (an exception, "ok", or "never")."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.published: list[tuple[bytes, dict]] = []

    def publish(self, topic, data, **attributes):
        self.published.append((data, attributes))
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        future: futures.Future = futures.Future()
        if outcome == "ok":
            future.set_result(str(len(self.published)))
        elif outcome != "never":
            future.set_exception(outcome)
        return future


def publisher(client: FakeClient, timeout: float = 5.0) -> PubSubPublisher:
    return PubSubPublisher("pubsub://test-project/articles", timeout=timeout, make_client=lambda: client)


POSTS = [("The Planet", "Ada Lovelace met Charles Babbage.", None)]


def test_a_publish_that_may_have_been_delivered_is_sent_again_as_the_same_message():
    client = FakeClient(gexc.ServiceUnavailable("connection reset"), gexc.DeadlineExceeded("slow"), "ok")
    assert publisher(client).put_many(POSTS) == {"accepted": 1, "duplicates": 0}
    assert len(client.published) == 3
    assert len({data for data, _ in client.published}) == 1
    assert len({attrs["group"] for _, attrs in client.published}) == 1, "a new group id would be counted twice"


def test_a_publish_that_keeps_failing_is_outcome_unknown_at_the_deadline_never_a_503():
    client = FakeClient(*[gexc.ServiceUnavailable("down")] * 10_000)
    with pytest.raises(OutcomeUnknown):
        publisher(client, timeout=0.3).put_many(POSTS)
    assert 2 <= len(client.published) < 10, "resent with pauses that double, not in a tight loop"
    with pytest.raises(OutcomeUnknown):
        publisher(FakeClient("never"), timeout=0.3).put_many(POSTS)


@pytest.mark.parametrize("refusal", [gexc.NotFound("no topic"), gexc.PermissionDenied("no")])
def test_an_outright_refusal_is_503_nothing_was_published(refusal):
    client = FakeClient(refusal)
    with pytest.raises(BackendUnavailable):
        publisher(client).put_many(POSTS)
    assert len(client.published) == 1


def test_a_request_split_in_two_messages_one_refused_is_outcome_unknown(monkeypatch):
    import ingest.web.publisher as module

    real = module.split_messages
    monkeypatch.setattr(module, "split_messages", lambda posts: real(posts, limit=20_000))
    client = FakeClient("ok", gexc.NotFound("gone meanwhile"))
    with pytest.raises(OutcomeUnknown):  # half of it is in Pub/Sub: not "nothing was enqueued"
        publisher(client).put_many([(f"P{i}", "word " * 300, None) for i in range(40)])
    assert len(client.published) >= 2
