"""The journal on its own, on a real SQLite file: durable states, group commit, bounds, ids, refusals."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from ingest.backend.hub import Batch
from ingest.backend.journal import Journal, JournalError, _Request
from ingest.core.models import Aggregate, Delta
from ingest.core.protocol import QueueFull


def open_journal(path, **over):
    kw = dict(max_articles=1000, max_bytes=10**6)
    kw.update(over)
    return Journal(path, **kw)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "journal.db"


def test_an_accepted_article_survives_a_reopen_with_its_text(path):
    j = open_journal(path)
    assert j.append([("BBC", "Angela Merkel in Berlin.", None)]) ["accepted"] == 1
    j.close()
    j = open_journal(path)
    try:
        found = j.recover()
        assert [(e.publication, e.bytes) for e in found.entries] == [("BBC", 24)]
        assert j.contents([found.entries[0].seq]) == {found.entries[0].seq: "Angela Merkel in Berlin."}
    finally:
        j.close()


def test_every_durable_state_is_recovered_as_it_was(path):
    j = open_journal(path)
    seqs = [seq for seq, _, _ in j.append([(f"P{i}", f"text {i}", None) for i in range(5)])["entries"]]
    delta = Delta.of("batch-1", [Aggregate.from_article("P0", ["x", "x"]), Aggregate.from_article("P1", ["y"])])
    j.record_batch(Batch(delta, seqs[:2]))
    done = Batch(Delta.of("batch-2", [Aggregate.from_article("P2", [])]), seqs[2:3])
    j.record_batch(done)
    j.complete(done)
    j.close()
    j = open_journal(path)
    try:
        found = j.recover()
        [(batch_id, replayed, batch_seqs)] = found.batches
        assert batch_id == "batch-1" and sorted(batch_seqs) == seqs[:2]
        assert replayed.publications["p0"].mentions == {"x": 2} and replayed.articles == 2
        assert [e.seq for e in found.entries] == seqs[3:], "the batched and the committed ones are not fed again"
        assert j.stats()["journal_articles"] == 4
    finally:
        j.close()


def test_concurrent_appends_share_a_commit(path):
    j = open_journal(path)
    try:
        threads = [threading.Thread(target=j.append, args=([(f"P{i}", "text", None)],)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert j.stats()["journal_articles"] == 40
        assert j.commits < 40, "group commit: waiting requests go in the next commit together"
        assert j.stats()["journal_fsync_p50_seconds"] > 0
    finally:
        j.close()


def test_bounded_by_count_and_by_bytes_all_or_nothing(path):
    j = open_journal(path, max_articles=3, max_bytes=100)
    try:
        with pytest.raises(QueueFull, match="queue full"):
            j.append([("P", "x", None)] * 4)
        with pytest.raises(QueueFull, match="journal full"):
            j.append([("P", "y" * 60, None), ("P", "z" * 60, None)])
        assert j.stats()["journal_articles"] == 0
        assert j.append([("P", "y" * 60, None)])["accepted"] == 1
        assert j.stats()["journal_bytes"] == 60
    finally:
        j.close()


def test_a_full_disk_is_a_clean_refusal_and_nothing_half_written(path):
    j = open_journal(path)
    try:
        j.append([("P", "first", None)])
        pages = j._writer_conn.execute("PRAGMA page_count").fetchone()[0]
        j._writer_conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, as on a full disk
        with pytest.raises(QueueFull, match="disk under the journal is full"):
            j.append([("P", "x" * 20000, None) for _ in range(10)])
        assert j.stats()["journal_articles"] == 1
        j._writer_conn.execute("PRAGMA max_page_count = 1073741823")
        assert j.append([("P", "after", None)])["accepted"] == 1
    finally:
        j.close()
    j = open_journal(path)
    try:
        assert [e.publication for e in j.recover().entries] == ["P", "P"]
    finally:
        j.close()


def test_client_ids_deduplicate_by_publication_key_within_the_retention(path):
    j = open_journal(path, retention=3600)
    try:
        assert j.append([("BBC", "a", "url-1"), ("BBC", "b", "url-2")])["accepted"] == 2
        again = j.append([(" bbc ", "a", "url-1"), ("CNN", "a", "url-1"), ("BBC", "c", "url-3"), ("BBC", "c", "url-3")])
        assert (again["accepted"], again["duplicates"]) == (2, 2)
        j._writer_conn.execute("UPDATE client_ids SET accepted_at = ?", (time.time() - 7200,))
        assert j.append([("BBC", "a", "url-1")])["accepted"] == 1, "past the retention window it is new again"
    finally:
        j.close()


def test_one_journal_one_backend(path):
    j = open_journal(path)
    try:
        with pytest.raises(JournalError, match="in use by another ingestiond"):
            open_journal(path)
    finally:
        j.close()
    open_journal(path).close()


def test_a_journal_with_work_for_another_store_is_refused(path):
    j = open_journal(path)
    try:
        j.claim("sqlite:///a.db")
        j.append([("P", "x", None)])
        with pytest.raises(JournalError, match="for store sqlite:///a.db, not sqlite:///b.db"):
            j.claim("sqlite:///b.db")
        j.claim("sqlite:///a.db")
    finally:
        j.close()
    empty = open_journal(path.with_name("empty.db"))
    try:
        empty.claim("sqlite:///a.db")
        empty.claim("firestore://p")  # nothing pending: it may change hands
    finally:
        empty.close()


def test_a_batch_older_than_the_markers_may_live_is_refused(path):
    from ingest.core.rules import MARKER_TTL_SECONDS

    j = open_journal(path)
    seqs = [s for s, _, _ in j.append([("P", "x", None)])["entries"]]
    j.record_batch(Batch(Delta.of("old", [Aggregate.from_article("P", [])]), seqs))
    j._conn.execute("UPDATE batches SET created_at = ?", (time.time() - MARKER_TTL_SECONDS,))
    try:
        with pytest.raises(JournalError, match="could count it twice") as refused:
            j.recover()
        text = str(refused.value)
        assert "ingestiond journal drop-batch" in text and "ingestiond journal requeue-batch" in text
        assert "DELETE FROM" not in text, "deleting the batch alone would strand its articles"
    finally:
        j.close()


def test_an_operator_drops_or_requeues_a_recorded_batch_with_ingestiond_journal(path, capsys):
    from ingest.backend.cli import main

    j = open_journal(path)
    seqs = [s for s, _, _ in j.append([("P", f"text {i}", None) for i in range(5)])["entries"]]
    j.record_batch(Batch(Delta.of("applied", [Aggregate.from_article("P", [])]), seqs[:2]))
    j.record_batch(Batch(Delta.of("not-applied", [Aggregate.from_article("P", [])]), seqs[2:4]))
    assert main(["journal", "--journal", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert "applied\t" in listed and "not-applied\t" in listed and "2 articles" in listed
    assert main(["journal", "--journal", str(path), "drop-batch", "applied"]) == 2, "the backend holds the lock"
    assert "stop the backend first" in capsys.readouterr().err
    j.close()

    assert main(["journal", "--journal", str(path), "drop-batch", "applied"]) == 0
    assert main(["journal", "--journal", str(path), "requeue-batch", "not-applied"]) == 0
    assert main(["journal", "--journal", str(path), "drop-batch", "nope"]) == 1
    j = open_journal(path)
    try:
        found = j.recover()
        assert found.batches == [], "both decided"
        assert [e.seq for e in found.entries] == seqs[2:], "requeued articles are accepted again; dropped ones gone"
        assert j.stats()["journal_articles"] == 3
    finally:
        j.close()


def test_quarantine_keeps_the_article_out_of_the_count_until_retried(path):
    from ingest.backend.journal import Entry

    j = open_journal(path)
    try:
        [(seq, pub, size)] = j.append([("P", "poison", None)])["entries"]
        entry = Entry(seq, pub, size, kills=2)
        j.quarantine([entry])
        assert j.stats()["journal_articles"] == 0 and j.recover().quarantined == 1
        conn = sqlite3.connect(path, isolation_level=None)  # what `ingestiond quarantine retry` does
        conn.execute("UPDATE articles SET quarantined_at = NULL, kills = 0, requeued = 1")
        conn.close()
        assert [e.seq for e in j.requeued()] == [seq] and j.requeued() == []
        assert j.stats()["journal_articles"] == 1
    finally:
        j.close()


def test_article_text_and_the_journal_file_are_private(path):
    j = open_journal(path)
    j.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_counts_stay_exact_while_appends_and_completions_interleave(path):
    from ingest.core.models import Aggregate, Delta

    j = open_journal(path, max_articles=100000, max_bytes=10**8)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            j.append([("P", "text", None)])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(300):  # the arbiter's side, at the same time
            rows = j._conn.execute("SELECT seq FROM articles WHERE batch_id IS NULL LIMIT 5").fetchall()
            if rows:
                batch = Batch(Delta.of(f"b{n}", [Aggregate.from_article("P", [])]), [r[0] for r in rows])
                j.record_batch(batch)
                j.complete(batch)
    finally:
        stop.set()
        for t in threads:
            t.join()
    real = j._conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM articles").fetchone()
    try:
        assert (j.stats()["journal_articles"], j.stats()["journal_bytes"]) == real
    finally:
        j.close()


def test_the_quarantine_is_bounded_and_counted_in_the_journals_bounds(path):
    from ingest.backend.journal import Entry

    j = open_journal(path, max_articles=10, max_bytes=1000, max_quarantine=2)
    try:
        entries = [Entry(seq, pub, size) for seq, pub, size in
                   j.append([("P", "x" * 100, None) for _ in range(3)])["entries"]]
        j.quarantine(entries[:1])
        s = j.stats()
        assert (s["journal_articles"], s["journal_quarantined_articles"], s["journal_quarantined_bytes"]) == (2, 1, 100)
        assert s["journal_bytes"] == 300 and s["journal_room_bytes"] == 700 and s["journal_room_articles"] == 7
        with pytest.raises(QueueFull, match="journal full"):
            j.append([("P", "y" * 701, None)])  # the quarantined bytes are on disk: they count
        j.quarantine(entries[1:2])
        assert j.stats()["quarantine_full"]
        with pytest.raises(QueueFull, match="quarantine is full"):
            j.append([("P", "z", None)])
        j.quarantine(entries[2:])  # a third poison article is still kept, never dropped
        assert j.stats()["journal_quarantined_articles"] == 3
        j._conn.execute("DELETE FROM articles WHERE seq IN (?, ?)", (entries[0].seq, entries[1].seq))  # `drop`
        assert j.refresh_quarantine() == 1
        assert j.append([("P", "z", None)])["accepted"] == 1
    finally:
        j.close()


def test_the_article_bound_follows_the_byte_bound():
    from ingest.config import load_backend_settings

    assert load_backend_settings([]).queue_size * 2048 == 1024**3, "1 GiB: 524,288 articles, not 10,000"
    assert load_backend_settings(["--journal-size", "64MiB"]).queue_size == 32768
    assert load_backend_settings(["--journal-size", "4KiB"]).queue_size == 10_000, "a small journal's bytes bind"
    assert load_backend_settings(["--queue-size", "500"]).queue_size == 500


def _expired_ids(path, n, age):
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.executemany("INSERT INTO client_ids VALUES (?, ?, ?)", [("p", f"https://example.com/{i}", time.time() - age)
                                                                 for i in range(n)])
    conn.close()


def test_old_client_ids_are_purged_in_slices_between_appends(path, monkeypatch):
    import ingest.backend.journal as journal_module

    monkeypatch.setattr(journal_module, "PURGE_SLICE", 100)
    j = open_journal(path, retention=3600)
    j.close()
    _expired_ids(path, 1050, age=7200)
    slices = []  # rows each slice removed, recorded from the very first one (the writer may start purging at once)
    real = journal_module.Journal._purge_slice

    def recorded(self):
        before = self.client_id_rows
        real(self)
        slices.append(before - self.client_id_rows)

    monkeypatch.setattr(journal_module.Journal, "_purge_slice", recorded)
    j = open_journal(path, retention=3600)
    try:
        assert j.stats()["client_id_rows"] == 1050 and j.stats()["client_id_bytes"] > 1050 * 80
        assert j.append([("P", "x", "https://example.com/new")])["accepted"] == 1
        wait = time.monotonic() + 30
        while j.stats()["client_id_rows"] > 1 and time.monotonic() < wait:
            time.sleep(0.01)
        assert j.stats()["client_id_rows"] == 1, "only the fresh id is left"
        sizes = [n for n in slices if n > 0]
        assert sum(sizes) == 1050 and max(sizes) <= 100 and len(sizes) >= 11, \
            "one big DELETE: appends would wait for all of it"
        assert j.append([("P", "x", "https://example.com/new")])["duplicates"] == 1
        assert j.stats()["client_ids_evicted"] == 0
    finally:
        j.close()


def test_the_client_id_table_is_bounded_in_bytes_and_forgets_the_oldest_first(path):
    j = open_journal(path, max_client_id_bytes=20_000)
    try:
        for i in range(200):  # ~100 bytes a row estimated: 20,000 bytes hold ~200
            j.append([("P", "x", f"https://example.com/{i:04d}")])
        for i in range(200, 400):
            j.append([("P", "x", f"https://example.com/{i:04d}")])
        wait = time.monotonic() + 30
        while j.stats()["client_id_bytes"] > 20_000 and time.monotonic() < wait:
            time.sleep(0.01)
        s = j.stats()
        assert s["client_id_bytes"] <= 20_000 and s["client_ids_evicted"] > 0 \
            and s["client_id_capacity_bytes"] == 20_000
        real = j._conn.execute("SELECT count(*) FROM client_ids").fetchone()[0]
        assert s["client_id_rows"] == real
        assert j.append([("P", "x", "https://example.com/0399")])["duplicates"] == 1, "the newest are remembered"
        assert j.append([("P", "x", "https://example.com/0000")])["accepted"] == 1, "the oldest were forgotten"
    finally:
        j.close()


def test_a_request_token_already_journaled_answers_the_first_result_and_adds_nothing(path):
    """A put resent after its answer was lost (the backend died after the commit) is not counted twice."""
    j = open_journal(path, retention=3600)
    try:
        first = j.append([("BBC", "a", "url-1"), ("BBC", "b", None)], token="t1")
        assert (first["accepted"], first["duplicates"], len(first["entries"])) == (2, 0, 2)
        again = j.append([("BBC", "a", "url-1"), ("BBC", "b", None)], token="t1")
        assert (again["accepted"], again["duplicates"], again["entries"], again["replayed"]) == (2, 0, [], True)
        assert j.recall("t1") == {"accepted": 2, "duplicates": 0, "entries": [], "replayed": True}
        assert j.recall("t2") is None
        assert j.stats()["journal_articles"] == 2
        # the same token twice in one group commit: the second sees the first inside the transaction
        results = []
        gate = threading.Barrier(3)
        def put():
            gate.wait()
            results.append(j.append([("CNN", "c", None)], token="t3"))
        threads = [threading.Thread(target=put) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r["accepted"] for r in results) == [1, 1, 1] and sum(bool(r["entries"]) for r in results) == 1
        assert j.stats()["journal_articles"] == 3
    finally:
        j.close()
    j = open_journal(path, retention=3600)
    try:  # durable: a restarted backend answers the resent request too
        assert len(j.recover().entries) == 3
        assert j.append([("BBC", "a", "url-1"), ("BBC", "b", None)], token="t1")["replayed"] is True
        assert j.stats()["journal_articles"] == 3
        # forgotten in the purge slices, an hour after (they need to outlive a request's retries only)
        j._writer_conn.execute("UPDATE request_tokens SET accepted_at = ?", (time.time() - 3700,))
        with j._cond:  # the writer's next purge is due now
            j._next_purge = 0.0
            j._cond.notify()
        wait = time.monotonic() + 30
        while j.recall("t1") is not None and time.monotonic() < wait:
            time.sleep(0.01)
        assert j.recall("t1") is None
        with pytest.raises(ValueError):
            j.append([("BBC", "x", None)], token="x" * 65)
        token = "0123456789abcdef" * 2  # the frontend's: kept as its 16 bytes
        assert j.append([("BBC", "x", None)], token=token)["accepted"] == 1
        assert j.recall(token)["accepted"] == 1
        assert j._conn.execute("SELECT length(token) FROM request_tokens WHERE typeof(token) = 'blob'"
                               ).fetchall() == [(16,)]
    finally:
        j.close()


def test_a_resent_token_gets_its_answer_from_an_intake_that_is_full_or_draining_now(path):
    from ingest.backend.intake import Intake
    from ingest.core.protocol import Draining

    j = open_journal(path)
    intake = Intake(j, capacity=2)
    try:
        assert intake.put_many([("BBC", "a", None), ("BBC", "b", None)], "t1") == {"accepted": 2, "duplicates": 0}
        with pytest.raises(QueueFull):
            intake.put_many([("BBC", "c", None)], "t2")
        assert intake.put_many([("BBC", "a", None), ("BBC", "b", None)], "t1") == {"accepted": 2, "duplicates": 0}
        intake.stop_accepting()
        with pytest.raises(Draining):
            intake.put_many([("BBC", "c", None)], "t2")
        assert intake.put_many([("BBC", "a", None), ("BBC", "b", None)], "t1") == {"accepted": 2, "duplicates": 0}
        status = intake.status()
        assert (status["accepted"], status["replayed"], status["journal_articles"], len(intake)) == (2, 2, 2, 2)
    finally:
        j.close()


def test_a_journal_of_the_previous_version_keeps_every_text_when_opened(path):
    """Texts moved to their own table (binding a batch rewrote each 4 KB row before): a journal
    written before that, with accepted and batched articles in it, is migrated at open, nothing lost."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE articles (seq INTEGER PRIMARY KEY, publication TEXT NOT NULL, content TEXT NOT NULL,
            bytes INTEGER NOT NULL, accepted_at REAL NOT NULL, batch_id TEXT, kills INTEGER NOT NULL DEFAULT 0,
            quarantined_at REAL, requeued INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE batches (batch_id TEXT PRIMARY KEY, delta TEXT NOT NULL, articles INTEGER NOT NULL,
            created_at REAL NOT NULL) WITHOUT ROWID;
    """)
    now = time.time()
    conn.executemany("INSERT INTO articles (seq, publication, content, bytes, accepted_at, batch_id) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [(1, "BBC", "Angela Merkel in Berlin.", 24, now, "b1"),
                      (2, "BBC", "Olaf Scholz in Bonn.", 20, now, None)])
    conn.execute("INSERT INTO batches VALUES ('b1', '[]', 1, ?)", (now,))
    conn.commit()
    conn.close()
    j = open_journal(path)
    try:
        found = j.recover()
        assert [(b[0], b[2]) for b in found.batches] == [("b1", [1])]
        assert [(e.seq, e.publication) for e in found.entries] == [(2, "BBC")]
        assert j.contents([1, 2]) == {1: "Angela Merkel in Berlin.", 2: "Olaf Scholz in Bonn."}
        assert j.stats()["journal_articles"] == 2 and j.stats()["journal_bytes"] == 44
        j.discard([2])
        assert j.contents([1, 2]) == {1: "Angela Merkel in Berlin."}, "a deleted article takes its text along"
    finally:
        j.close()


def test_a_request_the_journal_cannot_keep_fails_alone_and_the_writer_goes_on(path):
    """A lone surrogate reached the journal from a fleet's message once: sqlite3 raised inside the
    group commit, the writer thread died holding the write lock and every later put hung. Now that
    request alone is refused (the others of its group commit are kept) and the writer goes on."""
    j = open_journal(path)
    try:
        good, bad = _Request([("BBC", "Angela Merkel in Berlin.", None)]), _Request([("BBC", "Ada \ud800", None)])
        with j._cond:  # one group commit for both, as concurrent puts share one
            j._requests.extend([good, bad])
            j._cond.notify()
        assert good.done.wait(30) and bad.done.wait(30)
        assert good.error is None and good.result["accepted"] == 1
        assert isinstance(bad.error, ValueError) and not isinstance(bad.error, QueueFull)
        with pytest.raises(ValueError):
            j.append([("BBC", "x \udfff", None)])
        assert j.append([("BBC", "Olaf Scholz in Bonn.", None)])["accepted"] == 1
        assert j._writer.is_alive()
        assert j.stats()["journal_articles"] == 2
        assert sorted(j.contents([1, 2, 3]).values()) == ["Angela Merkel in Berlin.", "Olaf Scholz in Bonn."]
    finally:
        j.close()


def test_a_batch_keeps_its_labels_and_rules_and_is_replayed_only_under_the_same_rules(path):
    """A recorded batch was counted under some rules (an alias file's digest among them): a start under
    other rules refuses to commit it, in one line, rather than mix two ways of counting in the store."""
    j = open_journal(path)
    seqs = [seq for seq, _, _ in j.append([("P", "text", None)])["entries"]]
    delta = Delta.of("b1", [Aggregate.from_article("P", [("donald trump", "PERSON"), ("donald trump", "ORG")])])
    delta.rules = "v2+aliases:0123456789abcdef"
    j.record_batch(Batch(delta, seqs))
    j.close()
    j = open_journal(path)
    try:
        [(_, replayed, _)] = j.recover("v2+aliases:0123456789abcdef").batches
        assert replayed.rules == delta.rules
        assert replayed.publications["p"].labels == {"donald trump": {"PERSON": 1, "ORG": 1}}
        with pytest.raises(JournalError, match=r"counted under rules v2\+aliases:0123456789abcdef, but this "
                                               r"backend counts under v2: .*same --aliases"):
            j.recover("v2")
    finally:
        j.close()


def test_a_batch_recorded_before_rules_v2_is_read_as_v1(path):
    j = open_journal(path)
    j._conn.execute("INSERT INTO batches VALUES ('old', ?, 0, ?)",
                    ('[["p", "P", 1, {"x": 1}, {"x": 1}]]', time.time()))
    try:
        [(_, replayed, _)] = j.recover().batches
        assert replayed.rules == "v1" and replayed.publications["p"].mentions == {"x": 1}
        with pytest.raises(JournalError, match="counted under rules v1"):
            j.recover("v2")
    finally:
        j.close()
