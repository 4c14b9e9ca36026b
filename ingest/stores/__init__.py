"""Stores behind one interface; `open_store(url)` picks one from the contract's URL forms."""

from __future__ import annotations

from pathlib import Path

from ..core.storeurl import StoreURLError, parse_store_url
from .base import PermanentStoreError, Store, StoreError

__all__ = ["open_store", "parse_store_url", "StoreURLError", "Store", "StoreError", "PermanentStoreError"]


def open_store(url: str, *, readonly: bool = False, writer: str | None = None, days_kept: int | None = None) -> Store:
    """`writer` names the documents a saver owns in Firestore's packed layout (other stores ignore it)."""
    kind, target = parse_store_url(url)
    if kind == "none":
        from .null import NullStore

        return NullStore()
    if kind == "sqlite":
        from .sqlite import SqliteStore

        path = Path(target)
        if readonly and not path.exists():
            from .null import NullStore

            return _MissingSqlite(path)
        return SqliteStore(path, readonly=readonly, timeout=_query_float(url, "timeout", 30.0), days_kept=days_kept)
    from .firestore import LAYOUTS, FirestoreStore

    layout = _query(url, "layout")
    if layout is not None and layout not in LAYOUTS:
        raise StoreURLError(f"store URL option layout={layout!r}: expected one of {', '.join(LAYOUTS)}")
    return FirestoreStore(project=target or None, layout=layout, writer=writer)


def _query(url: str, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(url.partition("?")[2]).get(name)
    return values[0] if values else None


def _query_float(url: str, name: str, default: float) -> float:
    """`sqlite:///x.db?timeout=5`: seconds to wait for a lock before a write counts as failed."""
    value = _query(url, name)
    try:
        return float(value) if value is not None else default
    except ValueError:
        raise StoreURLError(f"store URL option {name}={value!r} is not a number") from None


class _MissingSqlite:
    """Reads from a database the backend has not created yet: empty, and opened once it appears."""

    def __init__(self, path: Path):
        self.path = path
        self._store = None

    def _inner(self):
        if self._store is None and self.path.exists():
            from .sqlite import SqliteStore

            self._store = SqliteStore(self.path, readonly=True)
        return self._store

    def apply(self, delta):  # pragma: no cover - read-only handle
        raise PermanentStoreError("read-only store")

    def publications(self, limit=None, offset=0):
        inner = self._inner()
        return inner.publications(limit, offset) if inner else []

    def summary(self, publication):
        inner = self._inner()
        return inner.summary(publication) if inner else None

    def entities(self, publication, limit=20, offset=0, labels=None):
        inner = self._inner()
        return inner.entities(publication, limit, offset, labels) if inner else None

    def entities_in(self, publication, window, limit=20, offset=0, labels=None):
        inner = self._inner()
        return inner.entities_in(publication, window, limit, offset, labels) if inner else (None if publication else [])

    def top_entities(self, limit=20, offset=0, labels=None):
        inner = self._inner()
        return inner.top_entities(limit, offset, labels) if inner else []

    def days(self, publication, window=None):
        inner = self._inner()
        return inner.days(publication, window) if inner else None

    def entity_days(self, publication, entity, window=None):
        inner = self._inner()
        return inner.entity_days(publication, entity, window) if inner else None

    def rising(self, publication, days, until, limit=20, min_articles=3):
        inner = self._inner()
        if inner:
            return inner.rising(publication, days, until, limit, min_articles)
        return None if publication else {"until": until, "days": days, "articles_now": 0, "articles_before": 0,
                                         "rows": []}

    def close(self):
        if self._store is not None:
            self._store.close()
