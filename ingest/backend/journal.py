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
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

from ..core.days import DayCounts
from ..core.models import Aggregate, Delta
from ..core.protocol import QueueFull
from ..core.rules import MARKER_MARGIN_SECONDS, MARKER_TTL_SECONDS, publication_key

log = logging.getLogger("ingest.journal")

# The client-id table (a post's `id`, remembered for --dedup-retention) is bounded in bytes: a row is
# estimated at twice its key (the table and its by-age index) plus this much. When over the bound the
# oldest ids are forgotten first; expired ids and evictions go PURGE_SLICE rows per transaction, one
# slice between group commits, so a purge never holds up an append for long.
CLIENT_ID_ROW_OVERHEAD = 40
PURGE_SLICE = 1000
PURGE_EVERY = 600.0  # seconds between purges of expired ids
# a request token needs to outlive its request's retries only (INGEST_REQUEST_DEADLINE, 30 s): an
# hour is ample, and keeps the table small however many id-less requests come (~60 bytes a row)
TOKEN_RETENTION = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS articles (
    seq INTEGER PRIMARY KEY,
    publication TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    batch_id TEXT,
    kills INTEGER NOT NULL DEFAULT 0,
    quarantined_at REAL,
    requeued INTEGER NOT NULL DEFAULT 0,
    day TEXT  -- the UTC day it counts on (its `published`, else its acceptance): a replay counts the same day
);
-- the text apart from the row: binding a batch (batch_id) or a kill count rewrites the small row,
-- not 4 KB of text (the text is written to disk twice in WAL mode, not four times)
CREATE TABLE IF NOT EXISTS texts (seq INTEGER PRIMARY KEY, content TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS articles_text_gone AFTER DELETE ON articles BEGIN
    DELETE FROM texts WHERE seq = old.seq;
END;
CREATE INDEX IF NOT EXISTS articles_by_batch ON articles (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS articles_requeued ON articles (seq) WHERE requeued = 1;
CREATE INDEX IF NOT EXISTS articles_quarantined ON articles (seq) WHERE quarantined_at IS NOT NULL;
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
# (kept out of the article-text bound, --journal-size); kept TOKEN_RETENTION (an hour): ~216 MB at
# 1,000 requests/s.


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
    recorded: dict = field(default_factory=dict)  # batch_id -> when it was recorded (time.time())
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
    """{"rules": ..., "publications": [[key, name, articles, mentions, entity_articles, labels, days], ...]};
    days: {day: [articles, mentions, {entity: [mentions, articles]}]}."""
    return json.dumps({"rules": delta.rules, "publications": [
        [a.key, a.name, a.articles, a.mentions, a.entity_articles, a.labels,
         {d: [c.articles, c.mentions, c.entities] for d, c in a.days.items()}] for a in delta.publications.values()]})


def delta_from_json(batch_id: str, text: str) -> Delta:
    """A journal written before counting rules v2 holds a bare list of rows: rules "v1", no labels; one
    written before per-day counts has no days (the batch adds to the all-time counts only)."""
    data = json.loads(text)
    rules, rows = ("v1", data) if isinstance(data, list) else (data["rules"], data["publications"])
    publications = {}
    for row in rows:
        days = {d: DayCounts(a, m, e) for d, (a, m, e) in (row[6] if len(row) > 6 else {}).items()}
        publications[row[0]] = Aggregate(*row[:6], days=days)
    return Delta(batch_id, publications, rules=rules)


class Journal:
    """The journal file. `append` is called from the manager's threads; everything else from the
    arbiter's loop (its own connection)."""

    def __init__(self, path: Path, *, max_articles: int, max_bytes: int, retention: float = 7 * 86400,
                 sync: bool = True, max_quarantine: int = 1000, max_client_id_bytes: int = 2 * 1024**3):
        self.path = Path(path)
        self.max_articles = max_articles
        self.max_bytes = max_bytes
        self.max_quarantine = max_quarantine  # quarantined articles; at the bound new posts are refused
        self.max_client_id_bytes = max_client_id_bytes
        self.retention = retention
        self.sync = sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._conn = self._connect()
        self._conn.executescript(SCHEMA)
        _move_texts_apart(self._conn)
        _add_days(self._conn)
        os.chmod(self.path, 0o600)
        self._mutex = threading.Lock()   # guards the numbers below and _next_seq
        self._next_seq, self.articles, self.bytes = self._conn.execute(
            "SELECT coalesce(max(seq), 0) + 1, count(*), coalesce(sum(bytes), 0) FROM articles "
            "WHERE quarantined_at IS NULL").fetchone()
        # quarantined articles stay on disk: they count against both bounds (see refresh_quarantine)
        self.quarantined_articles, self.quarantined_bytes = self._conn.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM articles WHERE quarantined_at IS NOT NULL").fetchone()
        self.client_id_rows, self.client_id_bytes = self._conn.execute(
            f"SELECT count(*), coalesce(sum({_ID_BYTES}), 0) FROM client_ids").fetchone()
        self.client_ids_evicted = 0   # forgotten before their retention ended (the byte bound)
        self._staged_ids = [0, 0]     # rows, bytes added by the transaction in progress (writer thread)
        self._purging = False
        self._evicting = False
        self._next_purge = 0.0
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
        conn.execute("PRAGMA secure_delete = FAST")  # committed text is not overwritten with zeros: 2 page writes fewer
        return conn

    def claim(self, store: str) -> None:
        """Bind the journal to `store`; refuse if it holds work for another one."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'store'").fetchone()
        if row and row[0] != store:
            pending = self._conn.execute("SELECT count(*) FROM articles").fetchone()[0] + \
                self._conn.execute("SELECT count(*) FROM batches").fetchone()[0]
            if pending:
                raise JournalError(
                    f"journal {self.path} holds {pending} uncommitted articles/batches for store {row[0]}, not "
                    f"{store}: start once with --store {row[0]} to finish them, or move the journal away to "
                    "discard them")
        self._conn.execute("INSERT INTO meta VALUES ('store', ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           (store,))

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str, *, replace: bool = True) -> None:
        """Record a fact about this journal (`replace=False`: only if it has none for `key`)."""
        self._conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO "
                           + ("UPDATE SET value = excluded.value" if replace else "NOTHING"), (key, value))

    @staticmethod
    def peek_meta(path: Path, key: str) -> str | None:
        """A journal file's fact, read without opening (or locking) it as a Journal; None if unreadable."""
        if not Path(path).exists():
            return None
        try:
            conn = sqlite3.connect(path, timeout=5)  # not read-only: a WAL left by a SIGKILL is read too
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def writer_id(self) -> str:
        """A name for this backend that outlives restarts: its documents in Firestore's packed layout."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'writer'").fetchone()
        if row:
            return row[0]
        import secrets

        writer = "w" + secrets.token_hex(5)
        self._conn.execute("INSERT INTO meta VALUES ('writer', ?) ON CONFLICT (key) DO NOTHING", (writer,))
        return self._conn.execute("SELECT value FROM meta WHERE key = 'writer'").fetchone()[0]

    def recover(self, rules: str | None = None) -> Recovered:
        """What the journal holds; with `rules`, a recorded batch counted under other rules (another
        alias file, an older version) is refused: applying it would mix two ways of counting."""
        out = Recovered()
        oldest = self._conn.execute("SELECT min(created_at) FROM batches").fetchone()[0]
        if oldest is not None and time.time() - oldest > MARKER_TTL_SECONDS - MARKER_MARGIN_SECONDS:
            raise JournalError(
                f"journal {self.path} holds a store batch recorded {int((time.time() - oldest) // 86400)} days ago: "
                "the store may have forgotten whether it was applied, so replaying it could count it twice. "
                f"`ingestiond journal --journal {self.path} list` shows it; check the store's counts, then "
                "`ingestiond journal drop-batch ID` if the store has it (its articles leave the journal), or "
                "`ingestiond journal requeue-batch ID` if it does not (its articles are counted again)")
        for batch_id, text, _articles, created in self._conn.execute(
                "SELECT batch_id, delta, articles, created_at FROM batches ORDER BY created_at"):
            seqs = [s for (s,) in self._conn.execute("SELECT seq FROM articles WHERE batch_id = ?", (batch_id,))]
            delta = delta_from_json(batch_id, text)
            if rules is not None and delta.rules != rules:
                raise JournalError(
                    f"journal {self.path} holds store batch {batch_id} counted under rules {delta.rules}, but this "
                    f"backend counts under {rules}: start once with the settings it was counted with (the same "
                    f"--aliases) to commit it, or move the journal away to discard it")
            out.batches.append((batch_id, delta, seqs))
            out.recorded[batch_id] = created
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
                while not self._requests and not self._closed and not self._purge_due():
                    self._cond.wait(timeout=min(60.0, max(0.01, self._next_purge - time.time())))
                if not self._requests and self._closed:
                    return
                requests, self._requests = self._requests, []
            if requests:
                self._commit(requests)
            self._purge_slice()  # outside the lock, one slice at most: the next requests wait one slice

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
                ids_before = list(self._staged_ids)
                conn.execute("SAVEPOINT request")
                try:
                    request.result, added, seq = self._stage(conn, request.posts, articles, size, seq, request.token)
                except (QueueFull, ValueError, TypeError, UnicodeError) as exc:  # this request alone fails
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")
                    self._staged_ids = ids_before
                    if not isinstance(exc, QueueFull):
                        log.error("journal: a request could not be written and was refused: %s: %s",
                                  type(exc).__name__, exc)
                        exc = ValueError(f"the journal cannot keep this request: {type(exc).__name__}")
                    request.error = exc
                    continue
                conn.execute("RELEASE request")
                staged.append(request)
                articles += added[0]
                size += added[1]
            conn.execute("COMMIT")
        except Exception as exc:  # the disk, or anything else: nothing of this commit is kept; the writer goes on
            self._staged_ids = [0, 0]
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = QueueFull(_describe_disk_error(exc)) if isinstance(exc, sqlite3.Error) else \
                QueueFull(f"the journal cannot be written ({type(exc).__name__}); retry later")
            log.error("journal write failed: %s: %s", type(exc).__name__, exc)
            for request in requests:
                request.error = request.error or error
            for request in requests:
                request.done.set()
            return
        with self._mutex:  # add what this commit added: never overwrite what complete() took away
            self.articles += articles - start_articles
            self.bytes += size - start_size
            self._next_seq = seq
            self.client_id_rows += self._staged_ids[0]
            self.client_id_bytes += self._staged_ids[1]
        self._staged_ids = [0, 0]
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
        today = datetime.fromtimestamp(now, timezone.utc).date().isoformat()
        for post in posts:
            publication, content, client_id = post[0], post[1], (post[2] if len(post) > 2 else None)
            day = post[3] if len(post) > 3 and post[3] is not None else today
            if client_id is not None:
                key = (publication_key(publication), client_id)
                if key in seen or conn.execute("SELECT 1 FROM client_ids WHERE pub_key = ? AND id = ? AND "
                                               "accepted_at > ?", (key[0], key[1], now - self.retention)).fetchone():
                    duplicates += 1
                    continue
                seen.add(key)
            fresh.append((publication, content, client_id, len(content.encode("utf-8", "surrogatepass")), day))
        added_bytes = sum(f[3] for f in fresh)
        q_articles, q_bytes = self.quarantined_articles, self.quarantined_bytes  # held on disk too
        if fresh and q_articles >= self.max_quarantine:
            raise QueueFull(f"the quarantine is full ({q_articles} articles that killed workers; "
                            "`ingestiond quarantine list`, then retry or drop them)")
        if articles + q_articles + len(fresh) > self.max_articles:
            raise QueueFull(f"input queue full ({articles + q_articles}/{self.max_articles} articles)")
        if fresh and size + q_bytes + added_bytes > self.max_bytes:
            raise QueueFull(f"journal full ({size + q_bytes:,} of {self.max_bytes:,} bytes)")
        seqs = []
        for publication, content, client_id, nbytes, day in fresh:
            conn.execute("INSERT INTO articles (seq, publication, bytes, accepted_at, day) VALUES (?, ?, ?, ?, ?)",
                         (seq, publication, nbytes, now, day))
            conn.execute("INSERT INTO texts VALUES (?, ?)", (seq, content))
            if client_id is not None:
                conn.execute("INSERT INTO client_ids VALUES (?, ?, ?) ON CONFLICT (pub_key, id) DO UPDATE "
                             "SET accepted_at = excluded.accepted_at", (publication_key(publication), client_id, now))
                self._stage_id(publication_key(publication), client_id)
            seqs.append((seq, publication, nbytes))
            seq += 1
        if token is not None:
            conn.execute("INSERT INTO request_tokens VALUES (?, ?, ?, ?)", (token, len(fresh), duplicates, now))
        result = {"accepted": len(fresh), "duplicates": duplicates, "entries": seqs}
        return result, (len(fresh), added_bytes), seq

    def _stage_id(self, pub_key: str, client_id: str) -> None:
        """Count a client-id row into the transaction in progress (an estimate: see CLIENT_ID_ROW_OVERHEAD)."""
        self._staged_ids[0] += 1
        self._staged_ids[1] += 2 * (len(pub_key.encode("utf-8", "surrogatepass"))
                                    + len(client_id.encode("utf-8", "surrogatepass"))) + CLIENT_ID_ROW_OVERHEAD

    def _purge_due(self) -> bool:
        return self._purging or time.time() >= self._next_purge or self.client_id_bytes > self.max_client_id_bytes

    def _purge_slice(self) -> None:
        """Forget up to PURGE_SLICE client ids, oldest first: expired ones, or any while the table is
        over its byte bound (down to 90% of it). One short transaction; the writer serves appends
        between slices."""
        if self._writer_conn is None or not self._purge_due():
            return
        now = time.time()
        self._purging = True
        with self._mutex:
            over = self.client_id_bytes > self.max_client_id_bytes * (0.9 if self._evicting else 1.0)
        self._evicting = over
        cutoff = float("inf") if over else now - self.retention
        conn = self._writer_conn
        try:
            with _transaction(conn):
                rows = conn.execute(f"SELECT pub_key, id, accepted_at, {_ID_BYTES} FROM client_ids "
                                    "WHERE accepted_at < ? ORDER BY accepted_at LIMIT ?",
                                    (cutoff, PURGE_SLICE)).fetchall()
                conn.executemany("DELETE FROM client_ids WHERE pub_key = ? AND id = ?", [(r[0], r[1]) for r in rows])
                tokens = conn.execute("DELETE FROM request_tokens WHERE token IN (SELECT token FROM request_tokens "
                                      "WHERE accepted_at < ? ORDER BY accepted_at LIMIT ?)",
                                      (now - TOKEN_RETENTION, PURGE_SLICE)).rowcount
        except sqlite3.Error as exc:
            log.warning("journal: purging old client ids failed: %s", exc)
            self._purging, self._evicting, self._next_purge = False, False, now + 60
            return
        evicted = sum(1 for r in rows if r[2] >= now - self.retention)
        with self._mutex:
            self.client_id_rows -= len(rows)
            self.client_id_bytes -= sum(r[3] for r in rows)
            self.client_ids_evicted += evicted
        if evicted:
            log.warning("journal: the client-id table is over --client-ids-size (%d bytes): forgot the %d oldest ids "
                        "before their retention ended (a retry of those posts would count again)",
                        self.max_client_id_bytes, evicted)
        if len(rows) < PURGE_SLICE and tokens < PURGE_SLICE and not self._evicting:
            self._purging = False
            self._next_purge = now + PURGE_EVERY
        self.last_purge = now

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
        return dict(self._conn.execute(f"SELECT seq, content FROM texts WHERE seq IN ({marks})", seqs))

    def texts_and_days(self, seqs: list[int]) -> dict[int, tuple[str, str]]:
        """{seq: (text, day)} of articles still in the journal: what a worker needs of them."""
        marks = ",".join("?" * len(seqs))
        return {seq: (text, day) for seq, text, day in self._conn.execute(
            f"SELECT t.seq, t.content, {_DAY} FROM texts t JOIN articles a ON a.seq = t.seq WHERE t.seq IN ({marks})",
            seqs)}

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

    def discard(self, seqs: list[int]) -> None:
        """Forget articles that left by another way than a store commit (a fleet's dead letter)."""
        conn = self._conn
        removed = nbytes = 0
        with _transaction(conn):
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                marks = ",".join("?" * len(chunk))
                n, b = conn.execute(f"SELECT count(*), coalesce(sum(bytes), 0) FROM articles WHERE seq IN ({marks}) "
                                    "AND quarantined_at IS NULL", chunk).fetchone()
                conn.execute(f"DELETE FROM articles WHERE seq IN ({marks})", chunk)
                removed, nbytes = removed + n, nbytes + b
        with self._mutex:
            self.articles -= removed
            self.bytes -= nbytes

    # -- an operator's decisions on recorded batches (`ingestiond journal`, backend stopped) -----------
    @staticmethod
    def describe_batches(conn: sqlite3.Connection) -> list[dict]:
        """Every recorded batch, oldest first: id, when recorded, its articles and their bytes."""
        rows = conn.execute(
            "SELECT b.batch_id, b.created_at, b.articles, count(a.seq), coalesce(sum(a.bytes), 0), b.delta "
            "FROM batches b LEFT JOIN articles a ON a.batch_id = b.batch_id "
            "GROUP BY b.batch_id ORDER BY b.created_at").fetchall()
        out = []
        for batch_id, created, recorded_articles, articles, nbytes, delta in rows:
            publications = delta_from_json(batch_id, delta).publications
            out.append({"batch_id": batch_id, "recorded_at": created, "age_seconds": round(time.time() - created, 1),
                        "articles": articles, "recorded_articles": recorded_articles, "bytes": nbytes,
                        "publications": len(publications)})
        return out

    def drop_batch(self, batch_id: str) -> int:
        """The operator found the batch applied in the store: it and its articles leave the journal
        (what `complete` does). Returns the articles removed; KeyError if there is no such batch."""
        conn = self._conn
        with _transaction(conn):
            if not conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone():
                raise KeyError(batch_id)
            removed, nbytes = conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM articles WHERE batch_id = ?",
                                           (batch_id,)).fetchone()
            conn.execute("DELETE FROM articles WHERE batch_id = ?", (batch_id,))
            conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
        with self._mutex:
            self.articles -= removed
            self.bytes -= nbytes
        return removed

    def requeue_batch(self, batch_id: str) -> int:
        """The operator found the batch NOT applied: its articles are accepted again (counted anew
        under a new batch id at the next start) and the batch is forgotten."""
        conn = self._conn
        with _transaction(conn):
            if not conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone():
                raise KeyError(batch_id)
            moved = conn.execute("UPDATE articles SET batch_id = NULL WHERE batch_id = ?", (batch_id,)).rowcount
            conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
        return moved

    # -- an operator's decisions on the quarantine (`ingestiond quarantine`, running or not) -----------
    @staticmethod
    def quarantined_rows(conn: sqlite3.Connection, columns: str, seqs: list[int] | None = None) -> list[tuple]:
        """The quarantined articles (those of `seqs` only, if given), by seq."""
        query = f"SELECT {columns} FROM articles LEFT JOIN texts USING (seq) WHERE quarantined_at IS NOT NULL"
        if seqs:
            return conn.execute(query + f" AND seq IN ({','.join('?' * len(seqs))}) ORDER BY seq", seqs).fetchall()
        return conn.execute(query + " ORDER BY seq").fetchall()

    @staticmethod
    def retry_quarantined(conn: sqlite3.Connection, seqs: list[int]) -> None:
        """Send them back to the workers: a running backend takes them (`requeued`) within a second."""
        conn.executemany("UPDATE articles SET quarantined_at = NULL, kills = 0, requeued = 1 WHERE seq = ?",
                         [(s,) for s in seqs])

    @staticmethod
    def drop_quarantined(conn: sqlite3.Connection, seqs: list[int]) -> None:
        conn.executemany("DELETE FROM articles WHERE seq = ? AND quarantined_at IS NOT NULL", [(s,) for s in seqs])

    def suspect(self, entries: list) -> None:
        with _transaction(self._conn):
            self._conn.executemany("UPDATE articles SET kills = ? WHERE seq = ?", [(e.kills, e.seq) for e in entries])

    def quarantine(self, entries: list) -> None:
        """Never refused: the article is on disk already (quarantining it takes no room); a full
        quarantine refuses new posts instead (see _stage)."""
        now = time.time()
        with _transaction(self._conn):
            self._conn.executemany("UPDATE articles SET kills = ?, quarantined_at = ? WHERE seq = ?",
                                   [(e.kills, now, e.seq) for e in entries])
        with self._mutex:
            self.articles -= len(entries)
            self.bytes -= sum(e.bytes for e in entries)
            self.quarantined_articles += len(entries)
            self.quarantined_bytes += sum(e.bytes for e in entries)

    def refresh_quarantine(self) -> int:
        """Recount the quarantine (an operator may drop or retry articles while the backend runs)."""
        count, nbytes = self._conn.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM articles "
                                           "WHERE quarantined_at IS NOT NULL").fetchone()
        with self._mutex:
            self.quarantined_articles, self.quarantined_bytes = count, nbytes
        return count

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
        """journal_articles: accepted, not yet committed; journal_bytes: all the text held against the
        bound, the quarantine's included."""
        with self._mutex:
            articles, nbytes = self.articles, self.bytes
            q_articles, q_bytes = self.quarantined_articles, self.quarantined_bytes
        fsyncs = sorted(self.fsyncs)
        return {
            "journal_articles": articles,
            "journal_bytes": nbytes + q_bytes,
            "journal_capacity_bytes": self.max_bytes,
            "journal_quarantined_articles": q_articles,
            "journal_quarantined_bytes": q_bytes,
            "journal_quarantine_capacity_articles": self.max_quarantine,
            "quarantine_full": q_articles >= self.max_quarantine,
            "journal_capacity_articles": self.max_articles,
            "journal_room_bytes": max(0, self.max_bytes - nbytes - q_bytes),   # what a client can still send
            "journal_room_articles": max(0, self.max_articles - articles - q_articles),
            "client_id_rows": self.client_id_rows,
            "client_id_bytes": self.client_id_bytes,
            "client_id_capacity_bytes": self.max_client_id_bytes,
            "client_ids_evicted": self.client_ids_evicted,
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


def _add_days(conn: sqlite3.Connection) -> None:
    """A journal written before articles had a day: they count on the day they were accepted (read with
    `_DAY`, which says so for a row whose day is NULL)."""
    if "day" not in {row[1] for row in conn.execute("PRAGMA table_info(articles)")}:
        conn.execute("ALTER TABLE articles ADD COLUMN day TEXT")


_DAY = "coalesce(a.day, date(a.accepted_at, 'unixepoch'))"


def _move_texts_apart(conn: sqlite3.Connection) -> None:
    """A journal written before texts had their own table: move them there, once."""
    if "content" not in {row[1] for row in conn.execute("PRAGMA table_info(articles)")}:
        return
    log.warning("journal: moving article texts to their own table (once, for a journal of an older version)")
    with _transaction(conn):
        conn.execute("INSERT OR IGNORE INTO texts SELECT seq, content FROM articles")
        conn.execute("ALTER TABLE articles DROP COLUMN content")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return round(values[min(len(values) - 1, int(q * len(values)))], 6)


def _describe_disk_error(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13 or errno.ENOSPC == getattr(exc, "errno", None):
        return "the disk under the journal is full; retry later"
    return f"the journal cannot be written ({text}); retry later"


_ID_BYTES = f"2 * (length(CAST(pub_key AS BLOB)) + length(CAST(id AS BLOB))) + {CLIENT_ID_ROW_OVERHEAD}"


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
