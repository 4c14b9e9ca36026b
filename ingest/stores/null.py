"""`--no-persist`: process everything, store nothing, log what would be written."""

from __future__ import annotations

import logging

from ..core.models import Delta, EntityCount, PublicationSummary

log = logging.getLogger("ingest.store.null")


class NullStore:
    def apply(self, delta: Delta) -> int:
        for post in delta.publications.values():
            log.info(
                "would write batch=%s publication=%r articles=+%d entities=%d mentions=+%d",
                delta.batch_id, post.key, post.articles, len(post.mentions), post.total_mentions,
            )
            if log.isEnabledFor(logging.DEBUG):
                for entity in sorted(post.mentions):
                    log.debug("would write batch=%s publication=%r entity=%r mentions=+%d articles=+%d",
                              delta.batch_id, post.key, entity, post.mentions[entity], post.entity_articles[entity])
        return 0

    def check(self) -> None:
        pass

    def claim_rules(self, rules: str) -> None:
        """Nothing is kept, so nothing to mix."""

    def claim_writer(self, writer: str | None = None, holder=None, **kw):
        """Nothing is written, so nothing to claim."""
        from .lease import NoLease

        return NoLease()

    def publications(self, limit: int | None = None, offset: int = 0) -> list[PublicationSummary]:
        return []

    def summary(self, publication: str) -> PublicationSummary | None:
        return None

    def entities(self, publication: str, limit: int = 20, offset: int = 0,
                 labels: frozenset[str] | None = None) -> list[EntityCount] | None:
        return None

    def close(self) -> None:
        pass
