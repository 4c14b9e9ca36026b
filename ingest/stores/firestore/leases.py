"""The writer lease's storage in Firestore (ingest/stores/lease.py has the lease itself)."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone

from ..lease import Holder, LeaseHeld, holder_is_dead, refusal
from .common import WRITERS, new_client, safe_id, translated

log = logging.getLogger("ingest.store.firestore")


def lease_id(writer: str) -> str:
    """The document id of `writer`'s lease in `ingest_writers`."""
    return safe_id(writer, "w")


class FirestoreLeases:
    """`ingest_writers/{writer}` {holder, record, expires_at}: each step one transaction (read, then
    write only if still ours or free), so two claimants cannot both win. The heartbeat runs on a
    client of its own."""

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
        return self.db.collection(WRITERS).document(lease_id(writer))

    def _run(self, step):
        from google.cloud import firestore

        with translated("writer lease"):
            return firestore.transactional(step)(self.db.transaction())

    @staticmethod
    def _read(txn, ref):
        snap = ref.get(transaction=txn)
        if not snap.exists:
            return None
        d = snap.to_dict() or {}
        return d.get("holder"), Holder.from_record(d.get("record") or {}), d.get("expires_at")

    def acquire(self, writer: str, holder, ttl: float) -> None:
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
