"""Firestore's packed layout: many entities per document write, every document owned by one writer.

The design and its costs are in docs/firestore-layout.md. In short, for publication key K and
writer W (a saver of one backend; names kept in its journal):

    pubs/{doc_id(K)}/sums/{W}          key, name, writer, first_at, changed_at, articles, mentions, entities,
                                       shards, sv {shard: version}, version
    pubs/{doc_id(K)}/shards/{W}-{n}    writer, key, n, e {entity: {m, a, l}}, h {digest: {w, m, a, l}}

    pubs/{doc_id(K)}/days/{W}-{day}[-{n}]  writer, key, day, n, parts, articles, mentions, e {entity: {m, a}}, h

(m: mentions, a: articles, l: {label: mentions}, the entity's mentions per spaCy label; its `label` in
a read is the majority of l summed over the writers, naming.majority_label. A day document holds what
W added to K on that UTC day; the first (n = 0) carries the day's articles and mentions and how many
parts the day has, further parts (n >= 1) take its entities once one is full. They are written in
the same commits as the shards, with absolute numbers too; packed_days.py reads them by window.)

Only W writes its documents, so it knows their values: it writes absolute numbers, not
increments (a document may take only 500 field transforms per commit; a flush of one publication
changes thousands of entities). Entities fill shard 0, then 1, ...: each shard stays under 4,000
entities and ~600 KB (Firestore: 1 MiB and 40,000 index entries; the maps are exempt from
indexing, deploy/firestore-indexes.sh). An entity's label map grows after it is placed: a shard
that new labels would take past SHARD_LIMIT bytes moves that entity to a shard with room, in the
same commit (its old entry deleted). A publication's flush is one write of its summary plus one
per shard it touches.

Exactly once: a batch's parts come from the delta alone (publications sorted; a publication's
entities in parts of 20,000); how many go in one commit follows what the writer knows of its
shards, and the first commit's marker records that plan for a retry. Each commit `create`s its
marker, as in the entities layout. Each commit updates the writer's summary with an `update_time` precondition, so
a writer whose picture of its documents is stale (a commit whose outcome it never learnt, a second
process under its name) fails, forgets that picture, reads it again and retries; a commit whose
marker exists was applied and is skipped. An AlreadyExists is "applied" only if the marker exists (it
is read to tell): a summary `create`d by another process meanwhile is a retryable error.

Readers sum the writers: /publications from the summaries (one collection-group query), a
publication's entities from its shards, re-read only when a summary says a shard changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ...core.models import Delta, EntityCount, PublicationSummary
from ...core.naming import majority_label
from ...core.rules import doc_id, publication_key
from ..base import GroupsRefused, PermanentStoreError, StoreError
from .common import (ARCHIVE, DAYS, MARKERS, PUBS, SHARDS, SUMS, AppliedElsewhere, Connection, create_group_markers,
                     marker_base, recorded_groups, translated)

log = logging.getLogger("ingest.store.firestore.packed")

SHARD_ENTITIES = 4000          # entities per shard document
SHARD_BYTES = 600_000          # estimated bytes per shard document (Firestore's limit: 1 MiB)
SHARD_LIMIT = 900_000          # ... that labels added later may grow it to (an entity then moves out)
MAX_SHARDS = 400               # per writer and publication: 1.6 million distinct entities
PART_ENTITIES = 20_000         # a publication's entities per commit
MAX_DAY_SHARDS = 50            # day documents per writer, publication and day: 200,000 entities
DAY_PART_DOCS = 250            # day documents a part of a batch may touch at worst
COMMIT_BYTES = 6 * 1024 * 1024  # estimated payload per commit (Firestore takes 10 MiB)
PLAIN_KEY_BYTES = 1000         # longer entity names (or __reserved__ ones) are keyed by their digest
ENTRY_BYTES = 40               # a map entry's overhead in Firestore's size accounting, roughly
LABEL_BYTES = 16               # ... and one label's in it (besides the label's name)
CACHE_ENTITIES = 2_000_000     # a writer keeps what it owns of this many entities in memory
SUM_FIELDS = ["key", "name", "writer", "first_at", "articles", "mentions", "entities", "shards", "sv", "version",
              "changed_at", "clock", "absorbed"]
SHARD_CACHE = 4096             # shards a reader process keeps (least recently used out)
MERGED_LISTS = 64              # merged, sorted entity lists a reader process keeps
LIST_FULL_EVERY = 600.0        # seconds between full reads of every summary (anything the skew missed)


def slot(entity: str) -> tuple[str, str]:
    """Where an entity sits in a shard's maps: ("e", itself), or ("h", its digest) when its name
    cannot be a map key (over 1,000 bytes, or reserved like `__x__`)."""
    if len(entity.encode("utf-8")) <= PLAIN_KEY_BYTES and not (entity.startswith("__") and entity.endswith("__")):
        return "e", entity
    return "h", doc_id(entity)


def label_bytes(labels) -> int:
    return sum(len(label.encode("utf-8")) + LABEL_BYTES for label in labels)


def entry_bytes(entity: str, labels=()) -> int:
    """An entity's entry in a shard, estimated on the generous side of Firestore's size accounting."""
    field_name, key = slot(entity)
    return (len(key.encode("utf-8")) + (len(entity.encode("utf-8")) if field_name == "h" else 0) + ENTRY_BYTES
            + label_bytes(labels))


def entry_updates(maps: dict) -> dict:
    """A stored shard's update: each changed entry whole (its value replaces the old one, labels and all),
    one field path per entity. `set(merge=True)` would mask every leaf, repeating each entity's name once
    per label (a request several times the document's size); `merge=[paths]` costs the client O(n^2)."""
    from google.cloud.firestore_v1.field_path import FieldPath

    return {FieldPath(map_name, map_key).to_api_repr(): value
            for map_name, entries in maps.items() for map_key, value in entries.items()}


class TooManyWrites(Exception):
    """A commit staged more than max_writes documents (nothing was sent)."""


class PublicationRefused(PermanentStoreError):
    """Publications of a batch that were not stored (each would pass MAX_SHARDS shards of this writer);
    every other publication of the batch was, exactly once (a replay changes nothing). The saver
    should report them and not retry the batch for them."""

    def __init__(self, keys: list[str], writes: int, batch_id: str):
        self.keys, self.writes, self.batch_id = list(keys), writes, batch_id
        super().__init__(
            f"firestore packed layout: batch={batch_id}: publication(s) {', '.join(map(repr, keys))} not stored: "
            f"more than {MAX_SHARDS * SHARD_ENTITIES:,} distinct entities from one writer (use ?layout=entities "
            "for such a database); the batch's other publications are stored")


class MarkerExists(Exception):
    """A commit's marker exists: that commit was applied before. `record`: the marker's fields."""

    def __init__(self, record: dict):
        super().__init__("marker exists")
        self.record = record


@dataclass(frozen=True)
class Part:
    key: str
    index: int                 # 0 carries the publication's article count
    entities: tuple[str, ...]
    days: tuple = ()           # ((day, distinct entities that day), ...): the day documents it writes


@dataclass(frozen=True)
class PackedChunk:
    index: int
    marker_id: str
    parts: tuple[Part, ...]


def units(delta: Delta, skip=()) -> list[Part]:
    """A batch's parts in a fixed order (publications sorted; entities in parts of 20,000; then each
    publication's days, in groups of at most DAY_PART_DOCS day documents at worst): from the
    delta alone (less the publications `skip`, as recorded in marker 0), so a retry sees the same ones."""
    out, days = [], []
    for key in sorted(set(delta.publications) - set(skip)):
        entities = sorted(delta.publications[key].mentions)
        pieces = [entities[i:i + PART_ENTITIES] for i in range(0, len(entities), PART_ENTITIES)] or [[]]
        out.extend(Part(key, i, tuple(piece)) for i, piece in enumerate(pieces))
        groups = day_groups(delta.publications[key])
        days.extend(Part(key, len(pieces) + i, (), group) for i, group in enumerate(groups))
    return out + days  # the day parts last: a plan recorded before day documents existed indexes the same parts


def day_docs_at_worst(n_entities: int) -> int:
    return 1 + min(n_entities, MAX_DAY_SHARDS)


def day_groups(post) -> list[tuple]:
    """A publication's days in groups whose day documents fit DAY_PART_DOCS at worst (sorted: from the delta alone)."""
    groups, group, docs = [], [], 0
    for day in sorted(getattr(post, "days", None) or {}):
        cost = day_docs_at_worst(len(post.days[day].entities))
        if group and docs + cost > DAY_PART_DOCS:
            groups.append(tuple(group))
            group, docs = [], 0
        group.append((day, len(post.days[day].entities)))
        docs += cost
    return groups + ([tuple(group)] if group else [])


def pack(parts: list[Part], cost, max_writes: int, first_extra: int = 0) -> list[int]:
    """Where the commits start in `parts`: as few as fit `max_writes` documents (the marker
    included, and `first_extra` more in the first: a merged batch's group markers) and
    COMMIT_BYTES each; cost(part) -> (documents, bytes)."""
    starts, docs, size = [0], 0, 0
    room = max_writes - 1 - first_extra
    for i, part in enumerate(parts):
        d, b = cost(part)
        if i > starts[-1] and (docs + d > room or size + b > COMMIT_BYTES):
            starts.append(i)
            docs = size = 0
            room = max_writes - 1
        docs += d
        size += b
    return starts


def chunks_at(parts: list[Part], starts: list[int], batch_id: str, marker_base) -> list[PackedChunk]:
    base = marker_base(batch_id)
    ends = starts[1:] + [len(parts)]
    return [PackedChunk(i, f"{base}-{i}", tuple(parts[a:b])) for i, (a, b) in enumerate(zip(starts, ends, strict=True))]


def worst(part: Part) -> tuple[int, int]:
    """A part's documents and bytes at worst: its summary and a shard per entity, at most MAX_SHARDS, and
    per day a day document per entity, at most MAX_DAY_SHARDS."""
    days = sum(day_docs_at_worst(n) for _, n in part.days)
    return (1 + min(len(part.entities), MAX_SHARDS) + days,
            2000 + sum(map(entry_bytes, part.entities)) + sum(500 + 100 * n for _, n in part.days))


def plan(delta: Delta, max_writes: int, marker_base) -> list[PackedChunk]:
    """The commits of a batch from the delta alone, each part counted at its worst: the plan of a
    batch whose first marker has none."""
    parts = units(delta)
    return chunks_at(parts, pack(parts, worst, max_writes), delta.batch_id, marker_base)


def sub_chunks(chunk: PackedChunk, split: list[int]) -> list[PackedChunk]:
    """A chunk split at `split` (indexes into its parts): the first keeps the chunk's marker."""
    ends = split[1:] + [len(chunk.parts)]
    return [PackedChunk(chunk.index, chunk.marker_id if j == 0 else f"{chunk.marker_id}.{j}", chunk.parts[a:b])
            for j, (a, b) in enumerate(zip(split, ends, strict=True))]


@dataclass
class Shard:
    n: int
    entities: int = 0
    bytes: int = 0
    stored: bool = False  # its document exists (updated in place), else it is written whole


def day_doc_id(writer: str, day: str, n: int) -> str:
    return f"{writer}-{day}" if n == 0 else f"{writer}-{day}-{n}"


@dataclass
class OwnedDay:
    """What one writer has stored of one publication on one day: its day documents, as it knows them."""

    articles: int = 0
    mentions: int = 0
    counts: dict = field(default_factory=dict)   # entity -> [mentions, articles, part]
    shards: list = field(default_factory=list)   # Shard, by n

    def place(self, entity: str, key: str, day: str) -> int:
        size, last = entry_bytes(entity), self.shards[-1]
        if last.entities >= SHARD_ENTITIES or last.bytes + size > SHARD_BYTES:
            if len(self.shards) >= MAX_DAY_SHARDS:
                raise PermanentStoreError(
                    f"firestore packed layout: publication {key!r} has more than {MAX_DAY_SHARDS * SHARD_ENTITIES:,} "
                    f"distinct entities on {day} from one writer")
            last = Shard(len(self.shards))
            self.shards.append(last)
        last.entities += 1
        last.bytes += size
        return last.n

    def touched(self, entities) -> int:
        """How many of its documents adding `entities` writes (the first always: the day's totals)."""
        touched = {0} | {self.counts[e][2] for e in entities if e in self.counts}
        last = self.shards[-1]
        n, count, size = last.n, last.entities, last.bytes
        for e in entities:
            if e in self.counts:
                continue
            b = entry_bytes(e)
            if count >= SHARD_ENTITIES or size + b > SHARD_BYTES:
                n, count, size = n + 1, 0, 0
            count, size = count + 1, size + b
            touched.add(n)
        return len(touched)


def parse_day(data: dict) -> dict:
    """entity -> (mentions, articles) of one day document."""
    out = {entity: (int(v.get("m", 0)), int(v.get("a", 0))) for entity, v in (data.get("e") or {}).items()}
    out.update({v["w"]: (int(v.get("m", 0)), int(v.get("a", 0))) for v in (data.get("h") or {}).values()})
    return out


@dataclass
class Owned:
    """What one writer has stored of one publication, as it knows it."""

    exists: bool = False
    update_time: Any = None
    name: str | None = None
    first_at: Any = None
    articles: int = 0
    mentions: int = 0
    counts: dict = field(default_factory=dict)   # entity -> [mentions, articles, shard, {label: mentions}]
    shards: list = field(default_factory=list)   # Shard, by n
    sv: dict = field(default_factory=dict)       # str(shard) -> version when last written
    version: int = 0
    days: dict = field(default_factory=dict)     # day -> OwnedDay, read when a batch first touches that day

    def place(self, entity: str, key: str, labels=()) -> int:
        """The shard of a new entity: the last one while it has room, else a new one."""
        size = entry_bytes(entity, labels)
        last = self.shards[-1] if self.shards else None
        if last is None or last.entities >= SHARD_ENTITIES or last.bytes + size > SHARD_BYTES:
            if len(self.shards) >= MAX_SHARDS:
                raise PermanentStoreError(
                    f"firestore packed layout: publication {key!r} has more than {MAX_SHARDS * SHARD_ENTITIES:,} "
                    "distinct entities from one writer; use ?layout=entities for such a database")
            last = Shard(len(self.shards))
            self.shards.append(last)
        last.entities += 1
        last.bytes += size
        return last.n

    def relabel(self, entity: str, key: str, record: list, added: list) -> int | None:
        """A stored entity gets `added` labels: its shard grows by them, unless that takes it past
        SHARD_LIMIT: then the entity moves to a shard with room (Owned.place); the shard it left, or None."""
        shard = self.shards[record[2]]
        if shard.bytes + label_bytes(added) <= SHARD_LIMIT:
            shard.bytes += label_bytes(added)
            return None
        left = record[2]
        shard.entities -= 1
        shard.bytes -= entry_bytes(entity, record[3])
        record[2] = self.place(entity, key, [*record[3], *added])
        return None if record[2] == left else left


def _field_filter(path: str, op: str, value):
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(path, op, value)


def parse_shard(data: dict) -> dict:
    """entity -> (mentions, articles, {label: mentions}) of one shard document."""
    out = {}
    for entity, v in (data.get("e") or {}).items():
        out[entity] = (int(v.get("m", 0)), int(v.get("a", 0)), {k: int(n) for k, n in (v.get("l") or {}).items()})
    for _, v in (data.get("h") or {}).items():
        out[v["w"]] = (int(v.get("m", 0)), int(v.get("a", 0)), {k: int(n) for k, n in (v.get("l") or {}).items()})
    return out


class Reads:
    """What a process has read of one database: shared by its threads (the frontend opens a store
    per app thread), so each summary and shard is read once per process, not once per thread.

    Every write to it happens under `lock` and only when what it brings is newer (a higher version)
    than what is there: a thread that read older documents never overwrites newer ones. A thread
    computes its answer from what it read itself plus what it took from here under the lock, so a
    trim by another thread cannot take a shard out from under it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.listing: dict[tuple[str, str], dict] = {}   # (key, writer) -> summary
        self.since = None                                # latest commit time (changed_at) seen in the listing
        self.listed_at: float | None = None              # when the last look at the summaries started
        self.full_at = 0.0                               # ... and the last full one
        self.incremental = True                          # False: no index on sums.changed_at here
        self.generation = 0                              # bumped whenever the listing changes
        self.rows: tuple[int, list] | None = None        # (generation, sorted /publications rows)
        # LRU: (key, writer, n) -> (sv, counts)
        self.shard_cache: OrderedDict[tuple[str, str, int], tuple[int, dict]] = OrderedDict()
        # key -> (signature, sorted rows, {entity: (mentions, articles, {label: mentions})})
        self.merged: OrderedDict[str, tuple[tuple, list[EntityCount], dict]] = OrderedDict()
        self.distinct: dict[str, tuple[tuple, int]] = {}  # key -> (signature, size of the writers' union)
        self.doc_reads = 0                               # documents read (Firestore bills each)
        self.retired: dict[tuple[str, str], Any] = {}    # (key, writer) -> changed_at of what an archive absorbed

    def counted(self, n: int) -> None:
        with self.lock:
            self.doc_reads += n


def newer(signature: tuple, than: tuple) -> bool:
    """A merge signature ((writer, version), ...) at least as new as `than` for every writer, or read
    after a later compaction (the archive's version grows; the writers it absorbed are gone)."""
    mine, theirs = dict(signature), dict(than)
    if mine.get(ARCHIVE, -1) != theirs.get(ARCHIVE, -1):
        return mine.get(ARCHIVE, -1) > theirs.get(ARCHIVE, -1)
    return signature != than and all(mine.get(w, -1) >= v for w, v in than)


def later(a, b) -> bool:
    """A commit time after another (a missing one is never later)."""
    return a is not None and (b is None or a > b)


def retire(reads: Reads, fresh: dict) -> bool:
    """Takes out of the listing the writers an archive summary in `fresh` says it absorbed (their
    summaries are deleted; an incremental read never sees a deletion); True if any was there."""
    changed = False
    for (key, writer), d in fresh.items():
        if writer != ARCHIVE:
            continue
        for gone, record in (d.get("absorbed") or {}).items():
            absorbed_at = (record or {}).get("changed_at")
            reads.retired[(key, gone)] = absorbed_at
            old = reads.listing.get((key, gone))
            if old is not None and not later(old.get("changed_at"), absorbed_at):
                del reads.listing[(key, gone)]
                changed = True
    return changed


_READS: dict[tuple, Reads] = {}
_READS_LOCK = threading.Lock()


def shared_reads(project, database) -> Reads:
    import os

    where = (os.getpid(), project, database, os.environ.get("FIRESTORE_EMULATOR_HOST"))
    with _READS_LOCK:
        return _READS.setdefault(where, Reads())


class PackedLayout:
    """Reads and writes of the packed layout, on one Connection (in one process)."""

    name = "packed"

    def __init__(self, conn: Connection):
        self.conn = conn
        self.owned: OrderedDict[str, Owned] = OrderedDict()  # the writer's side, least recently used first
        self.reads = shared_reads(conn.client.project, conn.database)

    def check(self) -> None:
        self.conn.check()

    def close(self) -> None:
        """Nothing of its own to release: the reads are the process's, the client the Connection's."""

    @property
    def db(self):
        return self.conn.client

    def pub(self, key: str):
        return self.db.collection(PUBS).document(doc_id(key))

    # -- writes ---------------------------------------------------------
    def apply(self, delta: Delta) -> int:
        """The commits are planned from what the writer knows of its documents (how many shards a
        part really touches), and the plan rides in the first commit's marker. Commits go in
        order, so while that marker is missing nothing of the batch is stored and a retry may plan
        afresh; once it exists, a retry reads the plan from it and finishes the rest. A commit that
        no longer fits 500 writes (the shards changed since it was planned) is split (`finish`).
        A publication that would pass MAX_SHARDS is left out (recorded in marker 0) and reported
        with PublicationRefused once every other publication of the batch is stored."""
        with translated(f"batch={delta.batch_id}"):
            for key in sorted(delta.publications):
                self.load_days(key, self.load(key), delta.publications[key].days)
            refused = sorted(k for k in delta.publications if self.overflows(k, delta.publications[k]))
            parts = units(delta, skip=refused)
            starts = pack(parts, lambda p: self.cost(p, delta.publications[p.key]), self.conn.max_writes,
                          len(delta.groups))
            if delta.groups and (len(starts) > 1 or refused):  # a merged batch is one whole commit or none
                raise GroupsRefused((), f"a batch of {len(delta.groups)} groups needs {len(starts)} commits"
                                        + (f" and leaves out {refused}" if refused else ""))
            chunks = chunks_at(parts, starts, delta.batch_id, marker_base)

            def recorded(record):  # the first commit was applied before: its plan, its refusals
                nonlocal chunks, refused
                if record.get("batch_id", delta.batch_id) != delta.batch_id:  # a group, merged in another batch
                    raise AppliedElsewhere()
                refused = sorted(record.get("refused") or [])
                parts = units(delta, skip=refused)
                starts = record.get("plan")
                chunks = chunks_at(parts, starts, delta.batch_id, marker_base) if starts \
                    else plan(delta, self.conn.max_writes, marker_base)
                log.info("batch=%s chunk=1/%d already applied; going on with its plan", delta.batch_id, len(chunks))
                return chunks[0]

            total = 0
            try:
                if chunks:
                    total = self.finish(delta, chunks[0], len(chunks), plan=starts, refused=refused, recorded=recorded)
                for chunk in chunks[1:]:
                    total += self.finish(delta, chunk, len(chunks))
            except AppliedElsewhere:
                log.info("batch=%s was applied whole by a batch merging it; skipped", delta.batch_id)
                return 0
        if refused:
            raise PublicationRefused(refused, total, delta.batch_id)
        return total

    def finish(self, delta: Delta, chunk: PackedChunk, chunks: int, plan=None, refused=None, recorded=None) -> int:
        """One planned commit. When it no longer fits `max_writes` (a replay whose shards changed),
        it is split by the worst case of its parts (at most a summary and MAX_SHARDS shards each): the
        first part-commit `create`s the chunk's own marker and records the split, the others create
        `{marker}.{j}`. So the chunk's marker still decides: whole or split, never both."""
        max_writes = self.conn.max_writes
        subs = None
        try:
            try:
                return self.commit(delta, chunk, chunks, plan=plan, refused=refused, quiet=True)
            except TooManyWrites as exc:
                if delta.groups:  # never split: the backend sends its groups one by one
                    raise GroupsRefused((), f"a batch of {len(delta.groups)} groups: {exc}") from None
                split = pack(list(chunk.parts), worst, max_writes)
                if len(split) == 1:  # one part alone: only with max_writes < 2 + MAX_SHARDS
                    raise PermanentStoreError(f"firestore packed layout: {exc}") from None
                subs = sub_chunks(chunk, split)
                log.warning("batch=%s chunk=%d/%d: %s; split in %d commits", delta.batch_id, chunk.index + 1,
                            chunks, exc, len(subs))
                total = self.commit(delta, subs[0], chunks, plan=plan, refused=refused, split=split, quiet=True)
        except MarkerExists as exc:
            if recorded is not None:
                chunk = recorded(exc.record)
            split = exc.record.get("split")
            if not split:
                log.info("batch=%s chunk=%d/%d already applied; skipped", delta.batch_id, chunk.index + 1, chunks)
                return 0
            subs, total = sub_chunks(chunk, split), 0
        for sub in subs[1:]:
            try:
                total += self.commit(delta, sub, chunks, quiet=True)
            except MarkerExists:
                log.info("batch=%s %s already applied; skipped", delta.batch_id, sub.marker_id)
        return total

    def overflows(self, key: str, post) -> bool:
        """Would this publication's new entities need more than MAX_SHARDS shards of this writer?"""
        owned = self.owned.get(key) or Owned()
        new = [e for e in sorted(post.mentions) if e not in owned.counts]
        if not new:
            return False
        last = owned.shards[-1] if owned.shards else None
        shards, entities, size = (len(owned.shards), last.entities, last.bytes) if last else (0, SHARD_ENTITIES, 0)
        for e in new:
            b = entry_bytes(e, post.labels.get(e, ()))
            if entities >= SHARD_ENTITIES or size + b > SHARD_BYTES:
                shards, entities, size = shards + 1, 0, 0
                if shards > MAX_SHARDS:
                    return True
            entities, size = entities + 1, size + b
        return False

    def cost(self, part: Part, post) -> tuple[int, int]:
        """(documents, bytes) a part writes, given the shards its known entities are in; `post`: what it
        adds (its `labels` size a new entity's entry; its `days`, the day documents; those days loaded)."""
        labels = post.labels
        owned = self.owned.get(part.key) or Owned()
        touched = {owned.counts[e][2] for e in part.entities if e in owned.counts}
        last = owned.shards[-1] if owned.shards else None
        n, entities, size = (last.n, last.entities, last.bytes) if last else (-1, SHARD_ENTITIES, 0)
        for e in part.entities:  # where Owned.place would put the new ones
            if e in owned.counts:
                continue
            b = entry_bytes(e, labels.get(e, ()))
            if entities >= SHARD_ENTITIES or size + b > SHARD_BYTES:
                n, entities, size = n + 1, 0, 0
            entities, size = entities + 1, size + b
            touched.add(n)
        day_docs = sum(owned.days[day].touched(post.days[day].entities) if day in owned.days
                       else day_docs_at_worst(n) for day, n in part.days)
        return (1 + len(touched) + day_docs, 2000 + sum(entry_bytes(e, labels.get(e, ())) for e in part.entities)
                + sum(500 + 100 * n for _, n in part.days))

    def commit(self, delta: Delta, chunk: PackedChunk, chunks: int,  # noqa: C901 - one commit's steps, in order
               plan: list[int] | None = None, quiet: bool = False, refused=None, split: list[int] | None = None) -> int:
        """One commit; 0 if its marker exists (`quiet`: raise MarkerExists with the marker's fields instead).
        Any other AlreadyExists (a summary's `create`) is a StoreError: the commit was not applied."""
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

        db, writer = self.db, self.conn.writer
        keys = list(dict.fromkeys(p.key for p in chunk.parts))
        try:
            owned = {key: self.load(key) for key in keys}
            for key in keys:
                self.load_days(key, owned[key], [day for p in chunk.parts if p.key == key for day, _ in p.days])
            batch = db.batch()
            marker = db.collection(MARKERS).document(chunk.marker_id)
            record = {"batch_id": delta.batch_id, "chunk": chunk.index, "chunks": chunks, "writer": writer,
                      "expires_at": datetime.now(timezone.utc) + self.conn.marker_ttl}
            if plan is not None:
                record["plan"] = plan
                record["refused"] = list(refused or [])
            if split is not None:
                record["split"] = split
            batch.create(marker, record)
            written, summaries = [marker.path], {}
            if delta.groups:  # a merged batch: one commit (apply), its groups' markers in it
                written += create_group_markers(db, batch, delta, record["expires_at"])
            for key in keys:
                parts = [p for p in chunk.parts if p.key == key]
                for path, is_summary in self.stage(batch, key, delta.publications[key], parts, owned[key]):
                    if is_summary:
                        summaries[len(written)] = key
                    written.append(path)
            if len(written) > self.conn.max_writes:
                raise TooManyWrites(f"a commit of {len(written)} writes (the limit is {self.conn.max_writes})")
            started = time.time()
            results = batch.commit(retry=None, timeout=self.conn.timeout)
        except AlreadyExists as exc:  # the marker, or a summary another process created: read the marker
            self.forget(keys)
            snap = db.collection(MARKERS).document(chunk.marker_id).get(
                retry=self.conn.read_retry, timeout=self.conn.timeout)
            if not snap.exists and delta.groups:
                taken = recorded_groups(db, delta, self.conn.read_retry, self.conn.timeout)
                if taken:  # another batch recorded some of our groups: nothing of ours was applied
                    raise GroupsRefused(taken) from None
            if not snap.exists:  # not applied: a summary we meant to create exists (a second live process
                # under this writer name, or a create whose outcome we never learnt); never "skipped"
                raise StoreError(f"firestore batch={delta.batch_id} chunk={chunk.index + 1}/{chunks}: a summary of "
                                 f"writer {writer} was created by someone else (a second live process under this "
                                 f"writer name?); not applied, reloading it ({exc})") from exc
            if quiet:
                raise MarkerExists(snap.to_dict() or {}) from exc
            log.info("batch=%s chunk=%d/%d already applied; skipped", delta.batch_id, chunk.index + 1, chunks)
            return 0
        except (FailedPrecondition, NotFound) as exc:  # our picture of our documents is stale (a summary
            # changed, a shard it updates was folded away): read them again, retry
            self.forget(keys)
            raise StoreError(f"firestore batch={delta.batch_id}: a summary changed under writer {writer}; "
                             f"reloading it ({exc})") from exc
        except BaseException:
            self.forget(keys)
            raise
        for index, key in summaries.items():
            owned[key].exists = True
            owned[key].update_time = results[index].update_time
        self.conn.committed(written, started)
        return len(written)

    def stage(self, batch, key: str, post, parts: list[Part], owned: Owned, extra: dict | None = None):
        """Adds one publication's writes to `batch` and to `owned` (forgotten if the commit fails);
        `extra`: more fields of the summary (the archive's record of what it absorbed)."""
        from google.cloud.firestore import DELETE_FIELD, SERVER_TIMESTAMP

        writer = self.conn.writer
        changed: dict[int, dict] = {}
        for part in parts:
            for entity in part.entities:
                labels = post.labels.get(entity) or {}
                map_name, map_key = slot(entity)
                record = owned.counts.get(entity)
                if record is None:
                    record = owned.counts[entity] = [0, 0, owned.place(entity, key, labels), {}]
                else:
                    left = owned.relabel(entity, key, record, [label for label in labels if label not in record[3]])
                    if left is not None:  # moved out of a shard that would grow too big: its old entry goes
                        changed.setdefault(left, {}).setdefault(map_name, {})[map_key] = DELETE_FIELD
                record[0] += post.mentions[entity]
                record[1] += post.entity_articles[entity]
                for label, n in labels.items():
                    record[3][label] = record[3].get(label, 0) + n
                value = {"m": record[0], "a": record[1]}
                if record[3]:
                    value["l"] = dict(record[3])
                if map_name == "h":
                    value["w"] = entity
                changed.setdefault(record[2], {}).setdefault(map_name, {})[map_key] = value
        if any(p.index == 0 for p in parts):
            owned.articles += post.articles
            owned.mentions += post.total_mentions
        for part in parts:
            for day, _ in part.days:
                yield from self.stage_day(batch, key, day, post.days[day], owned.days[day])
        owned.name = owned.name or post.name
        owned.version += 1
        pub = self.pub(key)
        for n in sorted(changed):
            owned.sv[str(n)] = owned.version
            ref = pub.collection(SHARDS).document(f"{writer}-{n}")
            if owned.shards[n].stored:
                batch.update(ref, entry_updates(changed[n]))
            else:  # a new shard: every entry in it is new in this commit
                batch.set(ref, {"writer": writer, "key": key, "n": n, **changed[n]})
                owned.shards[n].stored = True  # forgotten with the rest of `owned` if the commit fails
            yield ref.path, False
        data = {"key": key, "name": owned.name, "writer": writer, "articles": owned.articles,
                "mentions": owned.mentions, "entities": len(owned.counts), "shards": len(owned.shards),
                "sv": dict(owned.sv), "version": owned.version,
                # the commit's own time (readers ask for what was committed after the latest they saw)
                "changed_at": SERVER_TIMESTAMP, "clock": "commit", **(extra or {})}
        ref = pub.collection(SUMS).document(writer)
        if owned.exists:
            batch.update(ref, data, option=self.db.write_option(last_update_time=owned.update_time))
        else:
            owned.first_at = owned.first_at or datetime.now(timezone.utc)
            batch.create(ref, {**data, "first_at": owned.first_at})
        yield ref.path, True

    def stage_day(self, batch, key: str, day: str, counts, owned: OwnedDay):
        """One day's writes (DayCounts `counts` added to what the writer has of that day): the first
        document always (the day's totals and parts), and each further one whose entities changed."""
        writer = self.conn.writer
        changed: dict[int, dict] = {0: {}}
        for entity, (m, a) in counts.entities.items():
            record = owned.counts.get(entity)
            if record is None:
                record = owned.counts[entity] = [0, 0, owned.place(entity, key, day)]
            record[0] += m
            record[1] += a
            map_name, map_key = slot(entity)
            value = {"m": record[0], "a": record[1], **({"w": entity} if map_name == "h" else {})}
            changed.setdefault(record[2], {}).setdefault(map_name, {})[map_key] = value
        owned.articles += counts.articles
        owned.mentions += counts.mentions
        days = self.pub(key).collection(DAYS)
        totals = {"articles": owned.articles, "mentions": owned.mentions, "parts": len(owned.shards)}
        for n in sorted(changed):
            head = totals if n == 0 else {}
            ref = days.document(day_doc_id(writer, day, n))
            if owned.shards[n].stored:
                batch.update(ref, {**head, **entry_updates(changed[n])})
            else:
                batch.set(ref, {"writer": writer, "key": key, "day": day, "n": n, **head, **changed[n]})
                owned.shards[n].stored = True  # forgotten with the rest of `owned` if the commit fails
            yield ref.path, False

    def load_days(self, key: str, owned: Owned, days) -> None:
        """The writer's documents of these days of one publication, read once (the first of each day, then
        its further parts); days it never wrote start empty."""
        wanted = sorted(set(days) - set(owned.days))
        if not wanted:
            return
        conn, writer, days_ref = self.conn, self.conn.writer, self.pub(key).collection(DAYS)
        firsts = {s.id: s.to_dict() or {} for s in self.db.get_all(
            [days_ref.document(day_doc_id(writer, d, 0)) for d in wanted], retry=conn.read_retry, timeout=conn.timeout)
            if s.exists}
        more = [days_ref.document(day_doc_id(writer, d, n)) for d in wanted
                for n in range(1, int(firsts.get(day_doc_id(writer, d, 0), {}).get("parts") or 1))]
        rest = {s.id: s.to_dict() or {} for s in self.db.get_all(more, retry=conn.read_retry, timeout=conn.timeout)
                if s.exists} if more else {}
        for day in wanted:
            head = firsts.get(day_doc_id(writer, day, 0))
            day_owned = OwnedDay(shards=[Shard(0)])
            if head is not None:
                day_owned.articles, day_owned.mentions = int(head.get("articles", 0)), int(head.get("mentions", 0))
                day_owned.shards = [Shard(n, stored=True) for n in range(int(head.get("parts") or 1))]
                for shard in day_owned.shards:
                    data = head if shard.n == 0 else rest.get(day_doc_id(writer, day, shard.n), {})
                    for entity, (m, a) in parse_day(data).items():
                        day_owned.counts[entity] = [m, a, shard.n]
                        shard.entities += 1
                        shard.bytes += entry_bytes(entity)
            owned.days[day] = day_owned

    def load(self, key: str) -> Owned:
        """The writer's documents of one publication: from memory, else read once."""
        owned = self.owned.get(key)
        if owned is not None:
            self.owned.move_to_end(key)
            return owned
        conn, writer = self.conn, self.conn.writer
        pub = self.pub(key)
        snap = pub.collection(SUMS).document(writer).get(retry=conn.read_retry, timeout=conn.timeout)
        owned = Owned()
        if snap.exists:
            d = snap.to_dict()
            owned = Owned(exists=True, update_time=snap.update_time, name=d.get("name"), first_at=d.get("first_at"),
                          articles=int(d.get("articles", 0)), mentions=int(d.get("mentions", 0)),
                          sv=dict(d.get("sv") or {}), version=int(d.get("version", 0)))
            refs = [pub.collection(SHARDS).document(f"{writer}-{n}") for n in range(int(d.get("shards", 0)))]
            shards = {s.id: s for s in self.db.get_all(refs, retry=conn.read_retry, timeout=conn.timeout)}
            for n, ref in enumerate(refs):
                shard = Shard(n, stored=True)
                shard_snap = shards.get(ref.id)
                for entity, (m, a, labels) in (parse_shard(shard_snap.to_dict()) if shard_snap and shard_snap.exists
                                               else {}).items():
                    owned.counts[entity] = [m, a, n, labels]
                    shard.entities += 1
                    shard.bytes += entry_bytes(entity, labels)
                owned.shards.append(shard)
        self.owned[key] = owned
        self.evict()
        return owned

    def forget(self, keys) -> None:
        for key in keys:
            self.owned.pop(key, None)

    def evict(self) -> None:
        def size(owned: Owned) -> int:
            return len(owned.counts) + sum(len(d.counts) for d in owned.days.values())
        total = sum(map(size, self.owned.values()))
        while total > CACHE_ENTITIES and len(self.owned) > 1:
            _, gone = self.owned.popitem(last=False)
            total -= size(gone)

    # -- reads ----------------------------------------------------------
    def sums(self, key: str) -> list[dict]:
        conn = self.conn
        with translated("summary"):
            out = [s.to_dict() for s in self.pub(key).collection(SUMS).stream(retry=conn.read_retry,
                                                                                 timeout=conn.timeout)]
        self.reads.counted(len(out))
        return out

    def summary(self, publication: str) -> PublicationSummary | None:
        key = publication_key(publication)
        sums = self.sums(key)
        return self.summarize(key, sums) if sums else None

    def summarize(self, key: str, sums: list[dict]) -> PublicationSummary:
        first = min(sums, key=lambda d: (str(d.get("first_at") or ""), d.get("writer") or ""))
        if len(sums) == 1:
            entities = int(sums[0].get("entities", 0))  # one writer: its own distinct count is exact
        else:
            entities = self.distinct(key, sums)          # several: the union of their shards
        return PublicationSummary(publication=first.get("name") or key,
                                  articles=sum(int(d.get("articles", 0)) for d in sums),
                                  entities=entities, mentions=sum(int(d.get("mentions", 0)) for d in sums))

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        """Every publication, from the summaries; a reader re-reads only those committed after the
        latest commit it has seen (a query on `changed_at`, the commit time), and all of them every
        LIST_FULL_EVERY seconds. Nothing changed: no document read, and the sorted rows are reused."""
        from google.api_core.exceptions import FailedPrecondition

        reads = self.reads
        with translated("publications"):
            started = time.time()
            with reads.lock:
                since = reads.since
                full = not reads.incremental or since is None or started - reads.full_at > LIST_FULL_EVERY
            try:
                fresh = self.read_summaries(None if full else since)
            except FailedPrecondition as exc:  # real Firestore without the index deploy/ creates
                log.warning("no collection-group index on sums.changed_at (deploy/firestore-indexes.sh): every "
                            "/publications reads every summary (%s)", exc)
                with reads.lock:
                    reads.incremental = False
                full = True
                fresh = self.read_summaries(None)
            with reads.lock:
                changed = retire(reads, fresh)
                for where, d in fresh.items():
                    old = reads.listing.get(where)
                    if where in reads.retired and not later(d.get("changed_at"), reads.retired[where]):
                        continue  # read before an archive absorbed it
                    if old is None or int(d.get("version", 0)) > int(old.get("version", 0)):
                        reads.listing[where] = d
                        changed = True
                if full:
                    reads.retired.clear()
                    for where in [w for w in reads.listing if w not in fresh]:  # deleted meanwhile
                        del reads.listing[where]
                        changed = True
                    reads.full_at = started
                    reads.since = None
                reads.since = max([reads.since] + [d.get("changed_at") for d in fresh.values()
                                                   if d.get("clock") == "commit" and d.get("changed_at")],
                                  key=lambda t: (t is not None, t))
                reads.listed_at = started
                if changed:
                    reads.generation += 1
                generation = reads.generation
                if reads.rows is not None and reads.rows[0] == generation:
                    everything = reads.rows[1]
                    return everything[offset:] if limit is None else everything[offset:offset + limit]
                grouped: dict[str, list[dict]] = {}
                for (key, _), d in reads.listing.items():
                    grouped.setdefault(key, []).append(d)
            rows = sorted(((key, self.summarize(key, sums)) for key, sums in grouped.items()),
                          key=lambda r: (-r[1].articles, r[0]))
        everything = [summary for _, summary in rows]
        with reads.lock:
            if reads.rows is None or reads.rows[0] < generation:
                reads.rows = (generation, everything)
        return everything[offset:] if limit is None else everything[offset:offset + limit]

    def read_summaries(self, since) -> dict:
        """Summaries committed after `since` (a commit time read from a summary), or all of them.
        Commit times come from Firestore itself: a query that saw a commit sees every earlier one,
        so `>` misses nothing and re-reads nothing (no clock skew between machines to allow for)."""
        query = self.db.collection_group(SUMS).select(SUM_FIELDS)
        if since is not None:
            query = query.where(filter=_field_filter("changed_at", ">", since))
        fresh = {}
        for snap in query.stream(retry=self.conn.read_retry, timeout=self.conn.timeout):
            d = snap.to_dict()
            fresh[(d.get("key") or "", d.get("writer") or "")] = d
        self.reads.counted(len(fresh))
        return fresh

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        key = publication_key(publication)
        sums = self.sums(key)
        if not sums:
            return None
        rows = self.merge(key, sums)
        if labels is not None:
            rows = [row for row in rows if row.label in labels]
        return rows[offset:offset + limit]

    def distinct(self, key: str, sums: list[dict]) -> int:
        """The size of the writers' union, computed once per (writers, versions): kept for every
        publication (an int each), so /publications recomputes nothing that did not change."""
        reads = self.reads
        signature = tuple(sorted((d.get("writer") or "", int(d.get("version", 0))) for d in sums))
        with reads.lock:
            cached = reads.distinct.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
        return len(self.merge(key, sums))

    def merge(self, key: str, sums: list[dict]) -> list[EntityCount]:
        """Every writer's shards of one publication, summed and sorted; re-read only what changed."""
        return self.merged_counts(key, sums)[0]

    def totals(self, key: str, sums: list[dict]) -> dict:
        """entity -> (mentions, articles, {label: mentions}) of one publication, all writers summed."""
        return self.merged_counts(key, sums)[1]

    def label_counts(self, key: str, sums: list[dict]) -> dict:
        return {entity: labels for entity, (_, _, labels) in self.totals(key, sums).items()}

    def listed(self) -> dict[str, list[dict]]:
        """Publication key -> its writers' summaries, as the latest listing (publications()) saw them."""
        self.publications()
        grouped: dict[str, list[dict]] = {}
        with self.reads.lock:
            for (key, _), d in self.reads.listing.items():
                grouped.setdefault(key, []).append(d)
        return grouped

    def merged_counts(self, key: str,  # noqa: C901 - the union's cache, re-reads and sum, kept together
                      sums: list[dict]) -> tuple[list[EntityCount], dict]:
        reads = self.reads
        signature = tuple(sorted((d.get("writer") or "", int(d.get("version", 0))) for d in sums))
        wanted: dict[tuple[str, str, int], int] = {}
        for d in sums:
            writer, sv = d.get("writer") or "", d.get("sv") or {}
            for n in range(int(d.get("shards", 0))):
                wanted[(key, writer, n)] = int(sv.get(str(n), 0))
        have: dict[tuple[str, str, int], dict] = {}   # this call's own picture: what it read or took, never trimmed
        with reads.lock:
            cached = reads.merged.get(key)
            if cached is not None and cached[0] == signature:
                reads.merged.move_to_end(key)
                return cached[1], cached[2]
            for where, version in wanted.items():
                hit = reads.shard_cache.get(where)
                if hit is not None and hit[0] == version:
                    have[where] = hit[1]
                    reads.shard_cache.move_to_end(where)
        stale = [where for where in wanted if where not in have]
        if stale:
            conn = self.conn
            pub = self.pub(key)
            refs = {f"{w}-{n}": (k, w, n) for k, w, n in stale}
            with translated("entities"):
                snaps = list(self.db.get_all([pub.collection(SHARDS).document(i) for i in refs],
                                             retry=conn.read_retry, timeout=conn.timeout))
            reads.counted(len(snaps))
            for snap in snaps:
                have[refs[snap.id]] = parse_shard(snap.to_dict() or {}) if snap.exists else {}
            with reads.lock:
                for where in stale:
                    hit = reads.shard_cache.get(where)
                    if where in have and (hit is None or hit[0] < wanted[where]):  # never older over newer
                        reads.shard_cache[where] = (wanted[where], have[where])
                        reads.shard_cache.move_to_end(where)
                while len(reads.shard_cache) > SHARD_CACHE:  # a bounded picture, least recently used out
                    reads.shard_cache.popitem(last=False)
        totals: dict[str, list] = {}
        for where in wanted:
            for entity, (m, a, labels) in have.get(where, {}).items():
                t = totals.setdefault(entity, [0, 0, {}])
                t[0] += m
                t[1] += a
                for label, n in labels.items():
                    t[2][label] = t[2].get(label, 0) + n
        rows = [EntityCount(entity=e, label=majority_label(lb), mentions=m, articles=a)
                for e, (m, a, lb) in sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))]
        with reads.lock:
            cached = reads.merged.get(key)
            if cached is None or newer(signature, cached[0]):
                reads.merged[key] = (signature, rows, totals)
                reads.merged.move_to_end(key)
                while len(reads.merged) > MERGED_LISTS:
                    reads.merged.popitem(last=False)
            cached = reads.distinct.get(key)
            if cached is None or newer(signature, cached[0]):
                reads.distinct[key] = (signature, len(rows))
        return rows, totals
