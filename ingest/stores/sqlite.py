"""SQLite store: the laptop default. WAL so the frontend can read while savers write; synchronous=FULL
so a commit survives a power cut before the saver reports it stored (the journal then forgets it).
Mentions per (entity, label) sit in `entity_labels`; the `meta` row `rules` names the counting rules
the counts were made with (a database with counts and no such row was made under v1)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..core.days import Window, series_window
from ..core.models import Delta, EntityCount, PublicationSummary
from ..core.rules import MARKER_TTL_SECONDS, publication_key
from .base import GroupsRefused, RulesRefused, StoreError, rules_refusal
from . import sqlite_days
from .lease import Holder, Lease, LeaseHeld, current_holder, holder_is_dead, refusal

log = logging.getLogger("ingest.store.sqlite")


SCHEMA = """
CREATE TABLE IF NOT EXISTS publications (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    articles INTEGER NOT NULL DEFAULT 0,
    mentions INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (
    pub_key TEXT NOT NULL,
    entity TEXT NOT NULL,
    mentions INTEGER NOT NULL DEFAULT 0,
    articles INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pub_key, entity)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entities_by_mentions ON entities (pub_key, mentions DESC, entity);
CREATE TABLE IF NOT EXISTS entity_labels (
    pub_key TEXT NOT NULL,
    entity TEXT NOT NULL,
    label TEXT NOT NULL,
    mentions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pub_key, entity, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_labels_by_entity ON entity_labels (entity);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS writers (
    writer TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    record TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied_batches (
    batch_id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
) WITHOUT ROWID;
"""


# An entity's label: the one with most mentions, ties to the alphabetically first (naming.majority_label).
MAJORITY_LABEL = ("(SELECT l.label FROM entity_labels l WHERE l.pub_key = e.pub_key AND l.entity = e.entity "
                  "ORDER BY l.mentions DESC, l.label ASC LIMIT 1)")


class SqliteStore:
    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 30.0,
                 days_kept: int | None = None):
        self.path = Path(path)
        self.days_kept = days_kept  # per-day entity rows older than this many days are dropped (None: kept)
        self.readonly = readonly
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = %d" % int(timeout * 1000))
        if not readonly:
            self._conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before apply() returns, and the journal forgets the batch right
            # after (with FULL too). NORMAL in WAL mode may lose the last commits on a power cut.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.executescript(SCHEMA + sqlite_days.DAY_SCHEMA)
        self._last_expiry = 0.0
        self.timeout = timeout
        self.lease: Lease | None = None  # set by claim_writer: commits stop once it is lost

    # -- the writer's lease ---------------------------------------------
    def claim_writer(self, writer: str, holder: Holder | None = None, *, ttl: float | None = None,
                     renew_every: float | None = None) -> Lease:
        """Claim `writer` for this process (a `writers` row); LeaseHeld names both when another live
        process holds it. The lease's heartbeat runs on a thread of its own with its own connection."""
        kw = {} if ttl is None else {"ttl": ttl}
        self.lease = Lease(writer, holder or current_holder(), SqliteLeases(self.path, self.timeout), **kw,
                           renew_every=renew_every).claim()
        return self.lease

    # -- writes ---------------------------------------------------------
    def apply(self, delta: Delta) -> int:
        if self.lease is not None:
            self.lease.ensure()
        try:
            return self._apply(delta)
        except sqlite3.OperationalError as exc:  # locked, busy, disk I/O: worth a retry
            raise StoreError(f"sqlite: {exc}") from exc

    def _apply(self, delta: Delta) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            try:
                conn.execute("INSERT INTO applied_batches VALUES (?, ?)", (delta.batch_id, now))
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                log.info("batch=%s already applied; skipped", delta.batch_id)
                return 0
            if delta.groups:  # one row per merged group, as if each were a batch: all or none
                marks = ",".join("?" * len(delta.groups))
                taken = [g for (g,) in conn.execute(f"SELECT batch_id FROM applied_batches WHERE batch_id IN ({marks})",
                                                    list(delta.groups))]
                if taken:
                    conn.execute("ROLLBACK")
                    raise GroupsRefused(taken)
                conn.executemany("INSERT INTO applied_batches VALUES (?, ?)", [(g, now) for g in delta.groups])
            writes = 1 + len(delta.groups)
            for post in delta.publications.values():
                conn.execute(
                    "INSERT INTO publications (key, name, articles, mentions) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET articles = articles + excluded.articles, "
                    "mentions = mentions + excluded.mentions",
                    (post.key, post.name, post.articles, post.total_mentions),
                )
                conn.executemany(
                    "INSERT INTO entities (pub_key, entity, mentions, articles) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pub_key, entity) DO UPDATE SET mentions = mentions + excluded.mentions, "
                    "articles = articles + excluded.articles",
                    [(post.key, e, m, post.entity_articles[e]) for e, m in post.mentions.items()],
                )
                rows = [(post.key, e, label, n) for e, per_label in post.labels.items()
                        for label, n in per_label.items()]
                conn.executemany(
                    "INSERT INTO entity_labels (pub_key, entity, label, mentions) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pub_key, entity, label) DO UPDATE SET mentions = mentions + excluded.mentions", rows)
                writes += 1 + len(post.mentions) + len(rows)
                writes += sqlite_days.add_days(conn, post.key, post.days, entity_days_from=self._first_kept_day())
            self._expire_markers()
            conn.execute("COMMIT")
            return writes
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _expire_markers(self) -> None:
        now = time.time()
        if now - self._last_expiry > 600:
            self._conn.execute("DELETE FROM applied_batches WHERE applied_at < ?", (now - MARKER_TTL_SECONDS,))
            first_kept = self._first_kept_day()
            if first_kept is not None:
                sqlite_days.drop_entity_days_before(self._conn, first_kept)
            self._last_expiry = now

    def _first_kept_day(self) -> str | None:
        return sqlite_days.first_kept_day(self.days_kept, datetime.now(timezone.utc).date())

    def check(self) -> None:
        """Prove the database takes writes (a read-only file or directory fails here)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR REPLACE INTO applied_batches VALUES ('__check__', 0)")
            finally:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc

    def claim_rules(self, rules: str) -> None:
        """Record the counting rules in a new database; refuse other rules, or counts without a record (v1)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'rules'").fetchone()
                recorded = row[0] if row else ("v1" if conn.execute("SELECT 1 FROM publications").fetchone() else None)
                if recorded is None:
                    conn.execute("INSERT INTO meta VALUES ('rules', ?)", (rules,))
                conn.execute("COMMIT")
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self.path}: {exc}") from exc
        if recorded is not None and recorded != rules:
            raise RulesRefused(rules_refusal(f"sqlite {self.path}", recorded, rules))

    # -- reads ----------------------------------------------------------
    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        if not self._has_schema():
            return []
        rows = self._conn.execute(
            "SELECT p.name, p.articles, (SELECT count(*) FROM entities e WHERE e.pub_key = p.key), p.mentions "
            "FROM publications p ORDER BY p.articles DESC, p.key LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        ).fetchall()
        return [PublicationSummary(publication=n, articles=a, entities=e, mentions=m) for n, a, e, m in rows]

    def summary(self, publication: str) -> PublicationSummary | None:
        if not self._has_schema():
            return None
        row = self._conn.execute(
            "SELECT p.name, p.articles, (SELECT count(*) FROM entities e WHERE e.pub_key = p.key), p.mentions "
            "FROM publications p WHERE p.key = ?", (publication_key(publication),)).fetchone()
        return PublicationSummary(publication=row[0], articles=row[1], entities=row[2],
                                  mentions=row[3]) if row else None

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        if not self._has_schema():
            return None
        key = publication_key(publication)
        if self._conn.execute("SELECT 1 FROM publications WHERE key = ?", (key,)).fetchone() is None:
            return None
        if not self._has_labels():  # a v1 database, read by a frontend: no labels to show or match
            label, where, args = "''", "", []
        else:
            label = MAJORITY_LABEL
            where = f" AND {MAJORITY_LABEL} IN ({','.join('?' * len(labels))})" if labels else ""
            args = sorted(labels or ())
        if labels and not args:
            return []
        rows = self._conn.execute(
            f"SELECT e.entity, {label}, e.mentions, e.articles FROM entities e WHERE e.pub_key = ?{where} "
            "ORDER BY e.mentions DESC, e.entity ASC LIMIT ? OFFSET ?",
            (key, *args, limit, offset),
        ).fetchall()
        return [EntityCount(entity=e, label=lb or "", mentions=m, articles=a) for e, lb, m, a in rows]

    def _has_labels(self) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_labels'").fetchone() is not None

    # -- reads over time (CONTRACT.md, "Time") ----------------------------
    def entities_in(self, publication: str | None, window: Window, limit: int = 20, offset: int = 0,
                    labels: frozenset[str] | None = None) -> list[dict] | None:
        """Entities summed over the window's days, by mentions desc, entity asc: one publication's (None if
        unknown), or across all publications (`publication` None; rows carry `publications`)."""
        if not self._has_schema() or not self._has_days():
            return None if publication is not None else []
        key = None
        if publication is not None:
            key = publication_key(publication)
            if not self._known(key):
                return None
        rows = sqlite_days.window_entities(self._conn, key, window, limit, offset, labels)
        return [{"entity": e, "label": lb, "mentions": m, "articles": a, "publications": n} for e, lb, m, a, n in rows]

    def top_entities(self, limit: int = 20, offset: int = 0, labels: frozenset[str] | None = None) -> list[dict]:
        """All time, across all publications: (entity, label, mentions, articles, publications)."""
        if not self._has_schema():
            return []
        grouped = "SELECT entity, sum(mentions) AS m, sum(articles) AS a, count(*) AS n FROM entities GROUP BY entity"
        label = sqlite_days.LABEL_ANYWHERE if self._has_labels() else "''"
        if labels:
            rows = self._conn.execute(
                f"SELECT g.entity, {label} AS lb, g.m, g.a, g.n FROM ({grouped}) g WHERE lb IN "
                f"({','.join('?' * len(labels))}) ORDER BY g.m DESC, g.entity ASC LIMIT ? OFFSET ?",
                (*sorted(labels), limit, offset)).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT g.entity, {label}, g.m, g.a, g.n "
                f"FROM ({grouped} ORDER BY m DESC, entity ASC LIMIT ? OFFSET ?) g "
                "ORDER BY g.m DESC, g.entity ASC", (limit, offset)).fetchall()
        return [{"entity": e, "label": lb or "", "mentions": m, "articles": a, "publications": n}
                for e, lb, m, a, n in rows]

    def days(self, publication: str, window: Window | None = None) -> tuple[Window, list[dict]] | None:
        """A publication's articles and mentions per day of the window (default: the 30 days ending with
        its latest day), zeros included; None if unknown."""
        key = publication_key(publication)
        if not self._has_schema() or not self._known(key):
            return None
        closed = self._closed(window, key)
        rows = sqlite_days.day_series(self._conn, key, closed) if closed.since else []
        return closed, [{"day": d, "articles": a, "mentions": m} for d, a, m in rows]

    def entity_days(self, publication: str, entity: str, window: Window | None = None
                    ) -> tuple[Window, list[dict]] | None:
        """One entity's mentions and articles per day (its key; zeros included); None if the publication is unknown."""
        key = publication_key(publication)
        if not self._has_schema() or not self._known(key):
            return None
        closed = self._closed(window, key)
        rows = sqlite_days.entity_series(self._conn, key, entity, closed) if closed.since else []
        return closed, [{"day": d, "mentions": m, "articles": a} for d, m, a in rows]

    def rising(self, publication: str | None, days: int, until: str | None, limit: int = 20,
               min_articles: int = 3) -> dict | None:
        """Entities whose share of articles rose most (core.days.rising_score); None if the publication is unknown."""
        key = None
        if publication is not None:
            key = publication_key(publication)
            if not self._has_schema() or not self._known(key):
                return None
        if not self._has_schema() or not self._has_days():
            return {"until": until, "days": days, "articles_now": 0, "articles_before": 0, "rows": []}
        until = until or sqlite_days.latest_day(self._conn, key)
        if until is None:
            return {"until": None, "days": days, "articles_now": 0, "articles_before": 0, "rows": []}
        now, before, rows = sqlite_days.rising(self._conn, key, days, until, limit, min_articles)
        return {"until": until, "days": days, "articles_now": now, "articles_before": before,
                "rows": [{"entity": e, "articles_now": a, "articles_before": b, "score": sc} for e, a, b, sc in rows]}

    def _closed(self, window: Window | None, key: str) -> Window:
        return series_window(window or Window(), sqlite_days.latest_day(self._conn, key))

    def _known(self, key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM publications WHERE key = ?", (key,)).fetchone() is not None

    def _has_days(self) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_days'").fetchone() is not None

    def _has_schema(self) -> bool:
        if not self.readonly:
            return True
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'publications'").fetchone()
        return row is not None

    def close(self) -> None:
        self._conn.close()


class SqliteLeases:
    """Lease rows in the store's own file; one short transaction each, on a connection per thread."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
        return conn

    def _txn(self, fn):
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreError(f"sqlite lease: {exc}") from exc

    @staticmethod
    def _row(conn, writer):
        row = conn.execute("SELECT holder, record, expires_at FROM writers WHERE writer = ?", (writer,)).fetchone()
        return (row[0], Holder.from_record(json.loads(row[1])), row[2]) if row else None

    def acquire(self, writer: str, holder: Holder, ttl: float) -> None:
        def claim(conn):
            now = time.time()
            row = self._row(conn, writer)
            if row and row[0] != holder.id and row[2] > now:
                if not holder_is_dead(row[1]):
                    raise LeaseHeld(refusal(writer, row[1], holder, row[2] - now))
                log.warning("writer %s: taking over the lease of %s (that process is gone)", writer,
                            row[1].describe())
            conn.execute("INSERT INTO writers VALUES (?, ?, ?, ?) ON CONFLICT (writer) DO UPDATE SET "
                         "holder = excluded.holder, record = excluded.record, expires_at = excluded.expires_at",
                         (writer, holder.id, json.dumps(holder.as_record()), now + ttl))
        self._txn(claim)

    def renew(self, writer: str, holder: Holder, ttl: float) -> Holder | None:
        def renew(conn):
            row = self._row(conn, writer)
            if row is None or row[0] != holder.id:
                return row[1] if row else Holder("", "nobody", 0, "-", "")
            conn.execute("UPDATE writers SET expires_at = ? WHERE writer = ?", (time.time() + ttl, writer))
            return None
        return self._txn(renew)

    def release(self, writer: str, holder: Holder) -> None:
        self._txn(lambda conn: conn.execute("DELETE FROM writers WHERE writer = ? AND holder = ?", (writer, holder.id)))
