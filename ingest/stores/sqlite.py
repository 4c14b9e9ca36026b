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
from pathlib import Path

from ..core.models import Delta, EntityCount, PublicationSummary
from ..core.rules import MARKER_TTL_SECONDS, publication_key
from .base import GroupsRefused, RulesRefused, StoreError, rules_refusal
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
    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 30.0):
        self.path = Path(path)
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
            self._conn.executescript(SCHEMA)
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
                rows = [(post.key, e, label, n) for e, per_label in post.labels.items() for label, n in per_label.items()]
                conn.executemany(
                    "INSERT INTO entity_labels (pub_key, entity, label, mentions) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (pub_key, entity, label) DO UPDATE SET mentions = mentions + excluded.mentions", rows)
                writes += 1 + len(post.mentions) + len(rows)
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
            self._last_expiry = now

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
        return PublicationSummary(publication=row[0], articles=row[1], entities=row[2], mentions=row[3]) if row else None

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
