"""Firestore store: the production backend (and Google's emulator via FIRESTORE_EMULATOR_HOST).

Two layouts (docs/firestore-layout.md), chosen by `?layout=` in the store URL and recorded in the
database (`ingest_meta/layout`), which then refuses the other: `packed` (packed.py, the default for a
new database) and `entities` (entities.py, the course's). Both are one layout object with the same
face (apply, check, publications, summary, entities, close); `FirestoreStore` resolves which one
once, in the process that uses it, and hands every call to it.

Modules: common.py (collections, client, retries, errors, markers, the layout record), entities.py,
packed.py, packed_days.py (the packed layout's reads over time), leases.py (the writer lease's documents),
compaction.py (idle writers folded into archives).
"""

from __future__ import annotations

import os
from datetime import timedelta

from ...core.models import Delta, EntityCount, PublicationSummary
from ..base import NotInThisLayout
from .common import LAYOUTS, MARKER_TTL, MAX_WRITES, Connection, claim_rules, read_layout, translated

__all__ = ["FirestoreStore", "LAYOUTS", "MAX_WRITES"]


class FirestoreStore:
    """Store interface on Cloud Firestore. The client is made lazily, in the process that uses it."""

    def __init__(self, project: str | None = None, *, database: str | None = None, timeout: float = 30.0,
                 max_writes: int = MAX_WRITES, marker_ttl: timedelta = MARKER_TTL, layout: str | None = None,
                 writer: str | None = None):
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        self.conn = Connection(project, database, timeout, max_writes, marker_ttl, writer or "solo")
        self.requested_layout = layout   # None: whatever the database records (packed when it is new)
        self._recorded: str | None = None  # the database's layout, once it is recorded
        self._layout = None                # the layout object, and the process it was made in
        self._layout_pid = None
        self.lease = None  # set by claim_writer (or the saver): commits stop once it is lost

    @property
    def project(self):
        return self.conn.project

    @property
    def writer(self) -> str:
        return self.conn.writer

    @property
    def commits(self) -> int:
        """Commits issued by this store (the saver reports them)."""
        return self.conn.commits

    # -- the layout -----------------------------------------------------
    def layout_name(self, record: bool = False) -> str:
        """The database's layout; `record` (writers) stores the choice in a new database. A reader
        of a database nobody has recorded yet asks again next time."""
        if self._recorded is not None:
            return self._recorded
        name, recorded = read_layout(self.conn, self.requested_layout, record)
        if recorded:
            self._recorded = name
        return name

    def layout(self, record: bool = False):
        """The layout object (EntitiesLayout or PackedLayout) every call goes to: one per process."""
        name = self.layout_name(record)
        if self._layout is None or self._layout.name != name or self._layout_pid != os.getpid():
            if name == "packed":
                from .packed import PackedLayout as made
            else:
                from .entities import EntitiesLayout as made
            self._layout, self._layout_pid = made(self.conn), os.getpid()
        return self._layout

    # -- the writer's lease ---------------------------------------------
    def claim_writer(self, writer: str | None = None, holder=None, *, ttl: float | None = None,
                     renew_every: float | None = None):
        """Claim `writer` (default: this store's) for this process: `ingest_writers/{writer}`, claimed
        in a transaction; LeaseHeld names both when another live process holds it."""
        from ..lease import Lease, current_holder
        from .leases import FirestoreLeases

        kw = {} if ttl is None else {"ttl": ttl}
        conn = self.conn
        with translated("writer lease"):
            self.lease = Lease(writer or self.writer, holder or current_holder(),
                               FirestoreLeases(conn.project, conn.database, min(conn.timeout, 10.0)), **kw,
                               renew_every=renew_every).claim()
        return self.lease

    # -- the Store interface --------------------------------------------
    def apply(self, delta: Delta) -> int:
        if self.lease is not None:
            with translated("writer lease"):
                self.lease.ensure()
        with translated(f"batch={delta.batch_id}"):
            layout = self.layout(record=True)
        return layout.apply(delta)

    def check(self) -> None:
        with translated("check"):
            layout = self.layout(record=True)
        layout.check()

    def claim_rules(self, rules: str) -> None:
        """`ingest_meta/rules` (common.claim_rules): a database keeps the counting rules it was first written with."""
        claim_rules(self.conn, rules)

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        return self.layout().publications(limit, offset)

    def summary(self, publication: str) -> PublicationSummary | None:
        return self.layout().summary(publication)

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        return self.layout().entities(publication, limit, offset, labels)

    # -- reads over time (CONTRACT.md, "Time"): the packed layout's day documents --
    def entities_in(self, publication: str | None, window, limit: int = 20, offset: int = 0,
                    labels: frozenset[str] | None = None) -> list[dict] | None:
        return self.day_reads().entities_in(publication, window, limit, offset, labels)

    def top_entities(self, limit: int = 20, offset: int = 0, labels: frozenset[str] | None = None) -> list[dict]:
        return self.day_reads().top_entities(limit, offset, labels)

    def days(self, publication: str, window=None):
        return self.day_reads().days(publication, window)

    def entity_days(self, publication: str, entity: str, window=None):
        return self.day_reads().entity_days(publication, entity, window)

    def rising(self, publication: str | None, days: int, until: str | None, limit: int = 20,
               min_articles: int = 3) -> dict | None:
        return self.day_reads().rising(publication, days, until, limit, min_articles)

    def day_reads(self):
        """The packed layout's time reads; the entities layout keeps no per-day counts (NotInThisLayout: a 409)."""
        layout = self.layout()
        if layout.name != "packed":
            raise NotInThisLayout("firestore's entities layout keeps no per-day counts (the packed layout does)")
        from .packed_days import DayReads

        return DayReads(layout)

    def close(self) -> None:
        if self._layout is not None and self._layout_pid == os.getpid():
            self._layout.close()
        self._layout = None
        self.conn.close()
