"""What both Firestore layouts share: the collection names, the client and its retries, the
translation of Google's errors into the store's, the batch markers and the layout record.

Markers: every commit `create`s `ingest_batches/{marker}` in the same commit as its writes, so a
retry of a commit whose marker exists fails with AlreadyExists and is skipped (exactly once).
They carry `expires_at` (now + 30 days, longer than any journal entry may wait) for a TTL policy
(deploy/firestore.ttl.md).
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timedelta, timezone

from ... import testing
from ...core.models import Delta
from ...core.rules import MARKER_TTL_SECONDS, doc_id
from ..base import PermanentStoreError, RulesRefused, StoreError, rules_refusal

log = logging.getLogger("ingest.store.firestore")

# collections, each named here only
PUBLICATIONS, ENTITIES = "publications", "ent"   # the entities layout: publications/{pub}/ent/{entity}
PUBS, SUMS, SHARDS = "pubs", "sums", "shards"    # the packed layout: pubs/{pub}/sums/{writer}, .../shards/{writer}-{n}
DAYS = "days"                                     # ... and pubs/{pub}/days/{writer}-{day}[-{n}]: counts per UTC day
MARKERS = "ingest_batches"                        # one per commit: exactly once
META = "ingest_meta"  # `layout`, `rules`: the database's layout and counting rules; `health-{writer}`: per saver
WRITERS = "ingest_writers"                        # the writer leases
ARCHIVE = "archive"      # the packed layout's writer that retired writers are folded into (compaction.py)
COMPACTOR = "compactor"  # the lease one compaction at a time holds

LAYOUTS = ("packed", "entities")
MAX_WRITES = 500  # per commit, marker included; the emulator accepts more, real Firestore may not
MARKER_TTL = timedelta(seconds=MARKER_TTL_SECONDS)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,199}")


def safe_id(name: str, prefix: str) -> str:
    """`name` itself when it is a readable, valid document id; `prefix` + its digest otherwise."""
    if _SAFE_ID.fullmatch(name) and not name.startswith("__"):
        return name
    return prefix + doc_id(name)


def marker_base(batch_id: str) -> str:
    """The batch id itself when it is a readable, valid document id; its digest otherwise."""
    return safe_id(batch_id, "b")


def group_marker_id(group: str) -> str:
    """A merged group's marker: the id its first marker would have in a batch of its own."""
    return f"{marker_base(group)}-0"


def create_group_markers(db, batch, delta: Delta, expires_at) -> list[str]:
    """The `create`s of a merged batch's group markers (in its one commit); their paths."""
    paths = []
    for group in delta.groups:
        ref = db.collection(MARKERS).document(group_marker_id(group))
        batch.create(ref, {"batch_id": delta.batch_id, "group": group, "chunk": 0, "chunks": 1,
                           "expires_at": expires_at})
        paths.append(ref.path)
    return paths


def recorded_groups(db, delta: Delta, retry, timeout) -> list[str]:
    """The groups of a merged batch whose marker exists (another batch recorded them)."""
    refs = [db.collection(MARKERS).document(group_marker_id(g)) for g in delta.groups]
    groups = {ref.path: g for ref, g in zip(refs, delta.groups, strict=True)}
    return sorted(groups[s.reference.path] for s in db.get_all(refs, retry=retry, timeout=timeout) if s.exists)


class AppliedElsewhere(Exception):
    """A group's first marker was created by a merged batch: the group was applied whole, in that commit."""


# -- errors ------------------------------------------------------------------

def _errors():
    from google.api_core import exceptions as gexc

    transient = (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.Aborted, gexc.InternalServerError,
                 gexc.ResourceExhausted, gexc.TooManyRequests, gexc.GatewayTimeout, gexc.Unknown,
                 gexc.RetryError, gexc.Cancelled, ConnectionError, TimeoutError)
    try:
        import grpc

        transient += (grpc.RpcError,)  # unwrapped channel errors (streams): treat as a blip
    except ImportError:  # pragma: no cover
        pass
    try:
        from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError

        transient += (TransportError,)
        permanent_auth: tuple = (DefaultCredentialsError, RefreshError)
    except ImportError:  # pragma: no cover - google-auth always ships with the client
        permanent_auth = ()
    return gexc, transient, permanent_auth


class translated:
    """`with translated("what"):` maps Google errors to StoreError (retry) / PermanentStoreError (do not);
    anything else (our own bugs) passes unchanged."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (StoreError, PermanentStoreError)) or not isinstance(exc, Exception):
            return False
        gexc, transient, permanent_auth = _errors()
        if isinstance(exc, transient):
            raise StoreError(f"firestore {self.what}: {type(exc).__name__}: {exc}") from exc
        if isinstance(exc, permanent_auth) or isinstance(exc, gexc.GoogleAPICallError):
            raise PermanentStoreError(f"firestore {self.what}: {type(exc).__name__}: {exc}") from exc
        return False


# -- the client --------------------------------------------------------------

def new_client(project, database):
    """A Firestore client for `project` (and a named `database`, if any); made per process."""
    from google.cloud import firestore

    return firestore.Client(project=project, **({"database": database} if database else {}))


class Connection:
    """One store's settings and its client, made lazily in the process that uses it (a forked
    child makes its own). `commits` counts the commits issued (the saver reports them)."""

    def __init__(self, project: str | None, database: str | None, timeout: float, max_writes: int,
                 marker_ttl: timedelta, writer: str):
        if not 2 <= max_writes <= MAX_WRITES:
            raise ValueError(f"max_writes must be between 2 and {MAX_WRITES}")
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self.database = database
        self.timeout = timeout
        self.max_writes = max_writes
        self.marker_ttl = marker_ttl
        self.writer = writer
        self.commits = 0
        self._client = None
        self._pid = None
        self._retry = None

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            try:
                self._client = new_client(self.project, self.database)
            except Exception as exc:  # no credentials / no project: configuration, not a blip
                raise PermanentStoreError(
                    f"firestore: cannot create a client (project={self.project or 'default'}): {exc}. "
                    "Set GOOGLE_CLOUD_PROJECT and credentials, or FIRESTORE_EMULATOR_HOST for the emulator"
                ) from exc
            self._pid = os.getpid()
        return self._client

    @property
    def pid(self):
        """The process the client was made in (None: not made yet)."""
        return self._pid

    @property
    def read_retry(self):
        """Reads retry blips, but never for longer than `timeout` (a frontend must not hang)."""
        if self._retry is None:
            from google.api_core import exceptions as gexc
            from google.api_core.retry import Retry, if_exception_type

            self._retry = Retry(initial=0.1, maximum=2.0, multiplier=2.0, timeout=self.timeout,
                                predicate=if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded,
                                                            gexc.InternalServerError, gexc.ResourceExhausted))
        return self._retry

    def marker_expiry(self) -> datetime:
        return datetime.now(timezone.utc) + self.marker_ttl

    def committed(self, docs, started: float | None = None) -> None:
        """Counts a commit. Test seam (ingest.testing.write_log): one line per commit, who wrote which documents."""
        self.commits += 1
        path = testing.write_log()
        if not path:
            return
        import json
        import time

        line = json.dumps({"writer": self.writer, "pid": os.getpid(), "started": started, "at": time.time(),
                           "docs": list(docs)}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def check(self) -> None:
        """Prove the database takes writes: no credentials, no project or no permission fail here."""
        from google.cloud import firestore

        with translated("check"):
            self.client.collection(META).document(f"health-{self.writer}").set(
                {"checked_at": firestore.SERVER_TIMESTAMP}, retry=None, timeout=min(self.timeout, 10.0))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            try:
                self._client.close()
            except Exception:  # closing must never mask the real outcome
                log.debug("firestore client close failed", exc_info=True)
        self._client = None


# -- the layout record ---------------------------------------------------------

def read_layout(conn: Connection, requested: str | None, record: bool) -> tuple[str, bool]:
    """(the database's layout, whether it is recorded). `record` (writers) stores the choice in a new
    database; a database written before layouts existed (`publications` documents, no record) is
    `entities`. A layout other than `requested` is refused with one line."""
    from google.api_core.exceptions import AlreadyExists

    with translated("layout"):
        db = conn.client
        ref = db.collection(META).document("layout")
        snap = ref.get(retry=conn.read_retry, timeout=conn.timeout)
        recorded = snap.get("layout") if snap.exists else None
        legacy = recorded is None and any(
            True for _ in db.collection(PUBLICATIONS).limit(1).stream(retry=conn.read_retry, timeout=conn.timeout))
        found = recorded or ("entities" if legacy else None)
        if found and requested and found != requested:
            raise PermanentStoreError(
                f"firestore: this database is in the {found!r} layout; the store URL asks for "
                f"layout={requested}. Use ?layout={found}, or another database")
        chosen = found or requested or "packed"
        if recorded is None and record:
            try:
                ref.create({"layout": chosen, "recorded_at": datetime.now(timezone.utc)},
                           retry=None, timeout=conn.timeout)
            except AlreadyExists:  # another writer recorded first: take what it chose
                return read_layout(conn, requested, record)
            recorded = chosen
    return chosen, recorded is not None


# -- the counting rules record ----------------------------------------------------

def claim_rules(conn: Connection, rules: str) -> None:
    """Record `rules` (naming.rules_record) in `ingest_meta/rules` of a new database, in a transaction
    that also looks for counts: a database with publications (either layout) and no record was made
    under v1. Other rules than `rules`: RulesRefused, one line (the saver exits 3)."""
    from google.cloud import firestore

    db = conn.client
    ref = db.collection(META).document("rules")

    def claim(txn) -> str | None:
        snap = ref.get(transaction=txn)
        if snap.exists:
            return (snap.to_dict() or {}).get("rules") or "v1"
        for query in (db.collection(PUBLICATIONS).limit(1), db.collection_group(SUMS).limit(1)):
            if any(True for _ in txn.get(query)):
                return "v1"
        txn.create(ref, {"rules": rules, "recorded_at": datetime.now(timezone.utc)})
        return None

    with translated("rules"):
        recorded = firestore.transactional(claim)(db.transaction())
    if recorded is not None and recorded != rules:
        where = f"firestore://{conn.project}" + (f" (database {conn.database})" if conn.database else "")
        raise RulesRefused(rules_refusal(where, recorded, rules))
