"""A fleet backend's store batches: per message group, so the store's batch marker counts a
message once whichever backend commits it (docs/pubsub.md).

GroupBatcher is the hub's batcher (hub.IntervalBatcher is one machine's): a flush's aggregates
carry their group in the publication (`GROUP\\x00name`); they are untagged into their group's
counts, and a group is ready once every one of its articles is flushed. A batch's id is its
group id. PubSubLedger is the scratch journal as the hub's ledger, plus: a committed batch
acknowledges its message.
"""

from __future__ import annotations

import collections

from ...core.intakeurl import untag
from ...core.models import Aggregate, Delta, merge
from ...core.rules import publication_key
from ..hub import Batch
from ..journal import Entry, Journal
from .puller import PubSubIntake


class GroupBatcher:
    """One store batch per complete message group, its id the group id."""

    def __init__(self, intake: PubSubIntake):
        self.intake = intake
        self.ready: collections.deque[str] = collections.deque()  # complete groups waiting for a saver

    def add(self, flushed: list[Aggregate], entries: list[Entry]) -> None:
        groups = self.intake.groups
        for agg in flushed:
            gid, rest = untag(agg.key)
            group = groups.get(gid)
            if group is not None and not group.dead:
                name = untag(agg.name)[1]
                merge(group.aggregates, [Aggregate(publication_key(rest), name, agg.articles, agg.mentions,
                                                   agg.entity_articles)])
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
        while self.ready:
            gid = self.ready.popleft()
            group = self._live(gid)
            if group is None:
                continue
            batch = Batch(Delta(gid, group.aggregates), list(group.seqs), recorded_at=now)
            if not record(batch):
                self.ready.appendleft(gid)
                return None
            group.batched = True
            return batch
        return None

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
            texts = self.intake.journal.contents(group.seqs)
            posts = [(pub, texts[seq], None) for seq, pub in zip(group.seqs, group.publications) if seq in texts]
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
        self.intake.committed(batch.delta.batch_id)

    def quarantine(self, entries: list) -> None:
        self.journal.quarantine(entries)

    def suspect(self, entries: list) -> None:
        self.journal.suspect(entries)
