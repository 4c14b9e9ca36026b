"""IngestClient against a real manager server and journal in this process: a put whose call breaks
after the backend journaled it is resent under the same token and answered once; an answer is never
a 503 unless nothing was enqueued."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ingest.backend.intake import Intake
from ingest.backend.journal import Journal
from ingest.backend.manager import IntakeServer, _ServerManager
from ingest.client import BackendUnavailable, IngestClient, OutcomeUnknown, QueueFull
from ingest.core.protocol import INTAKE, SERIALIZER
from tests.support import free_port


class DyingIntake(Intake):
    """The first `die` puts journal their posts (or not, with journal_first=False), then the backend
    "dies" before answering: the manager closes the connection without a word (as a SIGKILL would)."""

    def __init__(self, journal, die: int, journal_first: bool = True):
        super().__init__(journal, capacity=100)
        self.die, self.journal_first = die, journal_first
        self.calls: list[tuple[int, str | None]] = []

    def put_many(self, posts, token=None):
        self.calls.append((len(posts), token))
        if len(self.calls) <= self.die:
            if self.journal_first:
                super().put_many(posts, token)
            raise SystemExit  # the manager's serving thread ends: the connection closes, no answer
        return super().put_many(posts, token)


def serve(intake: Intake) -> tuple[tuple[str, int], bytes]:
    """A real manager server for `intake` (its threads are daemons, idle once the test is done)."""
    authkey = os.urandom(16)
    _ServerManager.register(INTAKE, callable=lambda: intake, exposed=["put_many", "status"])
    server = IntakeServer(_ServerManager._registry, ("127.0.0.1", free_port()), authkey, SERIALIZER)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.address, authkey


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db", max_articles=1000, max_bytes=10**6)
    yield j
    j.close()


def test_a_put_broken_after_the_journal_has_it_is_resent_under_its_token_and_counted_once(journal):
    intake = DyingIntake(journal, die=2)
    client = IngestClient(*serve(intake), deadline=10)
    assert client.put_many([("BBC", "Angela Merkel in Berlin.", None)]) == {"accepted": 1, "duplicates": 0}
    assert len(intake.calls) == 3 and len({token for _, token in intake.calls}) == 1
    assert intake.calls[0][1] is not None
    status = intake.status()
    assert (status["journal_articles"], status["accepted"], status["replayed"]) == (1, 1, 2)
    # the next request gets a token of its own
    assert client.put_many([("BBC", "Paris.", None)], token="given") == {"accepted": 1, "duplicates": 0}
    assert intake.calls[-1][1] == "given" and journal.stats()["journal_articles"] == 2


def test_a_put_broken_before_the_journal_had_it_is_resent_and_counted_once(journal):
    intake = DyingIntake(journal, die=1, journal_first=False)
    client = IngestClient(*serve(intake), deadline=10)
    assert client.put_many([("BBC", "Angela Merkel in Berlin.", None)]) == {"accepted": 1, "duplicates": 0}
    assert len(intake.calls) == 2 and intake.status()["replayed"] == 0
    assert journal.stats()["journal_articles"] == 1


def test_a_backend_that_stays_away_after_a_put_may_have_reached_it_is_outcome_unknown_not_unavailable(journal):
    intake = DyingIntake(journal, die=1000)
    client = IngestClient(*serve(intake), deadline=0.6)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="may have reached it"):
        client.put_many([("BBC", "Angela Merkel in Berlin.", None)])
    assert time.monotonic() - started >= 0.6, "resent until the deadline, not given up before"
    assert len(intake.calls) >= 2 and len({token for _, token in intake.calls}) == 1
    assert journal.stats()["journal_articles"] == 1  # it was enqueued: a 503 would have been a lie


def test_nothing_sent_is_backend_unavailable_at_once_and_an_answer_from_the_backend_is_the_truth(journal):
    client = IngestClient(("127.0.0.1", free_port()), b"key", deadline=30)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        client.put_many([("BBC", "text", None)])
    assert time.monotonic() - started < 30, "refused before sending: no waiting for the 30 s deadline"
    intake = Intake(journal, capacity=1)
    client = IngestClient(*serve(intake), deadline=30)
    assert client.put_many([("BBC", "a", None)])["accepted"] == 1
    with pytest.raises(QueueFull):
        client.put_many([("BBC", "b", None)])
    assert client.status()["depth"] == 1


def test_the_api_sends_a_fresh_token_per_write_and_answers_504_outcome_unknown(tmp_path):
    """In-process app: a 504 with its own code (never a 503) when the outcome is unknown."""
    from ingest.config import FrontendSettings
    from ingest.frontend import create_app

    class Unknown:
        tokens: list = []

        def put_many(self, posts, token=None):
            self.tokens.append(token)
            raise OutcomeUnknown("backend gone after sending")

    fake = Unknown()
    app = create_app(FrontendSettings(store=f"sqlite:///{tmp_path / 'none.db'}", api_keys="k"), client=fake)
    http = app.test_client()
    for _ in range(2):
        r = http.post("/post/enqueue", json={"publication": "P", "content": "text"}, headers={"X-API-Key": "k"})
        assert r.status_code == 504 and r.get_json()["error"] == "outcome_unknown"
        assert "only if every article has an id" in r.get_json()["detail"]
    assert len(set(fake.tokens)) == 2 and all(len(t) == 32 for t in fake.tokens)


@pytest.mark.slow
def test_a_backend_that_stops_answering_gives_504_and_503_in_bounded_time_not_a_hung_thread(tmp_path):
    """A backend that is alive but does not answer (SIGSTOP; a VM paused, swapping hard) accepts
    connections and reads nothing: a put is answered OutcomeUnknown once the deadline passes (it
    may have been sent), a status call BackendUnavailable. Before, both waited forever, and every
    frontend thread that called them with it."""
    import signal

    from tests.support import start_backend

    backend = start_backend(tmp_path, "--workers", "1")
    client = IngestClient(backend.address, backend.authkey.encode(), deadline=3)
    try:
        outcome: dict = {}

        def put():  # a connection per thread: the first put makes this thread's, then the backend stops
            outcome["first"] = client.put_many([("BBC", "Angela Merkel in Berlin.", None)])
            os.kill(backend.proc.pid, signal.SIGSTOP)
            try:
                client.put_many([("BBC", "Olaf Scholz in Bonn.", None)])
            except Exception as exc:  # noqa: BLE001 - the test looks at which one
                outcome["put"] = exc

        caller = threading.Thread(target=put, daemon=True)
        caller.start()
        caller.join(60)
        assert not caller.is_alive(), "the put hung on a stopped backend"
        assert outcome["first"]["accepted"] == 1
        assert isinstance(outcome.get("put"), OutcomeUnknown), outcome  # it was sent: it may be journaled
        with pytest.raises(BackendUnavailable):  # a new connection's handshake: nothing was sent
            client.put_many([("BBC", "Olaf Scholz in Bonn.", None)])
        with pytest.raises(BackendUnavailable):
            client.status()
    finally:
        os.kill(backend.proc.pid, signal.SIGCONT)
        assert backend.stop() == 0, backend.log()[-2000:]
