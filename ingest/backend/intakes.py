"""Where a backend's articles come from, chosen once: (journal, intake, hub) for the arbiter.

One machine: the manager's Intake over the durable journal, batches per interval. A fleet
(`--intake pubsub://...`): Pub/Sub over a scratch journal, batches per message group (fleet/).
Both intakes answer what the arbiter asks (`IntakeLike`), so the arbiter reads the same in both.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from .hub import Hub
from .intake import Intake
from .journal import Entry, Journal


class IntakeLike(Protocol):
    """What the arbiter and the hub use of an intake."""

    accepted: int

    def start(self) -> None:
        """Begin taking articles (after recovery, once the children are on their way)."""

    def stop_accepting(self) -> None: ...

    def busy(self) -> bool:
        """Articles are on their way in: a drain waits for them."""

    def close(self) -> int:
        """The last step of every exit: returns the articles not finished (and says where they wait)."""

    def take(self, n: int, max_bytes: int | None = None) -> list[Entry]: ...

    def contents(self, entries: list[Entry]) -> list[tuple[str, str]]: ...

    def push_front(self, items: Iterable[Entry]) -> None: ...

    def push_back(self, items: Iterable[Entry]) -> None: ...

    def publish(self, snapshot: dict) -> None: ...

    def status(self) -> dict: ...

    def __len__(self) -> int: ...


def build(settings, on_put: Callable[[], None], journal: Journal | None = None) -> tuple[Journal, IntakeLike, Hub]:
    if settings.intake:
        from .fleet import build as build_fleet  # the Pub/Sub side is loaded only by a fleet backend

        return build_fleet(settings, on_put)
    journal = journal or Journal(settings.journal_path, max_articles=settings.queue_size,
                                 max_bytes=settings.journal_size, retention=settings.dedup_retention,
                                 max_quarantine=settings.quarantine_size,
                                 max_client_id_bytes=settings.client_ids_size)
    intake = Intake(journal, settings.queue_size, on_put=on_put,
                    max_article_chars=settings.max_article_chars)
    return journal, intake, Hub(intake, settings, ledger=journal)
