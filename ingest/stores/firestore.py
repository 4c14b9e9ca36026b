"""Firestore store: the production backend (and Google's emulator via FIRESTORE_EMULATOR_HOST).

Two layouts (docs/firestore-layout.md), chosen by `?layout=` in the store URL and recorded in the
database (`ingest_meta/layout`), which then refuses the other: `packed` (firestore_packed.py, the
default for a new database) and `entities`, the course's layout, implemented here:
`publications/{doc_id(key)}` {name, key, count, mentions} and
`publications/{pub_id}/ent/{doc_id(entity)}` {word, count, articles}, all bumped with
`firestore.Increment` under `set(merge=True)`. A database written before layouts existed has
`publications` documents and no record: it is read, and recorded, as `entities`.

Exactly once: a delta becomes a deterministic list of chunks (publication docs first, then
entities, each sorted by key) of at most MAX_WRITES - 1 increments plus one marker `create` of
`ingest_batches/{batch}-{chunk}` in the same commit. A retry rebuilds the same chunks; a chunk
whose marker exists fails with AlreadyExists, which means "already applied", and is skipped.
Markers carry `expires_at` (now + 30 days, longer than any journal entry may wait) for a TTL policy (deploy/firestore.ttl.md).
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Union

from .. import testing
from ..core.models import Delta, EntityCount, PublicationSummary
from ..core.rules import MARKER_TTL_SECONDS, doc_id, publication_key
from .base import GroupsRefused, PermanentStoreError, StoreError

log = logging.getLogger("ingest.store.firestore")

PUBLICATIONS = "publications"
ENTITIES = "ent"
MARKERS = "ingest_batches"
META = "ingest_meta"  # `layout`: the database's layout; `health-{writer}`: written at each saver start
LAYOUTS = ("packed", "entities")
MAX_WRITES = 500  # per commit, marker included; the emulator accepts more, real Firestore may not
MARKER_TTL = timedelta(seconds=MARKER_TTL_SECONDS)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,199}")


@dataclass(frozen=True)
class PublicationWrite:
    key: str
    name: str
    articles: int
    mentions: int


@dataclass(frozen=True)
class EntityWrite:
    pub_key: str
    entity: str
    mentions: int
    articles: int


Write = Union[PublicationWrite, EntityWrite]


@dataclass(frozen=True)
class Chunk:
    """One commit: `writes` plus the marker document `marker_id`."""

    index: int
    marker_id: str
    writes: tuple[Write, ...]


def marker_base(batch_id: str) -> str:
    """The batch id itself when it is a readable, valid document id; its digest otherwise."""
    if _SAFE_ID.fullmatch(batch_id) and not batch_id.startswith("__"):
        return batch_id
    return "b" + doc_id(batch_id)


def plan_chunks(delta: Delta, max_writes: int = MAX_WRITES) -> list[Chunk]:
    """Splits a delta into commits; the same delta always yields the same chunks (retry-safe).

    Publication writes come first, so each publication's article count sits in exactly one
    chunk (chunk 0 unless there are more publications than fit) and exists before its entities.
    """
    if max_writes < 2:
        raise ValueError("max_writes must leave room for the marker")
    posts = [delta.publications[k] for k in sorted(delta.publications)]
    writes: list[Write] = [PublicationWrite(p.key, p.name, p.articles, p.total_mentions) for p in posts]
    for post in posts:
        writes.extend(EntityWrite(post.key, e, post.mentions[e], post.entity_articles[e]) for e in sorted(post.mentions))
    size = max_writes - 1
    base = marker_base(delta.batch_id)
    if delta.groups and len(writes) > size - len(delta.groups):  # a merged batch is one commit or none
        raise GroupsRefused((), f"a batch of {len(delta.groups)} groups needs {len(writes) + 1 + len(delta.groups)} "
                                f"writes, more than one commit")
    return [Chunk(i, f"{base}-{i}", tuple(writes[start:start + size]))
            for i, start in enumerate(range(0, len(writes), size))]


def group_marker_id(group: str) -> str:
    """A merged group's marker: the id its first marker would have in a batch of its own."""
    return f"{marker_base(group)}-0"


def create_group_markers(db, batch, delta: Delta, expires_at) -> list[str]:
    """The `create`s of a merged batch's group markers (in its one commit); their paths."""
    paths = []
    for group in delta.groups:
        ref = db.collection(MARKERS).document(group_marker_id(group))
        batch.create(ref, {"batch_id": delta.batch_id, "group": group, "chunk": 0, "chunks": 1, "expires_at": expires_at})
        paths.append(ref.path)
    return paths


def recorded_groups(db, delta: Delta, retry, timeout) -> list[str]:
    """The groups of a merged batch whose marker exists (another batch recorded them)."""
    refs = [db.collection(MARKERS).document(group_marker_id(g)) for g in delta.groups]
    groups = {ref.path: g for ref, g in zip(refs, delta.groups)}
    return sorted(groups[s.reference.path] for s in db.get_all(refs, retry=retry, timeout=timeout) if s.exists)


class AppliedElsewhere(Exception):
    """A group's first marker was created by a merged batch: the group was applied whole, in that commit."""


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


def new_client(project, database):
    """A Firestore client for `project` (and a named `database`, if any); made per process."""
    from google.cloud import firestore

    return firestore.Client(project=project, **({"database": database} if database else {}))


class FirestoreStore:
    """Store interface on Cloud Firestore. The client is made lazily, in the process that uses it."""

    def __init__(self, project: str | None = None, *, database: str | None = None, timeout: float = 30.0,
                 max_writes: int = MAX_WRITES, marker_ttl: timedelta = MARKER_TTL, layout: str | None = None,
                 writer: str | None = None):
        if not 2 <= max_writes <= MAX_WRITES:
            raise ValueError(f"max_writes must be between 2 and {MAX_WRITES}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        self.requested_layout = layout   # None: whatever the database records (packed when it is new)
        self.writer = writer or "solo"
        self._layout: str | None = None  # resolved and recorded
        self._packed = None
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        self.database = database
        self.timeout = timeout
        self.max_writes = max_writes
        self.marker_ttl = marker_ttl
        self._client = None
        self._pid = None
        self._named: set[str] = set()  # publication keys known to have a stored display name
        self._pool: ThreadPoolExecutor | None = None
        self._retry = None
        self.commits = 0  # commits issued by this instance (the saver reports them)
        self.lease = None  # set by claim_writer: commits stop once it is lost

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
            self._named = set()
            self._pool = None  # a forked child cannot use its parent's threads
            self._packed = None
        return self._client

    # -- layout ---------------------------------------------------------
    def layout(self, record: bool = False) -> str:
        """The database's layout; `record` (writers) stores the choice in a new database. A reader
        of a database nobody has recorded yet asks again next time."""
        if self._layout is not None:
            return self._layout
        from google.api_core.exceptions import AlreadyExists

        with self._translated("layout"):
            db = self.client
            ref = db.collection(META).document("layout")
            snap = ref.get(retry=self.read_retry, timeout=self.timeout)
            recorded = snap.get("layout") if snap.exists else None
            legacy = recorded is None and any(
                True for _ in db.collection(PUBLICATIONS).limit(1).stream(retry=self.read_retry, timeout=self.timeout))
            found = recorded or ("entities" if legacy else None)
            if found and self.requested_layout and found != self.requested_layout:
                raise PermanentStoreError(
                    f"firestore: this database is in the {found!r} layout; the store URL asks for "
                    f"layout={self.requested_layout}. Use ?layout={found}, or another database")
            chosen = found or self.requested_layout or "packed"
            if recorded is None and record:
                try:
                    ref.create({"layout": chosen, "recorded_at": datetime.now(timezone.utc)},
                               retry=None, timeout=self.timeout)
                except AlreadyExists:  # another writer recorded first: take what it chose
                    return self.layout(record)
                recorded = chosen
        if recorded is not None:
            self._layout = chosen
        return chosen

    @property
    def packed(self):
        """The packed layout's reader and writer, or None in the entities layout."""
        if self.layout(record=False) != "packed":
            return None
        if self._packed is None:
            from .firestore_packed import PackedLayout

            self._packed = PackedLayout(self)
        return self._packed

    def log_commit(self, docs, started: float | None = None) -> None:
        """Test seam (ingest.testing.write_log): one line per commit, who wrote which documents."""
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

    # -- the writer's lease ---------------------------------------------
    def claim_writer(self, writer: str | None = None, holder=None, *, ttl: float | None = None,
                     renew_every: float | None = None):
        """Claim `writer` (default: this store's) for this process: `ingest_writers/{writer}`, claimed
        in a transaction; LeaseHeld names both when another live process holds it. The heartbeat runs
        on a thread of its own, on a client of its own."""
        from .lease import Lease, current_holder

        kw = {} if ttl is None else {"ttl": ttl}
        with self._translated("writer lease"):
            self.lease = Lease(writer or self.writer, holder or current_holder(),
                               FirestoreLeases(self.project, self.database, min(self.timeout, 10.0)), **kw,
                               renew_every=renew_every).claim()
        return self.lease

    # -- writes ---------------------------------------------------------
    def apply(self, delta: Delta) -> int:
        """Commits every chunk not yet applied; returns the writes issued (0 if all were applied)."""
        if self.lease is not None:
            with self._translated("writer lease"):
                self.lease.ensure()
        with self._translated(f"batch={delta.batch_id}"):
            self.layout(record=True)
        if self.packed is not None:
            return self.packed.apply(delta)
        chunks = plan_chunks(delta, self.max_writes)
        with self._translated(f"batch={delta.batch_id}"):
            new_names = self._unnamed_publications(delta)
            total = 0
            try:
                for chunk in chunks:
                    total += self._commit_chunk(delta.batch_id, chunk, len(chunks), new_names, delta)
            except AppliedElsewhere:
                log.info("batch=%s was applied whole by a batch merging it; skipped", delta.batch_id)
            self._named.update(new_names)
        return total

    def _commit_chunk(self, batch_id: str, chunk: Chunk, chunks: int, new_names: set[str] = frozenset(),
                      delta: Delta | None = None) -> int:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import firestore

        db = self.client
        batch = db.batch()
        marker = db.collection(MARKERS).document(chunk.marker_id)
        written = [marker.path]
        expires_at = datetime.now(timezone.utc) + self.marker_ttl
        batch.create(marker, {
            "batch_id": batch_id, "chunk": chunk.index, "chunks": chunks, "writes": len(chunk.writes),
            "expires_at": expires_at,
        })
        if delta is not None and delta.groups:
            written += create_group_markers(db, batch, delta, expires_at)
        for w in chunk.writes:
            pub = db.collection(PUBLICATIONS).document(doc_id(w.pub_key if isinstance(w, EntityWrite) else w.key))
            if isinstance(w, PublicationWrite):
                data = {"key": w.key, "count": firestore.Increment(w.articles), "mentions": firestore.Increment(w.mentions)}
                if w.key in new_names:
                    data["name"] = w.name
                batch.set(pub, data, merge=True)
                written.append(pub.path)
            else:
                ref = pub.collection(ENTITIES).document(doc_id(w.entity))
                batch.set(ref, {"word": w.entity, "count": firestore.Increment(w.mentions),
                                "articles": firestore.Increment(w.articles)}, merge=True)
                written.append(ref.path)
        try:
            batch.commit(retry=None, timeout=self.timeout)
        except AlreadyExists:  # the marker exists; never Conflict: Aborted is a Conflict too, and transient
            if chunk.index == 0:
                snap = marker.get(retry=self.read_retry, timeout=self.timeout)
                if delta is not None and delta.groups and not snap.exists:
                    taken = recorded_groups(db, delta, self.read_retry, self.timeout)
                    if taken:
                        raise GroupsRefused(taken) from None
                    raise StoreError(f"firestore batch={batch_id}: AlreadyExists, but no marker of it") from None
                if snap.exists and (snap.to_dict() or {}).get("batch_id", batch_id) != batch_id:
                    raise AppliedElsewhere() from None
            log.info("batch=%s chunk=%d/%d already applied; skipped", batch_id, chunk.index + 1, chunks)
            return 0
        self.commits += 1
        self.log_commit(written)
        return len(written)

    def _unnamed_publications(self, delta: Delta) -> set[str]:
        """Keys whose doc has no display name yet, so the first spelling stored wins (one read per key per process)."""
        unknown = [k for k in delta.publications if k not in self._named]
        if not unknown:
            return set()
        db = self.client
        refs = [db.collection(PUBLICATIONS).document(doc_id(k)) for k in unknown]
        named = {snap.id for snap in db.get_all(refs, field_paths=["name"], retry=self.read_retry,
                                                  timeout=self.timeout)
                 if snap.exists and _has_name(snap)}
        self._named.update(k for k in unknown if doc_id(k) in named)
        return {k for k in unknown if doc_id(k) not in named}

    def check(self) -> None:
        """Prove the database takes writes: no credentials, no project or no permission fail here."""
        from google.cloud import firestore

        with self._translated("check"):
            self.layout(record=True)
            self.client.collection(META).document(f"health-{self.writer}").set(
                {"checked_at": firestore.SERVER_TIMESTAMP}, retry=None, timeout=min(self.timeout, 10.0))

    # -- reads ----------------------------------------------------------
    def summary(self, publication: str) -> PublicationSummary | None:
        if self.packed is not None:
            return self.packed.summary(publication)
        with self._translated("summary"):
            snap = self.client.collection(PUBLICATIONS).document(doc_id(publication_key(publication))).get(
                retry=self.read_retry, timeout=self.timeout)
            if not snap.exists:
                return None
            d = snap.to_dict()
            return PublicationSummary(publication=d.get("name") or d.get("key") or "", articles=int(d.get("count", 0)),
                                      entities=self._distinct_entities(snap.reference), mentions=int(d.get("mentions", 0)))

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        if self.packed is not None:
            return self.packed.publications(limit, offset)
        everything = self._all_publications()
        return everything[offset:] if limit is None else everything[offset:offset + limit]

    def _all_publications(self) -> list[PublicationSummary]:
        with self._translated("publications"):
            snaps = [s for s in self.client.collection(PUBLICATIONS).stream(retry=self.read_retry, timeout=self.timeout)
                     if s.exists]
            counts = list(self._executor().map(self._distinct_entities, [s.reference for s in snaps]))
        rows = []
        for snap, entities in zip(snaps, counts):
            d = snap.to_dict()
            key = d.get("key") or ""
            rows.append((key, PublicationSummary(publication=d.get("name") or key, articles=int(d.get("count", 0)),
                                                 entities=entities, mentions=int(d.get("mentions", 0)))))
        rows.sort(key=lambda r: (-r[1].articles, r[0]))
        return [summary for _, summary in rows]

    def _distinct_entities(self, pub_ref) -> int:
        result = pub_ref.collection(ENTITIES).count(alias="n").get(retry=self.read_retry, timeout=self.timeout)
        return int(result[0][0].value) if result and result[0] else 0

    def entities(self, publication: str, limit: int = 20, offset: int = 0) -> list[EntityCount] | None:
        from google.cloud import firestore

        if self.packed is not None:
            return self.packed.entities(publication, limit, offset)
        with self._translated("entities"):
            pub = self.client.collection(PUBLICATIONS).document(doc_id(publication_key(publication)))
            if not pub.get(field_paths=["key"], retry=self.read_retry, timeout=self.timeout).exists:
                return None
            # Firestore bills every document an offset skips: past the end, a count (one read per
            # 1,000 entities) answers instead of a query that would skip them all
            if offset >= 1000 and offset >= self._distinct_entities(pub):
                return []
            query = (pub.collection(ENTITIES)
                     .order_by("count", direction=firestore.Query.DESCENDING)
                     .order_by("word", direction=firestore.Query.ASCENDING)
                     .offset(offset).limit(limit))
            return [EntityCount(entity=d.get("word"), mentions=int(d.get("count")), articles=int(d.get("articles")))
                    for d in (s.to_dict() for s in query.stream(retry=self.read_retry, timeout=self.timeout))]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="firestore-count")
        return self._pool

    # -- errors and lifecycle -------------------------------------------
    def _translated(self, what: str):
        return _Translate(what)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._client is not None and self._pid == os.getpid():
            try:
                self._client.close()
            except Exception:  # closing must never mask the real outcome
                log.debug("firestore client close failed", exc_info=True)
        self._client = None


def _has_name(snap) -> bool:
    try:
        return bool(snap.get("name"))
    except KeyError:
        return False


class _Translate:
    """Maps Google errors to StoreError (retry) / PermanentStoreError (do not)."""

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


WRITERS = "ingest_writers"


class FirestoreLeases:
    """`ingest_writers/{writer}` {holder, record, expires_at}: each step one transaction (read, then
    write only if still ours or free), so two claimants cannot both win."""

    def __init__(self, project, database, timeout: float):
        self.project, self.database, self.timeout = project, database, timeout
        self._client = None
        self._pid = None

    @property
    def db(self):
        if self._client is None or self._pid != os.getpid():
            self._client, self._pid = new_client(self.project, self.database), os.getpid()
        return self._client

    def ref(self, writer: str):
        return self.db.collection(WRITERS).document(writer if _SAFE_ID.fullmatch(writer) and not writer.startswith("__")
                                                     else "w" + doc_id(writer))

    def _run(self, step):
        from google.cloud import firestore

        with _Translate("writer lease"):
            return firestore.transactional(step)(self.db.transaction())

    @staticmethod
    def _read(txn, ref):
        snap = ref.get(transaction=txn)
        if not snap.exists:
            return None
        d = snap.to_dict() or {}
        from .lease import Holder

        return d.get("holder"), Holder.from_record(d.get("record") or {}), d.get("expires_at")

    def acquire(self, writer: str, holder, ttl: float) -> None:
        from .lease import LeaseHeld, holder_is_dead, refusal

        ref = self.ref(writer)

        def claim(txn):
            now = datetime.now(timezone.utc)
            row = self._read(txn, ref)
            if row and row[0] != holder.id and row[2] is not None and row[2] > now:
                if not holder_is_dead(row[1]):
                    raise LeaseHeld(refusal(writer, row[1], holder, (row[2] - now).total_seconds()))
                log.warning("writer %s: taking over the lease of %s (that process is gone)", writer,
                            row[1].describe())
            txn.set(ref, {"writer": writer, "holder": holder.id, "record": holder.as_record(),
                          "claimed_at": now, "expires_at": now + timedelta(seconds=ttl)})
        self._run(claim)

    def renew(self, writer: str, holder, ttl: float):
        from .lease import Holder

        ref = self.ref(writer)

        def renew(txn):
            row = self._read(txn, ref)
            if row is None or row[0] != holder.id:
                return row[1] if row else Holder("", "nobody", 0, "-", "")
            txn.update(ref, {"expires_at": datetime.now(timezone.utc) + timedelta(seconds=ttl)})
            return None
        return self._run(renew)

    def release(self, writer: str, holder) -> None:
        ref = self.ref(writer)

        def release(txn):
            row = self._read(txn, ref)
            if row is not None and row[0] == holder.id:
                txn.delete(ref)
        self._run(release)
