"""The frontend's read-only view of the store, opened lazily in each process and thread."""

from __future__ import annotations

from ..core.forksafe import PerProcess
from ..stores import PermanentStoreError, open_store


class ProcessLocalStore:
    """The read store, opened lazily once per process and thread.

    gunicorn forks its workers after the app may have been built; a SQLite connection must not
    cross a fork or be used by two threads at once, so each (pid, thread) opens its own.
    """

    def __init__(self, url: str):
        self.url = url
        self._stores = PerProcess(lambda: open_store(url, readonly=True), per_thread=True,
                                  close=lambda store: store.close())

    def publications(self, limit=None, offset=0):
        return self._stores.get().publications(limit, offset)

    def summary(self, publication: str):
        return self._stores.get().summary(publication)

    def entities(self, publication: str, limit: int = 20, offset: int = 0, labels=None):
        return self._stores.get().entities(publication, limit, offset, labels)

    def apply(self, delta):
        raise PermanentStoreError("the frontend's store handle is read-only")

    def close(self) -> None:
        self._stores.drop()
