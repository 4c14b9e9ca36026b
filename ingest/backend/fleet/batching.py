"""A fleet backend's store batches: by message group, so the store's markers count a message
once whichever backend commits it (docs/pubsub.md).

GroupBatcher is the hub's batcher (hub.IntervalBatcher is one machine's): a flush's aggregates
carry their group in the publication (`GROUP\\x00name`); they are untagged into their group's
counts, and a group is ready once every one of its articles is flushed. A saver's next batch
(at most one per batch interval) merges the ready groups, up to `max_groups`: its delta lists
their ids (`Delta.groups`), and the store records a marker per group in the batch's one commit.
A store refuses such a batch whole (REFUSED) when another batch recorded one of its groups (a
redelivery) or it needs more than one commit; its groups then go to the store one per batch,
under their own ids, and each group's marker decides (applied already: skipped). A lone ready
group is a batch of its own, as before. PubSubLedger is the scratch journal as the hub's
ledger, plus: a committed batch acknowledges the messages it counted.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import uuid

from ...core.intakeurl import untag
from ...core.models import Aggregate, Delta, merge
from ...core.rules import publication_key
from ..hub import Batch
from ..journal import Entry, Journal
from .puller import PubSubIntake

log = logging.getLogger("ingest.pubsub")

MAX_GROUPS = 100  # groups merged in one batch: their markers share the commit's 500 writes with the counts


class GroupBatcher:
    """One store batch per complete message group, its id the group id."""

    def __init__(self, intake: PubSubIntake, max_groups: int = MAX_GROUPS):
        self.intake = intake
        self.max_groups = max_groups
        self.ready: collections.deque[str] = collections.deque()  # complete groups waiting for a saver

    def add(self, flushed: list[Aggregate], entries: list[Entry]) -> None:
        groups = self.intake.groups
        for agg in flushed:
            gid, rest = untag(agg.key)
            group = groups.get(gid)
            if group is not None and not group.dead:
                name = untag(agg.name)[1]
                merge(group.aggregates, [dataclasses.replace(agg, key=publication_key(rest), name=name)])
        for gid, n in collections.Counter(untag(e.publication)[0] for e in entries).items():
            group = groups.get(gid)
            if group is None or group.dead:
                continue
            group.flushed += n
            if group.flushed >= group.total and not group.batched:
                self.ready.append(gid)

    def _live(self, gid: str):
        group = self.intake.groups.get(gid)
        return group if group is not None and not group.dead and not group.batched else None

    def take(self, now: float, record) -> Batch | None:
        groups: dict = {}
        while self.ready and len(groups) < self.max_groups:
            gid = self.ready.popleft()
            group = self._live(gid)
            if group is not None:
                groups[gid] = group
        if not groups:
            return None
        if len(groups) == 1:
            [group] = groups.values()
            batch = Batch(Delta(group.id, group.aggregates), list(group.seqs), recorded_at=now)
        else:
            counts = merge({}, (a.copy() for g in groups.values() for a in g.aggregates.values()))
            batch = Batch(Delta("m" + uuid.uuid4().hex, counts, tuple(groups)),
                          [s for g in groups.values() for s in g.seqs], recorded_at=now)
        if not record(batch):
            self.ready.extendleft(reversed(groups))
            return None
        for group in groups.values():
            group.batched = True
        return batch

    def refused(self, batch: Batch, recorded: list[str], record) -> list[Batch]:
        """The store applied nothing of a merged batch: one batch per group instead, each under the
        group's id (a group another batch recorded is then skipped by its own marker)."""
        if not recorded:  # too big for one commit: merge fewer from now on
            self.max_groups = max(2, len(batch.delta.groups) // 2)
        try:
            self.intake.journal.requeue_batch(batch.delta.batch_id)  # its articles are bound to the singles below
        except Exception as exc:  # KeyError, sqlite3.Error: the singles' records rebind the articles anyway
            log.debug("forgetting batch=%s in the scratch journal: %s", batch.delta.batch_id, exc)
        out = []
        for gid in batch.delta.groups:
            group = self.intake.groups.get(gid)
            if group is None or group.dead:
                continue
            single = Batch(Delta(gid, group.aggregates), list(group.seqs), recorded_at=batch.recorded_at)
            if record(single):
                out.append(single)
            else:  # ready again: merged into a later batch
                group.batched = False
                self.ready.append(gid)
        return out

    def poisoned(self, entries: list[Entry]):
        """A message one of whose articles killed workers twice is dead-lettered whole; its other
        articles waiting as suspects are forgotten with it."""
        dead = set()
        for gid in {untag(e.publication)[0] for e in entries}:
            group = self._live(gid)
            if group is None:
                continue
            group.dead = True
            dead.add(gid)
            texts = self.intake.journal.texts_and_days(group.seqs)
            posts = [(pub, texts[seq][0], None, texts[seq][1])
                     for seq, pub in zip(group.seqs, group.publications, strict=True) if seq in texts]
            self.intake.kill(group, posts)
        return (lambda e: untag(e.publication)[0] in dead) if dead else None

    def unsaved(self) -> int:
        return sum(g.flushed for g in list(self.intake.groups.values()) if not g.batched and not g.dead)

    def empty(self) -> bool:
        return not any(self._live(gid) for gid in self.ready)


class PubSubLedger:
    """The scratch journal as the hub's ledger, plus: a committed batch acknowledges its message."""

    def __init__(self, journal: Journal, intake: PubSubIntake):
        self.journal = journal
        self.intake = intake

    def record_batch(self, batch: Batch) -> None:
        self.journal.record_batch(batch)

    def complete(self, batch: Batch) -> None:
        self.journal.complete(batch)
        for gid in batch.delta.groups or (batch.delta.batch_id,):
            self.intake.committed(gid)

    def quarantine(self, entries: list) -> None:
        self.journal.quarantine(entries)

    def suspect(self, entries: list) -> None:
        self.journal.suspect(entries)
