"""Firestore's `entities` layout, the course's: one document per publication and per (publication, entity).

`publications/{doc_id(key)}` {name, key, count, mentions} and
`publications/{pub_id}/ent/{doc_id(entity)}` {word, count, articles, labels {label: mentions}}, all
bumped with `firestore.Increment` under `set(merge=True)`. An entity's `label` is read as the majority
of its `labels` (naming.majority_label); a `labels=` filter is applied while paging (no index can
order by a majority), so a rare label reads more of the ranking than a common one.

Exactly once: a delta becomes a deterministic list of chunks (publication docs first, then
entities, each sorted by key) of at most MAX_WRITES - 1 increments plus one marker `create` of
`ingest_batches/{batch}-{chunk}` in the same commit. A retry rebuilds the same chunks; a chunk
whose marker exists fails with AlreadyExists, which means "already applied", and is skipped.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

from ...core.models import Delta, EntityCount, PublicationSummary
from ...core.naming import majority_label
from ...core.rules import doc_id, publication_key
from ..base import GroupsRefused, StoreError
from .common import (ENTITIES, MARKERS, MAX_WRITES, PUBLICATIONS, AppliedElsewhere, Connection, create_group_markers,
                     marker_base, recorded_groups, translated)

log = logging.getLogger("ingest.store.firestore")


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
    labels: tuple = ()  # ((label, mentions), ...) sorted


Write = Union[PublicationWrite, EntityWrite]


@dataclass(frozen=True)
class Chunk:
    """One commit: `writes` plus the marker document `marker_id`."""

    index: int
    marker_id: str
    writes: tuple[Write, ...]


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
        writes.extend(EntityWrite(post.key, e, post.mentions[e], post.entity_articles[e],
                                  tuple(sorted(post.labels.get(e, {}).items())))
                      for e in sorted(post.mentions))
    size = max_writes - 1
    base = marker_base(delta.batch_id)
    if delta.groups and len(writes) > size - len(delta.groups):  # a merged batch is one commit or none
        raise GroupsRefused((), f"a batch of {len(delta.groups)} groups needs {len(writes) + 1 + len(delta.groups)} "
                                f"writes, more than one commit")
    return [Chunk(i, f"{base}-{i}", tuple(writes[start:start + size]))
            for i, start in enumerate(range(0, len(writes), size))]


def entity_row(d: dict) -> EntityCount:
    """An entity document as a row: its label is the majority of its `labels` ("" where none are kept: v1)."""
    labels = {label: int(n) for label, n in (d.get("labels") or {}).items()}
    return EntityCount(entity=d.get("word"), label=majority_label(labels), mentions=int(d.get("count")),
                       articles=int(d.get("articles")))


def _has_name(snap) -> bool:
    try:
        return bool(snap.get("name"))
    except KeyError:
        return False


class EntitiesLayout:
    """Reads and writes of the entities layout, on one Connection (in one process)."""

    name = "entities"

    def __init__(self, conn: Connection):
        self.conn = conn
        self._named: set[str] = set()  # publication keys known to have a stored display name
        self._pool: ThreadPoolExecutor | None = None

    @property
    def db(self):
        return self.conn.client

    def pub(self, key: str):
        return self.db.collection(PUBLICATIONS).document(doc_id(key))

    # -- writes ---------------------------------------------------------
    def apply(self, delta: Delta) -> int:
        """Commits every chunk not yet applied; returns the writes issued (0 if all were applied)."""
        chunks = plan_chunks(delta, self.conn.max_writes)
        with translated(f"batch={delta.batch_id}"):
            new_names = self.unnamed_publications(delta)
            total = 0
            try:
                for chunk in chunks:
                    total += self.commit_chunk(delta.batch_id, chunk, len(chunks), new_names, delta)
            except AppliedElsewhere:
                log.info("batch=%s was applied whole by a batch merging it; skipped", delta.batch_id)
            self._named.update(new_names)
        return total

    def commit_chunk(self, batch_id: str, chunk: Chunk, chunks: int, new_names: set[str] = frozenset(),
                     delta: Delta | None = None) -> int:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import firestore

        conn, db = self.conn, self.db
        batch = db.batch()
        marker = db.collection(MARKERS).document(chunk.marker_id)
        written = [marker.path]
        expires_at = conn.marker_expiry()
        batch.create(marker, {
            "batch_id": batch_id, "chunk": chunk.index, "chunks": chunks, "writes": len(chunk.writes),
            "expires_at": expires_at,
        })
        if delta is not None and delta.groups:
            written += create_group_markers(db, batch, delta, expires_at)
        for w in chunk.writes:
            pub = self.pub(w.pub_key if isinstance(w, EntityWrite) else w.key)
            if isinstance(w, PublicationWrite):
                data = {"key": w.key, "count": firestore.Increment(w.articles),
                        "mentions": firestore.Increment(w.mentions)}
                if w.key in new_names:
                    data["name"] = w.name
                batch.set(pub, data, merge=True)
                written.append(pub.path)
            else:
                ref = pub.collection(ENTITIES).document(doc_id(w.entity))
                data = {"word": w.entity, "count": firestore.Increment(w.mentions),
                        "articles": firestore.Increment(w.articles)}
                if w.labels:
                    data["labels"] = {label: firestore.Increment(n) for label, n in w.labels}
                batch.set(ref, data, merge=True)
                written.append(ref.path)
        try:
            batch.commit(retry=None, timeout=conn.timeout)
        except AlreadyExists:  # the marker exists; never Conflict: Aborted is a Conflict too, and transient
            if chunk.index == 0:
                snap = marker.get(retry=conn.read_retry, timeout=conn.timeout)
                if delta is not None and delta.groups and not snap.exists:
                    taken = recorded_groups(db, delta, conn.read_retry, conn.timeout)
                    if taken:
                        raise GroupsRefused(taken) from None
                    raise StoreError(f"firestore batch={batch_id}: AlreadyExists, but no marker of it") from None
                if snap.exists and (snap.to_dict() or {}).get("batch_id", batch_id) != batch_id:
                    raise AppliedElsewhere() from None
            log.info("batch=%s chunk=%d/%d already applied; skipped", batch_id, chunk.index + 1, chunks)
            return 0
        conn.committed(written)
        return len(written)

    def unnamed_publications(self, delta: Delta) -> set[str]:
        """Keys whose doc has no display name yet, so the first spelling stored wins (one read per key per process)."""
        unknown = [k for k in delta.publications if k not in self._named]
        if not unknown:
            return set()
        refs = [self.pub(k) for k in unknown]
        named = {snap.id for snap in self.db.get_all(refs, field_paths=["name"], retry=self.conn.read_retry,
                                                       timeout=self.conn.timeout)
                 if snap.exists and _has_name(snap)}
        self._named.update(k for k in unknown if doc_id(k) in named)
        return {k for k in unknown if doc_id(k) not in named}

    def check(self) -> None:
        self.conn.check()

    # -- reads ----------------------------------------------------------
    def summary(self, publication: str) -> PublicationSummary | None:
        conn = self.conn
        with translated("summary"):
            snap = self.pub(publication_key(publication)).get(retry=conn.read_retry, timeout=conn.timeout)
            if not snap.exists:
                return None
            d = snap.to_dict()
            return PublicationSummary(publication=d.get("name") or d.get("key") or "",
                                      articles=int(d.get("count", 0)), entities=self.distinct_entities(snap.reference),
                                      mentions=int(d.get("mentions", 0)))

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        everything = self.all_publications()
        return everything[offset:] if limit is None else everything[offset:offset + limit]

    def all_publications(self) -> list[PublicationSummary]:
        conn = self.conn
        with translated("publications"):
            snaps = [s for s in self.db.collection(PUBLICATIONS).stream(retry=conn.read_retry, timeout=conn.timeout)
                     if s.exists]
            counts = list(self.executor().map(self.distinct_entities, [s.reference for s in snaps]))
        rows = []
        for snap, entities in zip(snaps, counts, strict=True):
            d = snap.to_dict()
            key = d.get("key") or ""
            rows.append((key, PublicationSummary(publication=d.get("name") or key, articles=int(d.get("count", 0)),
                                                 entities=entities, mentions=int(d.get("mentions", 0)))))
        rows.sort(key=lambda r: (-r[1].articles, r[0]))
        return [summary for _, summary in rows]

    def distinct_entities(self, pub_ref) -> int:
        conn = self.conn
        result = pub_ref.collection(ENTITIES).count(alias="n").get(retry=conn.read_retry, timeout=conn.timeout)
        return int(result[0][0].value) if result and result[0] else 0

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        conn = self.conn
        with translated("entities"):
            pub = self.pub(publication_key(publication))
            if not pub.get(field_paths=["key"], retry=conn.read_retry, timeout=conn.timeout).exists:
                return None
            if labels is not None:
                return self.labelled(pub, limit, offset, labels)
            # Firestore bills every document an offset skips: past the end, a count (one read per
            # 1,000 entities) answers instead of a query that would skip them all
            if offset >= 1000 and offset >= self.distinct_entities(pub):
                return []
            query = self.ranking(pub).offset(offset).limit(limit)
            return [entity_row(s.to_dict()) for s in query.stream(retry=conn.read_retry, timeout=conn.timeout)]

    def ranking(self, pub):
        from google.cloud import firestore

        return (pub.collection(ENTITIES)
                .order_by("count", direction=firestore.Query.DESCENDING)
                .order_by("word", direction=firestore.Query.ASCENDING))

    def labelled(self, pub, limit: int, offset: int, labels: frozenset[str]) -> list[EntityCount]:
        """The page [offset, offset + limit) of the entities whose majority label is in `labels`: the
        ranking read in pages (each from where the last ended) until the page is full or it ends."""
        conn, rows, last = self.conn, [], None
        if not labels:
            return []
        page = min(max(2 * (offset + limit), 100), 1000)
        while len(rows) < offset + limit:
            query = self.ranking(pub)
            if last is not None:
                query = query.start_after(last)
            snaps = list(query.limit(page).stream(retry=conn.read_retry, timeout=conn.timeout))
            rows += [row for row in map(entity_row, (s.to_dict() for s in snaps)) if row.label in labels]
            if len(snaps) < page:
                break
            last = snaps[-1]
        return rows[offset:offset + limit]

    def executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="firestore-count")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
