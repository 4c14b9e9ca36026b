"""The frontend's read-only view of the store, opened lazily in each process and thread."""

from __future__ import annotations

import os
import threading

from ..stores import PermanentStoreError, open_store


class ProcessLocalStore:
    """The read store, opened lazily once per process and thread.

    gunicorn forks its workers after the app may have been built; a SQLite connection must not
    cross a fork or be used by two threads at once, so each (pid, thread) opens its own.
    """

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def _store(self):
        store = getattr(self._local, "store", None)
        if store is None or self._local.pid != os.getpid():
            store = open_store(self.url, readonly=True)
            self._local.store, self._local.pid = store, os.getpid()
        return store

    def publications(self, limit=None, offset=0):
        return self._store().publications(limit, offset)

    def summary(self, publication: str):
        return self._store().summary(publication)

    def entities(self, publication: str, limit: int = 20, offset: int = 0, labels=None):
        if labels is None:  # a store that keeps no labels yet (Firestore) takes no such argument
            return self._store().entities(publication, limit, offset)
        return self._store().entities(publication, limit, offset, labels)

    def apply(self, delta):
        raise PermanentStoreError("the frontend's store handle is read-only")

    def close(self) -> None:
        store = getattr(self._local, "store", None)
        if store is not None and self._local.pid == os.getpid():
            store.close()
        self._local.store = None


