"""The SQLite store's day tables on their own: sums over windows, zero-filled series, rising, retention."""

from __future__ import annotations

import sqlite3

import pytest

from ingest.core.days import DayCounts, Window
from ingest.stores import sqlite_days


@pytest.fixture
def conn(tmp_path):
    conn = sqlite3.connect(tmp_path / "days.db", isolation_level=None)
    conn.executescript(sqlite_days.DAY_SCHEMA)
    yield conn
    conn.close()


def day(*articles: dict) -> DayCounts:
    counts = DayCounts()
    for mentions in articles:
        counts.add_article(mentions)
    return counts


def test_a_window_sums_only_its_days_and_a_series_has_every_day(conn):
    sqlite_days.add_days(conn, "p", {"2017-01-01": day({"a": 2}, {"a": 1, "b": 1}), "2017-01-03": day({"b": 5})})
    sqlite_days.add_days(conn, "p", {"2017-01-03": day({"a": 1})})        # a later batch adds to the day
    sqlite_days.add_days(conn, "q", {"2017-01-01": day({"a": 7})})
    assert sqlite_days.window_entities(conn, "p", Window(), 10, 0) == [("b", "", 6, 2, 1), ("a", "", 4, 3, 1)]
    assert sqlite_days.window_entities(conn, "p", Window("2017-01-02", "2017-01-03"), 10, 0) == [
        ("b", "", 5, 1, 1), ("a", "", 1, 1, 1)]
    assert sqlite_days.window_entities(conn, None, Window(until="2017-01-01"), 1, 0) == [("a", "", 10, 3, 2)]
    assert sqlite_days.day_series(conn, "p", Window("2016-12-31", "2017-01-03")) == [
        ("2016-12-31", 0, 0), ("2017-01-01", 2, 4), ("2017-01-02", 0, 0), ("2017-01-03", 2, 6)]
    assert sqlite_days.entity_series(conn, "p", "a", Window("2017-01-01", "2017-01-03")) == [
        ("2017-01-01", 3, 2), ("2017-01-02", 0, 0), ("2017-01-03", 1, 1)]
    assert sqlite_days.latest_day(conn) == "2017-01-03" and sqlite_days.latest_day(conn, "q") == "2017-01-01"


def test_rising_ranks_the_new_and_the_large_rise_not_the_flat_or_the_tiny(conn):
    before = {f"2017-01-0{n}": day(*([{"steady": 1, "flat": 1}] * 2 + [{"filler": 1}] * 8)) for n in range(1, 8)}
    recent = {f"2017-01-{n:02d}": day(*([{"steady": 1, "flat": 1, "new": 1}] * 6 + [{"flat": 1}] * 0
                                        + [{"filler": 1}] * 4)) for n in range(8, 15)}
    recent["2017-01-14"].add_article({"tiny": 1})
    for n in range(8, 15):
        recent[f"2017-01-{n:02d}"].entities["flat"] = [2, 2]           # flat keeps 2 of 10 a day
    sqlite_days.add_days(conn, "p", {**before, **recent})
    now, then, rows = sqlite_days.rising(conn, "p", 7, "2017-01-14", 10, 3)
    assert (now, then) == (71, 70)
    ranked = [r[0] for r in rows]
    assert ranked[:2] == ["new", "steady"] and "flat" not in ranked and "tiny" not in ranked


def test_retention_drops_old_entity_rows_and_keeps_day_totals(conn):
    sqlite_days.add_days(conn, "p", {"2017-01-01": day({"a": 1}), "2017-01-05": day({"a": 1})})
    assert sqlite_days.drop_entity_days_before(conn, "2017-01-03") == 1
    sqlite_days.add_days(conn, "p", {"2017-01-02": day({"a": 1})}, entity_days_from="2017-01-03")
    assert sqlite_days.window_entities(conn, "p", Window(), 10, 0) == [("a", "", 1, 1, 1)]
    assert sqlite_days.day_series(conn, "p", Window("2017-01-01", "2017-01-02")) == [
        ("2017-01-01", 1, 1), ("2017-01-02", 1, 1)]


def test_a_store_with_days_kept_drops_old_entity_days_and_keeps_the_totals(tmp_path):
    from datetime import datetime, timedelta, timezone

    from ingest.core.models import Aggregate, Delta
    from ingest.stores.sqlite import SqliteStore

    today = datetime.now(timezone.utc).date()
    old, recent = (today - timedelta(days=40)).isoformat(), (today - timedelta(days=1)).isoformat()
    store = SqliteStore(tmp_path / "s.db", days_kept=30)
    store.apply(Delta.of("b1", [Aggregate.from_article("P", ["merkel"], old),
                                Aggregate.from_article("P", ["merkel", "obama"], recent)]))
    assert store.entities_in("P", Window(old, old)) == []
    assert [r["entity"] for r in store.entities_in("P", Window(recent, recent))] == ["merkel", "obama"]
    assert [r["articles"] for r in store.days("P", Window(old, recent))[1] if r["articles"]] == [1, 1]
    assert {e.entity: e.mentions for e in store.entities("P", 10)} == {"merkel": 2, "obama": 1}, "all time stays"
    store.close()
