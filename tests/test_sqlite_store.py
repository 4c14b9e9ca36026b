"""SqliteStore: exactly-once batches, sorted and paged reads, readable while written."""

import sqlite3
import time

import pytest

from ingest.core.models import Delta, Aggregate
from ingest.stores import open_store, parse_store_url
from ingest.stores.sqlite import SqliteStore


def _delta(batch_id, *articles):
    return Delta.of(batch_id, [Aggregate.from_article(publication, entities) for publication, entities in articles])


def test_store_url_forms(tmp_path):
    assert parse_store_url("sqlite:///var/x.db") == ("sqlite", "var/x.db")
    assert parse_store_url("sqlite:////abs/x.db") == ("sqlite", "/abs/x.db")
    assert parse_store_url("firestore") == ("firestore", "")
    assert parse_store_url("firestore://my-proj") == ("firestore", "my-proj")


def test_batches_apply_exactly_once_and_first_name_wins(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    d1 = _delta("b1", ("The BBC", ["uk", "uk", "london"]), ("CNN", ["usa"]))
    assert store.apply(d1) > 0
    assert store.apply(d1) == 0  # the retry of an applied batch changes nothing
    store.apply(_delta("b2", ("the  bbc", ["uk", "paris"])))
    pubs = store.publications()
    assert [(p.publication, p.articles, p.entities, p.mentions) for p in pubs] == [
        ("The BBC", 2, 3, 5), ("CNN", 1, 1, 1)]
    rows = store.entities("THE BBC")
    assert [(r.entity, r.mentions, r.articles) for r in rows] == [("uk", 3, 2), ("london", 1, 1), ("paris", 1, 1)]
    assert [r.entity for r in store.entities("the bbc", limit=1, offset=1)] == ["london"]
    assert store.entities("nobody") is None


def test_failed_transaction_leaves_nothing_half_applied(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    store.apply(_delta("b1", ("BBC", ["uk"])))
    blocker = sqlite3.connect(tmp_path / "s.db", timeout=0.1)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    store._conn.execute("PRAGMA busy_timeout = 100")
    try:
        store.apply(_delta("b2", ("BBC", ["uk", "paris"])))
        raise AssertionError("expected a StoreError while the database is locked")
    except Exception as exc:
        assert type(exc).__name__ == "StoreError"
    blocker.rollback()
    assert store.apply(_delta("b2", ("BBC", ["uk", "paris"]))) > 0  # the retry applies it once
    assert [(r.entity, r.mentions) for r in store.entities("bbc")] == [("uk", 2), ("paris", 1)]


def test_other_processes_read_while_it_writes(tmp_path):
    path = tmp_path / "s.db"
    writer = SqliteStore(path)
    reader = open_store(f"sqlite:///{path}", readonly=True)
    writer._conn.execute("BEGIN IMMEDIATE")
    writer._conn.execute("INSERT INTO publications VALUES ('x', 'X', 1, 0)")
    assert reader.publications() == []  # not blocked, and sees no uncommitted data
    writer._conn.execute("COMMIT")
    assert reader.publications()[0].publication == "X"


def test_reader_before_the_database_exists(tmp_path):
    reader = open_store(f"sqlite:///{tmp_path / 'later.db'}", readonly=True)
    assert reader.publications() == [] and reader.entities("x") is None
    SqliteStore(tmp_path / "later.db").apply(_delta("b", ("BBC", ["uk"])))
    assert reader.publications()[0].articles == 1


def test_markers_expire_only_after_any_journal_entry_could_replay_them(tmp_path):
    from ingest.core.rules import MARKER_TTL_SECONDS

    store = SqliteStore(tmp_path / "s.db")
    store.apply(_delta("old", ("BBC", ["uk"])))
    store.apply(_delta("recent", ("BBC", ["uk"])))
    store._conn.execute("UPDATE applied_batches SET applied_at = ? WHERE batch_id = 'old'",
                        (time.time() - MARKER_TTL_SECONDS - 60,))
    store._conn.execute("UPDATE applied_batches SET applied_at = ? WHERE batch_id = 'recent'",
                        (time.time() - 20 * 86400,))
    store._last_expiry = 0
    store.apply(_delta("new", ("BBC", ["uk"])))
    ids = sorted(r[0] for r in store._conn.execute("SELECT batch_id FROM applied_batches"))
    assert ids == ["new", "recent"]


def test_a_commit_is_durable_before_apply_returns(tmp_path):
    """The journal forgets a batch once apply() returns: the store's commit must survive a power cut
    (WAL with synchronous=FULL, i.e. 2; NORMAL (1) may lose the last commits)."""
    store = SqliteStore(tmp_path / "s.db")
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.apply(_delta("b1", ("BBC", ["uk"])))
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # still, after a commit


def test_a_batch_merging_groups_records_each_and_is_refused_whole_when_another_batch_has_one(tmp_path):
    """A fleet's merged batch: one row per group in the same commit, so each group counts once
    whether it is committed merged or alone, by whichever backend."""
    import pytest

    from ingest.stores.base import GroupsRefused

    store = SqliteStore(tmp_path / "s.db")
    merged = _delta("m1", ("BBC", ["uk"]), ("BBC", ["uk"]))
    merged.groups = ("g1", "g2")
    assert store.apply(merged) == 5  # 3 markers, the publication, one entity
    assert store.apply(_delta("g1", ("BBC", ["uk"]))) == 0, "g1 alone (a redelivery elsewhere): already counted"
    again = _delta("m2", ("BBC", ["uk"]), ("BBC", ["paris"]))
    again.groups = ("g3", "g2")
    with pytest.raises(GroupsRefused) as refused:
        store.apply(again)
    assert refused.value.groups == ["g2"]
    assert store.apply(merged) == 0, "a retry of the merged batch itself changes nothing"
    assert store.apply(_delta("g3", ("BBC", ["paris"]))) > 0
    assert [(p.articles, p.mentions) for p in store.publications()] == [(3, 3)]


def test_mentions_are_kept_per_label_and_reads_give_the_majority_label(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    store.apply(_delta("b1", ("BBC", [("washington", "GPE"), ("washington", "PERSON"), ("nato", "ORG")]),
                       ("BBC", [("washington", "GPE"), ("paris", "GPE"), ("paris", "PERSON")])))
    rows = store.entities("bbc")
    assert [(r.entity, r.label, r.mentions, r.articles) for r in rows] == [
        ("washington", "GPE", 3, 2), ("paris", "GPE", 2, 1), ("nato", "ORG", 1, 1)]  # paris: a tie, GPE < PERSON
    store.apply(_delta("b2", ("BBC", [("paris", "PERSON"), ("washington", "PERSON"), ("washington", "PERSON")])))
    assert {r.entity: r.label for r in store.entities("bbc")} == {"washington": "PERSON", "paris": "PERSON",
                                                                  "nato": "ORG"}
    assert [r.entity for r in store.entities("bbc", labels=frozenset({"ORG"}))] == ["nato"]
    assert [r.entity for r in store.entities("bbc", labels=frozenset({"ORG", "PERSON"}), limit=2)] == \
        ["washington", "paris"]
    assert store.entities("bbc", labels=frozenset({"LAW"})) == []
    reader = open_store(f"sqlite:///{tmp_path / 's.db'}", readonly=True)
    assert [(r.entity, r.label) for r in reader.entities("bbc", labels=frozenset({"ORG"}))] == [("nato", "ORG")]


def test_the_store_records_its_counting_rules_and_refuses_others(tmp_path):
    from ingest.stores.base import RulesRefused

    store = SqliteStore(tmp_path / "s.db")
    store.claim_rules("v2+aliases:aaaa")
    store.claim_rules("v2+aliases:aaaa")  # the same rules again: fine
    store.apply(_delta("b1", ("BBC", [("uk", "GPE")])))
    with pytest.raises(RulesRefused, match=r"counting rules v2\+aliases:aaaa, this backend counts under v2;"):
        SqliteStore(tmp_path / "s.db").claim_rules("v2")


def test_a_store_with_counts_and_no_rules_record_was_made_under_v1_and_is_refused(tmp_path):
    """A database from before rules v2: its schema had no labels and no record; a frontend still reads it."""
    from ingest.stores.base import RulesRefused

    conn = sqlite3.connect(tmp_path / "old.db")
    conn.executescript("CREATE TABLE publications (key TEXT PRIMARY KEY, name TEXT, articles INT, mentions INT);"
                       "CREATE TABLE entities (pub_key TEXT, entity TEXT, mentions INT, articles INT);"
                       "INSERT INTO publications VALUES ('bbc', 'BBC', 1, 2);"
                       "INSERT INTO entities VALUES ('bbc', 'donald trump''s', 2, 1);")
    conn.commit()
    conn.close()
    reader = open_store(f"sqlite:///{tmp_path / 'old.db'}", readonly=True)
    assert [(r.entity, r.label) for r in reader.entities("bbc")] == [("donald trump's", "")]
    assert reader.entities("bbc", labels=frozenset({"PERSON"})) == []
    reader.close()
    with pytest.raises(RulesRefused, match="counting rules v1, this backend counts under v2"):
        SqliteStore(tmp_path / "old.db").claim_rules("v2")
    fresh = SqliteStore(tmp_path / "new.db")
    fresh.claim_rules("v2")  # an empty database takes the rules it is first written with
