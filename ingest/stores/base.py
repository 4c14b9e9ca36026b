"""The one small interface the savers write through and the frontend reads through."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.models import Delta, EntityCount, PublicationSummary


class StoreError(Exception):
    """A store failure worth retrying (timeouts, unavailable, locked)."""


class PermanentStoreError(Exception):
    """A store failure that a retry cannot fix (bad configuration, invalid data)."""


class NotInThisLayout(Exception):
    """A read this store's layout does not keep (per-day counts in Firestore's entities layout)."""


class GroupsRefused(Exception):
    """A batch merging several groups (Delta.groups) was not applied, nothing of it: `groups` are
    recorded already (by another batch, or a part of one); none when it needs more than one commit.
    Sent again one group per batch, each group's own marker decides."""

    def __init__(self, groups=(), why: str = ""):
        self.groups = list(groups)
        super().__init__(why or f"groups already recorded: {', '.join(self.groups)}")


@runtime_checkable
class Store(Protocol):
    def apply(self, delta: Delta) -> int:
        """Apply all increments of `delta` exactly once, keyed by `delta.batch_id`.

        Returns the number of document/row writes issued (0 when the batch was
        already applied). Raises StoreError for transient failures.
        """

    def check(self) -> None:
        """Raise StoreError/PermanentStoreError unless the store can be written now (savers call it at boot)."""

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        """Publications sorted by articles desc (then key): all, or the page [offset, offset + limit)."""

    def summary(self, publication: str) -> PublicationSummary | None:
        """One publication's totals by key (case- and whitespace-insensitive); None if unknown."""

    def entities(self, publication: str, limit: int = 20, offset: int = 0) -> list[EntityCount] | None:
        """A publication's entities by mentions desc, entity asc; None if unknown.

        `publication` is matched by its key (case- and whitespace-insensitive).
        """

    def close(self) -> None: ...
