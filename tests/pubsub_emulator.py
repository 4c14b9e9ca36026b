"""Google's Pub/Sub emulator (Cloud SDK component `pubsub-emulator`) as pytest fixtures.

`pubsub_emulator` (session): its Java started directly on a free loopback port, in its own process
group; yields "127.0.0.1:PORT"; stopped by PID (SIGTERM, then SIGKILL of the group).
`pubsub_topic` (function): a fresh project with a topic, a subscription (ack deadline 10 s) and a
dead-letter topic with its own subscription, PUBSUB_EMULATOR_HOST set for the test.
Without Java or the jar, tests skip and say how to install them (or fail, when
INGEST_REQUIRE_PUBSUB_EMULATOR or INGEST_REQUIRE_FIRESTORE_EMULATOR is set: CI cannot lose them silently).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.firestore_emulator import _sdk_roots, find_java_and_jar, running_java

JAR_GLOB = "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar"
INSTALL_HINT = ("install the Debian packages google-cloud-cli-pubsub-emulator and a JRE "
                "(`apt-get install google-cloud-cli-pubsub-emulator default-jre-headless`), "
                "or `gcloud components install pubsub-emulator`")


class EmulatorUnavailable(RuntimeError):
    pass


def find_emulator() -> tuple[str, Path]:
    jar_env = os.environ.get("PUBSUB_EMULATOR_JAR")
    jars = [Path(jar_env)] if jar_env else sorted(j for root in _sdk_roots() for j in root.glob(JAR_GLOB))
    return find_java_and_jar("Pub/Sub emulator", jars, "under " + ", ".join(str(r / JAR_GLOB) for r in _sdk_roots()),
                             INSTALL_HINT, EmulatorUnavailable)


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v1/projects/probe/topics", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_emulator(timeout: float = 60.0):
    java, jar = find_emulator()
    command = lambda port: [java, "-Xmx1g", "-jar", str(jar), "--host=127.0.0.1", f"--port={port}"]  # noqa: E731
    with running_java("Pub/Sub emulator", command, _answers, timeout) as host:
        yield host


@dataclass
class PubSubSetup:
    host: str
    project: str
    topic: str
    subscription: str
    dead_letter: str
    dead_letter_subscription: str

    @property
    def frontend_url(self) -> str:
        return f"pubsub://{self.project}/{self.topic}"

    @property
    def backend_url(self) -> str:
        return f"pubsub://{self.project}/{self.subscription}?dead_letter={self.dead_letter}"

    @property
    def env(self) -> dict:
        return {"PUBSUB_EMULATOR_HOST": self.host}


def create(host: str, project: str, ack_deadline: int = 10) -> PubSubSetup:
    """A topic, its subscription and a dead-letter topic with a subscription of its own."""
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    setup = PubSubSetup(host, project, "articles", "backends", "articles-dead", "articles-dead-keep")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        for topic in (setup.topic, setup.dead_letter):
            publisher.create_topic(request={"name": publisher.topic_path(project, topic)})
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, setup.subscription),
            "topic": publisher.topic_path(project, setup.topic), "ack_deadline_seconds": ack_deadline})
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, setup.dead_letter_subscription),
            "topic": publisher.topic_path(project, setup.dead_letter)})
    finally:
        subscriber.close()
    return setup


@pytest.fixture(scope="session")
def pubsub_emulator():
    try:
        find_emulator()
    except EmulatorUnavailable as exc:
        if os.environ.get("INGEST_REQUIRE_PUBSUB_EMULATOR") or os.environ.get("INGEST_REQUIRE_FIRESTORE_EMULATOR"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    with running_emulator() as host:
        yield host


@pytest.fixture
def pubsub_topic(pubsub_emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    return create(pubsub_emulator, "test-" + uuid.uuid4().hex[:12])
