"""The SQLite store's per-day counts: written in the store's own transaction, read by windows.

Two tables beside the all-time ones: `pub_days` (publication, day: articles, mentions) and
`entity_days` (publication, day, entity: mentions, articles). Their sums over days are the
all-time counts, because the same commit adds both. Days are ISO `YYYY-MM-DD` text.
A window's entity list sums `entity_days` over the window's days of one publication (the primary
key's order: publication, day, entity); a series of one entity reads the second index.
"""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta

from ..core.days import DayCounts, Window, rising_score, rising_windows

DAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS pub_days (
    pub_key TEXT NOT NULL,
    day TEXT NOT NULL,
    articles INTEGER NOT NULL DEFAULT 0,
    mentions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pub_key, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pub_days_by_day ON pub_days (day);
CREATE TABLE IF NOT EXISTS entity_days (
    pub_key TEXT NOT NULL,
    day TEXT NOT NULL,
    entity TEXT NOT NULL,
    mentions INTEGER NOT NULL DEFAULT 0,
    articles INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pub_key, day, entity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_days_by_entity ON entity_days (pub_key, entity, day);
CREATE INDEX IF NOT EXISTS entity_days_by_day ON entity_days (day);
"""


def add_days(conn: sqlite3.Connection, pub_key: str, days: dict[str, DayCounts], *,
             entity_days_from: str | None = None) -> int:
    """Add one publication's per-day counts (inside the caller's transaction); the rows written.
    Entity rows of days before `entity_days_from` (the retention's first kept day) are not written."""
    writes = 0
    for day, counts in days.items():
        conn.execute(
            "INSERT INTO pub_days (pub_key, day, articles, mentions) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pub_key, day) DO UPDATE SET articles = articles + excluded.articles, "
            "mentions = mentions + excluded.mentions", (pub_key, day, counts.articles, counts.mentions))
        writes += 1
        if entity_days_from is not None and day < entity_days_from:
            continue
        conn.executemany(
            "INSERT INTO entity_days (pub_key, day, entity, mentions, articles) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (pub_key, day, entity) DO UPDATE SET mentions = mentions + excluded.mentions, "
            "articles = articles + excluded.articles",
            [(pub_key, day, e, m, a) for e, (m, a) in counts.entities.items()])
        writes += len(counts.entities)
    return writes


def drop_entity_days_before(conn: sqlite3.Connection, first_kept: str) -> int:
    """Retention: per-day entity rows of days before `first_kept` go; per-day article totals stay."""
    return conn.execute("DELETE FROM entity_days WHERE day < ?", (first_kept,)).rowcount


def first_kept_day(days_kept: int | None, today: date) -> str | None:
    return None if not days_kept else (today - timedelta(days_kept - 1)).isoformat()


def latest_day(conn: sqlite3.Connection, pub_key: str | None = None) -> str | None:
    if pub_key is None:
        row = conn.execute("SELECT max(day) FROM pub_days").fetchone()
    else:
        row = conn.execute("SELECT max(day) FROM pub_days WHERE pub_key = ?", (pub_key,)).fetchone()
    return row[0] if row else None


def _where(window: Window, pub_key: str | None, extra: str = "") -> tuple[str, list]:
    clauses, params = [], []
    if pub_key is not None:
        clauses.append("pub_key = ?")
        params.append(pub_key)
    if window.since is not None:
        clauses.append("day >= ?")
        params.append(window.since)
    if window.until is not None:
        clauses.append("day <= ?")
        params.append(window.until)
    if extra:
        clauses.append(extra)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


# An entity's label (naming.majority_label): in one publication, or summed over all of them.
LABEL_IN_PUB = ("(SELECT l.label FROM entity_labels l WHERE l.pub_key = ? AND l.entity = g.entity "
                 "ORDER BY l.mentions DESC, l.label ASC LIMIT 1)")
LABEL_ANYWHERE = ("(SELECT l.label FROM entity_labels l WHERE l.entity = g.entity GROUP BY l.label "
                   "ORDER BY sum(l.mentions) DESC, l.label ASC LIMIT 1)")


def window_entities(conn: sqlite3.Connection, pub_key: str | None, window: Window, limit: int, offset: int,
                    labels: frozenset[str] | None = None) -> list[tuple]:
    """(entity, label, mentions, articles, publications) summed over the window, by mentions desc, entity asc.
    The label is the entity's majority label (all time; '' where none is kept); `labels` keeps those whose
    label is one of them. Without a filter, labels are looked up for the page's rows only."""
    where, params = _where(window, pub_key)
    publications = "1" if pub_key is not None else "count(DISTINCT pub_key)"  # one publication: no distinct to count
    grouped = (f"SELECT entity, sum(mentions) AS m, sum(articles) AS a, {publications} AS n FROM entity_days{where} "
               "GROUP BY entity")
    label, label_params = (LABEL_IN_PUB, [pub_key]) if pub_key is not None else (LABEL_ANYWHERE, [])
    if not _has_labels(conn):
        label, label_params = "''", []
    if labels:
        marks = ",".join("?" * len(labels))
        sql = (f"SELECT g.entity, {label} AS lb, g.m, g.a, g.n FROM ({grouped}) g WHERE lb IN ({marks}) "
               "ORDER BY g.m DESC, g.entity ASC LIMIT ? OFFSET ?")
        args = [*label_params, *params, *sorted(labels), limit, offset]
    else:
        sql = (f"SELECT g.entity, {label}, g.m, g.a, g.n "
               f"FROM ({grouped} ORDER BY m DESC, entity ASC LIMIT ? OFFSET ?) g "
               "ORDER BY g.m DESC, g.entity ASC")
        args = [*label_params, *params, limit, offset]
    return [(e, lb or "", m, a, n) for e, lb, m, a, n in conn.execute(sql, args)]


def _has_labels(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_labels'").fetchone() is not None


def day_series(conn: sqlite3.Connection, pub_key: str, window: Window) -> list[tuple[str, int, int]]:
    """(day, articles, mentions) for every day of a closed window, zeros included."""
    where, params = _where(window, pub_key)
    found = {d: (a, m) for d, a, m in conn.execute(f"SELECT day, articles, mentions FROM pub_days{where}", params)}
    return [(d, *found.get(d, (0, 0))) for d in window.days()]


def entity_series(conn: sqlite3.Connection, pub_key: str, entity: str, window: Window) -> list[tuple[str, int, int]]:
    """(day, mentions, articles) of one entity for every day of a closed window, zeros included."""
    where, params = _where(window, pub_key, "entity = ?")
    found = {d: (m, a) for d, m, a in conn.execute(
        f"SELECT day, mentions, articles FROM entity_days INDEXED BY entity_days_by_entity{where}",
        [*params, entity])}
    return [(d, *found.get(d, (0, 0))) for d in window.days()]


def window_articles(conn: sqlite3.Connection, pub_key: str | None, window: Window) -> int:
    where, params = _where(window, pub_key)
    return conn.execute(f"SELECT coalesce(sum(articles), 0) FROM pub_days{where}", params).fetchone()[0]


def rising(conn: sqlite3.Connection, pub_key: str | None, days: int, until: str, limit: int,
           min_articles: int) -> tuple[int, int, list[tuple]]:
    """(articles now, articles before, [(entity, articles_now, articles_before, score)]) by score desc,
    entity asc: the `days` days ending `until` against the `days` days before (core.days.rising_score)."""
    recent, before = rising_windows(days, until)
    total_now = window_articles(conn, pub_key, recent)
    total_before = window_articles(conn, pub_key, before)
    where, params = _where(Window(before.since, recent.until), pub_key)
    rows = conn.execute(
        f"SELECT entity, sum(CASE WHEN day >= ? THEN articles ELSE 0 END) AS now, "
        f"sum(CASE WHEN day < ? THEN articles ELSE 0 END) FROM entity_days{where} "
        "GROUP BY entity HAVING now >= ?", [recent.since, recent.since, *params, min_articles]).fetchall()
    scored = []
    for entity, now, then in rows:
        score = rising_score(now, then, total_now, total_before, min_articles)
        if score is not None:
            scored.append((entity, now, then, score))
    scored.sort(key=lambda r: (-r[3], r[0]))
    return total_now, total_before, scored[:limit]
