"""Retiring writers of the packed layout: idle writers' documents folded into one archive per publication.

Every VM an autoscaler makes is a new writer, and its summary and shards would stay forever: every
/publications read, every union of a publication's shards and a frontend's listing would grow with
every VM ever made. `compact` folds a writer into the publication's archive (writer `archive`) once
its summary has not changed for `older_than` seconds and its lease in `ingest_writers` is not live:

- One commit absorbs whole writers: it writes the archive's summary and the shards it touches
  (absolute values, with the preconditions a writer's own commit has: the summary `update`d at the
  update time last read, or `create`d), `delete`s the absorbed writers' summaries (each at the
  update time it was read at: a writer that committed meanwhile fails the commit and stays) and
  shards, and `create`s its marker. At most `max_writes` (500) writes: a publication with many
  idle writers takes several commits, each one whole, so a compaction killed between commits has
  folded some writers and not others, and a rerun folds the rest: nothing is counted twice or lost.
- The archive's summary lists what its latest commits absorbed (`absorbed` {writer: {changed_at,
  at}}, kept ABSORBED_KEEP seconds): a reader's incremental listing sees no deletion, so it takes
  those writers out of its listing from there.
- One compaction at a time: it holds the lease `compactor` (LeaseHeld otherwise).

Run it from cron or a systemd timer: `ingestiond compact --store URL [--older-than SECONDS]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ...core.days import DayCounts, merge_days
from ...core.exitcodes import ExitCode
from ...core.rules import doc_id
from ..base import PermanentStoreError, StoreError
from ..lease import Lease, LeaseHeld, current_holder
from .common import ARCHIVE, COMPACTOR, DAYS, MARKERS, SHARDS, SUMS, WRITERS, Connection, translated
from .leases import FirestoreLeases, lease_id
from .packed import LIST_FULL_EVERY, PackedLayout, Part, parse_day, parse_shard

log = logging.getLogger("ingest.store.firestore.compaction")

RETIRE_AFTER = 3600.0                # seconds a writer must be idle before it is folded
ABSORBED_KEEP = 2 * LIST_FULL_EVERY  # a reader re-reads every summary at least this often


@dataclass
class Report:
    publications: int = 0                         # publications whose archive absorbed writers
    absorbed: int = 0                             # writers' summaries folded (one per publication it wrote)
    commits: int = 0
    writes: int = 0
    left: list = field(default_factory=list)      # (publication key, writer, why) not folded this time


@dataclass
class Idle:
    """One writer's documents of one publication, as read for folding."""

    writer: str
    snap: object                                  # its summary (the delete's precondition: its update_time)
    counts: dict                                  # entity -> (mentions, articles, {label: mentions})
    days: dict = field(default_factory=dict)      # day -> DayCounts, from its day documents
    day_refs: list = field(default_factory=list)  # those documents (deleted with it)

    @property
    def data(self) -> dict:
        return self.snap.to_dict() or {}

    @property
    def shards(self) -> int:
        return int(self.data.get("shards", 0))


@dataclass
class Folded:
    """What a commit adds to the archive, in the shape PackedLayout.stage takes (an aggregate)."""

    key: str
    name: str
    articles: int = 0
    total_mentions: int = 0
    mentions: dict = field(default_factory=dict)
    entity_articles: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)   # entity -> {label: mentions}
    days: dict = field(default_factory=dict)     # day -> DayCounts

    def add(self, idle: Idle) -> None:
        self.articles += int(idle.data.get("articles", 0))
        self.total_mentions += int(idle.data.get("mentions", 0))
        for entity, (m, a, labels) in idle.counts.items():
            self.mentions[entity] = self.mentions.get(entity, 0) + m
            self.entity_articles[entity] = self.entity_articles.get(entity, 0) + a
            mine = self.labels.setdefault(entity, {})
            for label, n in labels.items():
                mine[label] = mine.get(label, 0) + n
        merge_days(self.days, idle.days)

    def parts(self) -> list[Part]:
        """One part: every entity and every day it adds to the archive."""
        return [Part(self.key, 0, tuple(sorted(self.mentions)),
                     tuple((day, len(self.days[day].entities)) for day in sorted(self.days)))]


def _writer_is(writer: str):
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter("writer", "==", writer)


def compact(store, older_than: float = RETIRE_AFTER, *, lease_ttl: float | None = None) -> Report:
    """Folds every idle writer of a packed database into its publications' archives (see above);
    a database in the entities layout has no writers: nothing to do."""
    report = Report()
    if store.layout_name() != "packed":
        return report
    conn = Connection(store.project, store.conn.database, store.conn.timeout, store.conn.max_writes,
                      store.conn.marker_ttl, ARCHIVE)
    leases = FirestoreLeases(conn.project, conn.database, min(conn.timeout, 10.0))
    with translated("compaction lease"):
        lease = Lease(COMPACTOR, current_holder(), leases, **({"ttl": lease_ttl} if lease_ttl else {})).claim()
    try:
        Compaction(conn, leases, lease, older_than, report).run()
    finally:
        lease.release()
        conn.close()
    return report


class Compaction:
    def __init__(self, conn: Connection, leases: FirestoreLeases, lease: Lease, older_than: float, report: Report):
        self.conn, self.leases, self.lease, self.report = conn, leases, lease, report
        self.layout = PackedLayout(conn)   # writer `archive`: its load, cost and stage
        self.cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than)
        self.folded_into: set[str] = set()  # publications whose archive absorbed writers in this run

    @property
    def db(self):
        return self.conn.client

    def run(self) -> None:
        with translated("compaction"):
            idle = self.idle_writers()
            live = self.live_writers({w for ws in idle.values() for w in ws})
            for key in sorted(idle):
                writers = [w for w in idle[key] if w not in live]
                self.report.left += [(key, w, "its lease is live") for w in idle[key] if w in live]
                if writers:
                    self.fold(key, writers)

    def idle_writers(self) -> dict[str, list[str]]:
        """Publication key -> the writers whose summary has not changed since the cutoff."""
        found: dict[str, list[str]] = {}
        query = self.db.collection_group(SUMS).select(["key", "writer", "changed_at", "first_at"])
        for snap in query.stream(retry=self.conn.read_retry, timeout=self.conn.timeout):
            d = snap.to_dict() or {}
            if d.get("writer") and d["writer"] != ARCHIVE and self.idle(d):
                found.setdefault(d.get("key") or "", []).append(d["writer"])
        return {key: sorted(writers) for key, writers in found.items()}

    def idle(self, d: dict) -> bool:
        changed = d.get("changed_at") or d.get("first_at")
        return changed is not None and changed < self.cutoff

    def live_writers(self, writers: set[str]) -> set[str]:
        """The writers whose lease has not expired (a live saver, or one that may still commit)."""
        refs = {lease_id(w): w for w in writers}
        now = datetime.now(timezone.utc)
        snaps = self.db.get_all([self.db.collection(WRITERS).document(i) for i in refs],
                                retry=self.conn.read_retry, timeout=self.conn.timeout) if refs else []
        return {refs[s.id] for s in snaps if s.exists and (s.to_dict() or {}).get("expires_at") is not None
                and s.to_dict()["expires_at"] > now}

    def read_idle(self, key: str, writers: list[str]) -> list[Idle]:
        """The writers' summaries and shards, read now: any that changed since the listing is left."""
        pub = self.layout.pub(key)
        snaps = [s for s in self.db.get_all([pub.collection(SUMS).document(w) for w in writers],
                                             retry=self.conn.read_retry, timeout=self.conn.timeout)
                 if s.exists and self.idle(s.to_dict() or {})]
        out = []
        for snap in sorted(snaps, key=lambda s: s.id):
            refs = [pub.collection(SHARDS).document(f"{snap.id}-{n}") for n in range(int(snap.get("shards") or 0))]
            counts: dict = {}
            for shard in self.db.get_all(refs, retry=self.conn.read_retry, timeout=self.conn.timeout):
                counts.update(parse_shard(shard.to_dict() or {}) if shard.exists else {})
            idle = Idle(snap.id, snap, counts)
            query = pub.collection(DAYS).where(filter=_writer_is(snap.id))
            for day_snap in query.stream(retry=self.conn.read_retry, timeout=self.conn.timeout):
                d = day_snap.to_dict() or {}
                day = idle.days.setdefault(d["day"], DayCounts())
                day.add(DayCounts(int(d.get("articles", 0)), int(d.get("mentions", 0)),
                                  {e: [m, a] for e, (m, a) in parse_day(d).items()}))
                idle.day_refs.append(day_snap.reference)
            out.append(idle)
        return out

    def fold(self, key: str, writers: list[str]) -> None:
        """As many commits as the writers need, each absorbing whole writers."""
        group: list[Idle] = []
        for idle in self.read_idle(key, writers):
            if group and self.writes(key, group + [idle]) > self.conn.max_writes:
                self.commit(key, group)
                group = []
            if self.writes(key, [idle]) > self.conn.max_writes:
                self.report.left.append((key, idle.writer, "too large for one commit"))
                log.warning("compaction: %s of %r needs more than %d writes in one commit; left as it is",
                            idle.writer, key, self.conn.max_writes)
                continue
            group.append(idle)
        if group:
            self.commit(key, group)

    def writes(self, key: str, group: list[Idle]) -> int:
        """A commit's writes: its marker, the archive's summary, shards and day documents, the writers' deletes."""
        folded = Folded(key, "")
        for idle in group:
            folded.add(idle)
        self.layout.load_days(key, self.layout.load(key), folded.days)
        archive, _ = self.layout.cost(folded.parts()[0], folded)
        return 1 + archive + sum(1 + idle.shards + len(idle.day_refs) for idle in group)

    def commit(self, key: str, group: list[Idle]) -> None:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

        conn, db, layout = self.conn, self.db, self.layout
        self.lease.ensure()
        owned = layout.load(key)
        folded = Folded(key, owned.name or "")
        earliest = min(group, key=lambda i: (str(i.data.get("first_at") or ""), i.writer))
        if not owned.exists or str(earliest.data.get("first_at") or "") < str(owned.first_at or ""):
            owned.name, owned.first_at = earliest.data.get("name"), earliest.data.get("first_at")
        for idle in group:
            folded.add(idle)
        layout.load_days(key, owned, folded.days)
        absorbed = self.absorbed(key)
        now = datetime.now(timezone.utc)
        absorbed.update({i.writer: {"changed_at": i.data.get("changed_at"), "at": now} for i in group})
        marker = db.collection(MARKERS).document("compact-" + doc_id(
            key + "|" + ";".join(f"{i.writer}@{i.snap.update_time.isoformat()}" for i in group)))
        batch = db.batch()
        batch.create(marker, {"batch_id": marker.id, "compaction": key, "writers": [i.writer for i in group],
                              "chunk": 0, "chunks": 1, "writer": ARCHIVE, "expires_at": conn.marker_expiry()})
        written, summary = [marker.path], None
        try:
            for path, is_summary in layout.stage(batch, key, folded, folded.parts(), owned,
                                                 {"first_at": owned.first_at, "absorbed": absorbed}):
                summary = len(written) if is_summary else summary
                written.append(path)
            for idle in group:
                batch.delete(idle.snap.reference, option=db.write_option(last_update_time=idle.snap.update_time))
                written.append(idle.snap.reference.path)
                for n in range(idle.shards):
                    ref = layout.pub(key).collection(SHARDS).document(f"{idle.writer}-{n}")
                    batch.delete(ref)
                    written.append(ref.path)
                for ref in idle.day_refs:
                    batch.delete(ref)
                    written.append(ref.path)
            if len(written) > conn.max_writes:  # planned not to happen: never send it
                raise StoreError(f"compaction of {key!r}: a commit of {len(written)} writes")
            results = batch.commit(retry=None, timeout=conn.timeout)
        except AlreadyExists:
            layout.forget([key])
            if marker.get(retry=conn.read_retry, timeout=conn.timeout).exists:
                log.info("compaction of %r: %s already applied; skipped", key, marker.id)
                return
            raise StoreError(f"compaction of {key!r}: the archive's summary was created by someone else") from None
        except (FailedPrecondition, NotFound) as exc:  # a writer (or the archive) changed since it was read
            layout.forget([key])
            self.report.left += [(key, i.writer, "changed meanwhile") for i in group]
            log.info("compaction of %r: a summary changed meanwhile; left for the next run (%s)", key, exc)
            return
        except BaseException:
            layout.forget([key])
            raise
        owned.exists, owned.update_time = True, results[summary].update_time
        conn.committed(written)
        self.report.commits += 1
        self.report.writes += len(written)
        self.report.absorbed += len(group)
        if key not in self.folded_into:
            self.folded_into.add(key)
            self.report.publications += 1
        log.info("compaction of %r: %d writer(s) folded into the archive (%s)", key, len(group),
                 ", ".join(i.writer for i in group))

    def absorbed(self, key: str) -> dict:
        """The archive's record of what it absorbed lately (older entries dropped: every reader has
        re-read every summary since)."""
        snap = self.layout.pub(key).collection(SUMS).document(ARCHIVE).get(
            field_paths=["absorbed"], retry=self.conn.read_retry, timeout=self.conn.timeout)
        record = (snap.to_dict() or {}).get("absorbed") or {} if snap.exists else {}
        keep = datetime.now(timezone.utc) - timedelta(seconds=ABSORBED_KEEP)
        return {w: r for w, r in record.items() if r.get("at") is not None and r["at"] > keep}


def main(argv: list[str] | None = None) -> int:
    """`ingestiond compact --store URL [--older-than SECONDS]`: one line out, exit 0; 2 bad usage;
    3 another compaction holds the lease; 1 the store failed."""
    from .. import StoreURLError, open_store, parse_store_url

    parser = argparse.ArgumentParser(prog="ingestiond compact",
                                     description="Fold idle writers of a Firestore packed database into archives.")
    parser.add_argument("--store", required=True, help="firestore://PROJECT[?layout=packed]")
    parser.add_argument("--older-than", type=float, default=RETIRE_AFTER, metavar="SECONDS",
                        help=f"fold writers idle for longer than this (default {RETIRE_AFTER:.0f})")
    args = parser.parse_args(argv)
    if args.older_than < 0:
        parser.error("--older-than must be 0 or more")
    try:
        if parse_store_url(args.store)[0] != "firestore":
            parser.error(f"--store {args.store}: compaction is for a Firestore store (firestore://PROJECT)")
        store = open_store(args.store)
    except (StoreURLError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = compact(store, args.older_than)
    except LeaseHeld as exc:
        print(f"ingestiond compact: another compaction is running: {exc}", file=sys.stderr)
        return ExitCode.BOOT_ERROR
    except (StoreError, PermanentStoreError) as exc:
        print(f"ingestiond compact: error: {exc}", file=sys.stderr)
        return ExitCode.UNFINISHED
    finally:
        store.close()
    print(f"compacted: {report.absorbed} writer summaries folded into {report.publications} archive(s) in "
          f"{report.commits} commit(s), {report.writes} writes; {len(report.left)} left")
    return ExitCode.OK
