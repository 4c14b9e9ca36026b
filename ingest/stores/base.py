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


class RulesRefused(PermanentStoreError):
    """The store's counts were made under other counting rules (naming.rules_record) than this
    backend's: writing would mix two ways of counting, so the backend stops (one line, exit 3)."""


def rules_refusal(store: str, recorded: str, rules: str) -> str:
    way_back = "" if recorded == "v1" else "start with the settings it was written with (the same --aliases), or "
    return (f"{store}: its counts were made under counting rules {recorded}, this backend counts under {rules}; "
            f"counts are never mixed: {way_back}give this backend a fresh store (README, \"Counting rules\")")


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

    def claim_rules(self, rules: str) -> None:
        """Record `rules` (naming.rules_record) in a new store; RulesRefused if the store records other
        rules, or holds counts and records none (made under v1). Savers call it at boot."""

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        """Publications sorted by articles desc (then key): all, or the page [offset, offset + limit)."""

    def summary(self, publication: str) -> PublicationSummary | None:
        """One publication's totals by key (case- and whitespace-insensitive); None if unknown."""

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        """A publication's entities by mentions desc, entity asc; None if unknown.

        `publication` is matched by its key (case- and whitespace-insensitive). Each row's `label` is
        the entity's label with most mentions (ties: alphabetically first); `labels` keeps only the
        entities whose label is one of them.
        """

    def close(self) -> None: ...
