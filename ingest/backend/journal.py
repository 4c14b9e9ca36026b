"""The durable intake: every accepted article is on disk before the frontend answers 202.

SQLite in WAL mode with `synchronous=FULL`, from the standard library: one file, crash-safe
transactions, concurrent readers, and no server. Each article is in exactly one durable state:

    accepted (batch_id NULL) -> in batch B (the batch's delta recorded before the store sees it)
    -> committed (deleted)                       or, after killing two workers, quarantined

`append` is a group commit: requests that arrive while a commit is in progress share the next
one (one fsync for many concurrent POSTs). At start `recover()` hands back the recorded batches,
to be committed again under their own ids (idempotent through the store's markers), and then the
accepted articles in order. A journal records the store it belongs to and refuses another.
A request's token (made by the frontend) is recorded with its answer in the commit that holds its
articles, so a request resent after a broken call gets the first answer and adds nothing; tokens are
forgotten after the client ids' retention.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.models import Aggregate, Delta
from ..core.protocol import QueueFull
from ..core.rules import MARKER_MARGIN_SECONDS, MARKER_TTL_SECONDS, publication_key

log = logging.getLogger("ingest.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS articles (
    seq INTEGER PRIMARY KEY,
    publication TEXT NOT NULL,
    content TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    batch_id TEXT,
    kills INTEGER NOT NULL DEFAULT 0,
    quarantined_at REAL,
    requeued INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS articles_by_batch ON articles (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS articles_requeued ON articles (seq) WHERE requeued = 1;
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    delta TEXT NOT NULL,
    articles INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_ids (
    pub_key TEXT NOT NULL,
    id TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (pub_key, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_ids_by_age ON client_ids (accepted_at);
CREATE TABLE IF NOT EXISTS request_tokens (
    token BLOB PRIMARY KEY,
    accepted INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    accepted_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_tokens_by_age ON request_tokens (accepted_at);
"""

MAX_TOKEN_CHARS = 64
# The frontend's tokens are 32 hex digits, kept as 16 bytes: a token row and its index entry take ~60 bytes
# (kept out of the article-text bound, --journal-size); at 1,000 requests/s for the 7 days of the default
# retention that is ~36 GB, so a busy backend wants a shorter --dedup-retention.


class JournalError(RuntimeError):
    """The journal cannot be used as asked (another store's, locked by another backend, unreadable)."""


@dataclass(slots=True)
class Entry:
    """One accepted article inside the backend. Its text stays on disk until a worker needs it."""

    seq: int
    publication: str
    bytes: int
    kills: int = 0
    content: str | None = None


@dataclass(slots=True)
class Recovered:
    batches: list = field(default_factory=list)   # [(batch_id, Delta, seqs)]
    entries: list = field(default_factory=list)   # [Entry] in acceptance order
    quarantined: int = 0


@dataclass(slots=True)
class _Request:
    posts: list
    token: str | bytes | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None
    error: Exception | None = None


def delta_to_json(delta: Delta) -> str:
    return json.dumps([[a.key, a.name, a.articles, a.mentions, a.entity_articles] for a in delta.publications.values()])


def delta_from_json(batch_id: str, text: str) -> Delta:
    return Delta(batch_id, {row[0]: Aggregate(*row) for row in json.loads(text)})


class Journal:
    """The journal file. `append` is called from the manager's threads; everything else from the
    arbiter's loop (its own connection)."""

    def __init__(self, path: Path, *, max_articles: int, max_bytes: int, retention: float = 7 * 86400,
                 sync: bool = True):
        self.path = Path(path)
        self.max_articles = max_articles
        self.max_bytes = max_bytes
        self.retention = retention
        self.sync = sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._conn = self._connect()
        self._conn.executescript(SCHEMA)
        os.chmod(self.path, 0o600)
        self._mutex = threading.Lock()   # guards the numbers below and _next_seq
        self._next_seq, self.articles, self.bytes = self._conn.execute(
            "SELECT coalesce(max(seq), 0) + 1, count(*), coalesce(sum(bytes), 0) FROM articles "
            "WHERE quarantined_at IS NULL").fetchone()
        self._requests: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._writer_conn = None
        self._recall_conn = None
        self._recall_lock = threading.Lock()
        self.fsyncs: list[float] = []  # seconds per group commit, the whole transaction (the last 1,000)
        self.commits = 0
        self.last_purge = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()

    # -- opening ----------------------------------------------------------
    def _take_lock(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(f"journal {self.path} is in use by another ingestiond "
                               "(give this one its own INGEST_VAR_DIR or --journal)") from None
        return fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = %s" % ("FULL" if self.sync else "OFF"))
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def claim(self, store: str) -> None:
        """Bind the journal to `store`; refuse if it holds work for another one."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'store'").fetchone()
        if row and row[0] != store:
            pending = self._conn.execute("SELECT count(*) FROM articles").fetchone()[0] + \
                self._conn.execute("SELECT count(*) FROM batches").fetchone()[0]
            if pending:
                raise JournalError(
                    f"journal {self.path} holds {pending} uncommitted articles/batches for store {row[0]}, not {store}: "
                    f"start once with --store {row[0]} to finish them, or move the journal away to discard them")
        self._conn.execute("INSERT INTO meta VALUES ('store', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           (store,))

    def writer_id(self) -> str:
        """A name for this backend that outlives restarts: its documents in Firestore's packed layout."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'writer'").fetchone()
        if row:
            return row[0]
        import secrets

        writer = "w" + secrets.token_hex(5)
        self._conn.execute("INSERT INTO meta VALUES ('writer', ?) ON CONFLICT (key) DO NOTHING", (writer,))
        return self._conn.execute("SELECT value FROM meta WHERE key = 'writer'").fetchone()[0]

    def recover(self) -> Recovered:
        out = Recovered()
        oldest = self._conn.execute("SELECT min(created_at) FROM batches").fetchone()[0]
        if oldest is not None and time.time() - oldest > MARKER_TTL_SECONDS - MARKER_MARGIN_SECONDS:
            raise JournalError(
                f"journal {self.path} holds a store batch recorded {int((time.time() - oldest) // 86400)} days ago: "
                "the store may have forgotten whether it was applied, so replaying it could count it twice. "
                "Check the store's counts, then remove the batch (`sqlite3 JOURNAL \"DELETE FROM batches\"` "
                "after deciding) or move the journal away")
        for batch_id, text, _articles in self._conn.execute("SELECT batch_id, delta, articles FROM batches ORDER BY created_at"):
            seqs = [s for (s,) in self._conn.execute("SELECT seq FROM articles WHERE batch_id = ?", (batch_id,))]
            out.batches.append((batch_id, delta_from_json(batch_id, text), seqs))
        rows = self._conn.execute("SELECT seq, publication, bytes, kills FROM articles "
                                  "WHERE batch_id IS NULL AND quarantined_at IS NULL ORDER BY seq")
        out.entries = [Entry(seq, pub, size, kills) for seq, pub, size, kills in rows]
        self._conn.execute("UPDATE articles SET requeued = 0 WHERE requeued != 0")
        out.quarantined = self._conn.execute(
            "SELECT count(*) FROM articles WHERE quarantined_at IS NOT NULL").fetchone()[0]
        return out

    # -- appends, from the manager's threads -----------------------------------
    def append(self, posts: list, token: str | None = None) -> dict:
        """Durably accept every post or none: {"accepted": n, "duplicates": m, "seqs": [...]}.

        A request `token` already journaled answers its stored result (`"replayed": True`) and adds nothing."""
        request = _Request(posts, _token_key(token))
        with self._cond:
            if self._closed:
                raise JournalError("journal closed")
            self._requests.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _write_loop(self) -> None:
        self._writer_conn = self._connect()
        while True:
            with self._cond:
                while not self._requests and not self._closed:
                    self._cond.wait(timeout=60)
                    self._maybe_purge()
                if not self._requests and self._closed:
                    return
                requests, self._requests = self._requests, []
            self._commit(requests)

    def _commit(self, requests: list[_Request]) -> None:
        conn = self._writer_conn
        started = time.monotonic()
        staged = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            with self._mutex:  # a snapshot for the bounds; the arbiter may lower them meanwhile (complete)
                articles, size, seq = self.articles, self.bytes, self._next_seq
            start_articles, start_size = articles, size
            for request in requests:
                try:
                    request.result, added, seq = self._stage(conn, request.posts, articles, size, seq, request.token)
                except QueueFull as exc:
                    request.error = exc
                    continue
                staged.append(request)
                articles += added[0]
                size += added[1]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = QueueFull(_describe_disk_error(exc))
            log.error("journal write failed: %s", exc)
            for request in requests:
                request.error = request.error or error
            for request in requests:
                request.done.set()
            return
        with self._mutex:  # add what this commit added: never overwrite what complete() took away
            self.articles += articles - start_articles
            self.bytes += size - start_size
            self._next_seq = seq
        self.commits += 1
        self.fsyncs.append(time.monotonic() - started)
        del self.fsyncs[:-1000]
        for request in requests:
            request.done.set()

    def _stage(self, conn, posts: list, articles: int, size: int, seq: int, token: str | bytes | None = None):
        """Insert one request's posts (or raise QueueFull); returns (result, (articles, bytes), next seq)."""
        now = time.time()
        if token is not None:  # a resent request: its first attempt's answer, even inside this same commit
            row = conn.execute("SELECT accepted, duplicates FROM request_tokens WHERE token = ?", (token,)).fetchone()
            if row is not None:
                return {"accepted": row[0], "duplicates": row[1], "entries": [], "replayed": True}, (0, 0), seq
        fresh, duplicates, seen = [], 0, set()
        for post in posts:
            publication, content, client_id = post[0], post[1], (post[2] if len(post) > 2 else None)
            if client_id is not None:
                key = (publication_key(publication), client_id)
                if key in seen or conn.execute("SELECT 1 FROM client_ids WHERE pub_key = ? AND id = ? AND accepted_at > ?",
                                               (key[0], key[1], now - self.retention)).fetchone():
                    duplicates += 1
                    continue
                seen.add(key)
            fresh.append((publication, content, client_id, len(content.encode("utf-8", "surrogatepass"))))
        added_bytes = sum(f[3] for f in fresh)
        if articles + len(fresh) > self.max_articles:
            raise QueueFull(f"input queue full ({articles}/{self.max_articles} articles)")
        if fresh and size + added_bytes > self.max_bytes:
            raise QueueFull(f"journal full ({size:,} of {self.max_bytes:,} bytes)")
        seqs = []
        for publication, content, client_id, nbytes in fresh:
            conn.execute("INSERT INTO articles (seq, publication, content, bytes, accepted_at) VALUES (?, ?, ?, ?, ?)",
                         (seq, publication, content, nbytes, now))
            if client_id is not None:
                conn.execute("INSERT INTO client_ids VALUES (?, ?, ?) ON CONFLICT (pub_key, id) DO UPDATE "
                             "SET accepted_at = excluded.accepted_at", (publication_key(publication), client_id, now))
            seqs.append((seq, publication, nbytes))
            seq += 1
        if token is not None:
            conn.execute("INSERT INTO request_tokens VALUES (?, ?, ?, ?)", (token, len(fresh), duplicates, now))
        result = {"accepted": len(fresh), "duplicates": duplicates, "entries": seqs}
        return result, (len(fresh), added_bytes), seq

    def _maybe_purge(self) -> None:
        """Forget client ids older than the retention window (at most every 10 minutes)."""
        now = time.time()
        if now - self.last_purge < 600 or self._writer_conn is None:
            return
        self.last_purge = now
        try:
            self._writer_conn.execute("DELETE FROM client_ids WHERE accepted_at < ?", (now - self.retention,))
            self._writer_conn.execute("DELETE FROM request_tokens WHERE accepted_at < ?", (now - self.retention,))
        except sqlite3.Error as exc:
            log.warning("journal: purging old client ids failed: %s", exc)

    def recall(self, token: str | None) -> dict | None:
        """The stored answer to a journaled request token, or None (read on a connection of its own:
        the manager's threads call this while the arbiter uses `_conn`)."""
        token = _token_key(token)
        if token is None:
            return None
        with self._recall_lock:
            if self._closed:  # cannot tell now: the client asks again (an OSError is a broken call to it)
                raise ConnectionAbortedError("journal closed")
            if self._recall_conn is None:
                self._recall_conn = self._connect()
            row = self._recall_conn.execute("SELECT accepted, duplicates FROM request_tokens WHERE token = ?",
                                            (token,)).fetchone()
        return None if row is None else {"accepted": row[0], "duplicates": row[1], "entries": [], "replayed": True}

    # -- the arbiter's side -------------------------------------------------------
    def contents(self, seqs: list[int]) -> dict[int, str]:
        marks = ",".join("?" * len(seqs))
        return dict(self._conn.execute(f"SELECT seq, content FROM articles WHERE seq IN ({marks})", seqs))

    def record_batch(self, batch) -> None:
        """Bind the batch's articles to its id and keep its delta: before any store sees it."""
        conn = self._conn
        seqs = batch.seqs
        with _transaction(conn):
            conn.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
                         (batch.delta.batch_id, delta_to_json(batch.delta), batch.articles, time.time()))
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                conn.execute(f"UPDATE articles SET batch_id = ? WHERE seq IN ({','.join('?' * len(chunk))})",
                             [batch.delta.batch_id, *chunk])

    def complete(self, batch) -> None:
        """The store committed the batch: its articles leave the journal."""
        conn = self._conn
        with _transaction(conn):
            removed, nbytes = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM articles WHERE batch_id = ?",
                                           (batch.delta.batch_id,)).fetchone()
            conn.execute("DELETE FROM articles WHERE batch_id = ?", (batch.delta.batch_id,))
            conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch.delta.batch_id,))
        with self._mutex:
            self.articles -= removed
            self.bytes -= nbytes

    def suspect(self, entries: list) -> None:
        with _transaction(self._conn):
            self._conn.executemany("UPDATE articles SET kills = ? WHERE seq = ?", [(e.kills, e.seq) for e in entries])

    def quarantine(self, entries: list) -> None:
        now = time.time()
        with _transaction(self._conn):
            self._conn.executemany("UPDATE articles SET kills = ?, quarantined_at = ? WHERE seq = ?",
                                   [(e.kills, now, e.seq) for e in entries])
        with self._mutex:
            self.articles -= len(entries)
            self.bytes -= sum(e.bytes for e in entries)

    def requeued(self) -> list[Entry]:
        """Quarantined articles an operator sent back (`ingestiond quarantine retry`)."""
        rows = self._conn.execute("SELECT seq, publication, bytes FROM articles WHERE requeued = 1 "
                                  "AND quarantined_at IS NULL AND batch_id IS NULL ORDER BY seq").fetchall()
        if not rows:
            return []
        with _transaction(self._conn):
            self._conn.executemany("UPDATE articles SET requeued = 0 WHERE seq = ?", [(r[0],) for r in rows])
        with self._mutex:
            self.articles += len(rows)
            self.bytes += sum(r[2] for r in rows)
        return [Entry(seq, pub, size) for seq, pub, size in rows]

    def oldest_age(self) -> float:
        # seq grows with acceptance: the first live row is the oldest, found without scanning a backlog
        row = self._conn.execute("SELECT accepted_at FROM articles WHERE quarantined_at IS NULL "
                                 "ORDER BY seq LIMIT 1").fetchone()
        return round(time.time() - row[0], 1) if row and row[0] else 0.0

    def stats(self) -> dict:
        with self._mutex:
            articles, nbytes = self.articles, self.bytes
        fsyncs = sorted(self.fsyncs)
        return {
            "journal_articles": articles,
            "journal_bytes": nbytes,
            "journal_capacity_bytes": self.max_bytes,
            "journal_commits": self.commits,
            "journal_fsync_p50_seconds": _quantile(fsyncs, 0.5),
            "journal_fsync_p99_seconds": _quantile(fsyncs, 0.99),
        }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(10)
        with self._recall_lock:
            recall_conn, self._recall_conn = self._recall_conn, None
        for conn in (self._writer_conn, recall_conn, self._conn):
            try:
                if conn is not None:
                    conn.close()
            except sqlite3.Error:
                pass
        os.close(self._lock_fd)


def _token_key(token) -> str | bytes | None:
    """The key a request token is kept under: 32 hex digits (the frontend's) as their 16 bytes."""
    if token is None:
        return None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(f"a request token is a string of 1 to {MAX_TOKEN_CHARS} characters")
    if len(token) == 32:
        try:
            return bytes.fromhex(token)
        except ValueError:
            pass
    return token


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return round(values[min(len(values) - 1, int(q * len(values)))], 6)


def _describe_disk_error(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13 or errno.ENOSPC == getattr(exc, "errno", None):
        return "the disk under the journal is full; retry later"
    return f"the journal cannot be written ({text}); retry later"


class _transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False
