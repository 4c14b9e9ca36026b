"""What the product is made of: posts in, per-publication aggregates through, counts out.

`Post` is the one pydantic model on the write path, because it validates client input. The
hot-path data (`Aggregate`, `Delta`) are plain slotted dataclasses of dicts and ints: they pickle
as they are between processes, and nothing converts them on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Iterable, Optional

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from .days import DayCounts
from .rules import MAX_CLIENT_ID, MAX_PUBLICATION_BYTES, MAX_PUBLICATION_KEY, publication_key


class Post(BaseModel):
    """One article as accepted by the front door. Strict: no coercion of wrong types."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    publication: Annotated[str, StringConstraints(min_length=1)]
    content: Annotated[str, StringConstraints(min_length=1)]
    id: Optional[Annotated[str, StringConstraints(min_length=1, max_length=MAX_CLIENT_ID)]] = None
    # RFC 3339 date-time or YYYY-MM-DD; checked (with the clock) where the post is accepted: core.days.day_of_post
    published: Optional[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = None

    @field_validator("publication")
    @classmethod
    def _publication_key_ok(cls, value: str) -> str:
        if len(value) > MAX_PUBLICATION_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_PUBLICATION_BYTES:
            # bounded before whitespace is folded: 900 KB of spaces around a short name is not a name
            raise ValueError(f"publication longer than {MAX_PUBLICATION_BYTES} bytes")
        key = publication_key(value)
        if not key:
            raise ValueError("publication is empty or whitespace only")
        if len(key) > MAX_PUBLICATION_KEY:
            raise ValueError(f"publication key longer than {MAX_PUBLICATION_KEY} characters")
        return value

    @field_validator("content")
    @classmethod
    def _content_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content is empty or whitespace only")
        return value

    @property
    def key(self) -> str:
        return publication_key(self.publication)

    def as_wire(self, day: str | None = None) -> tuple:
        """Posts travel between processes as plain tuples: (publication, content, id or None, day or None).
        `day` is the post's UTC day as the front door settled it (core.days.day_of_post)."""
        return (self.publication, self.content, self.id, day)


def unstorable(post: Post) -> str | None:
    """Why no store can keep the post (an unpaired surrogate, from a `\\ud800`-style JSON escape), or None."""
    for name in ("publication", "content", "id"):
        value = getattr(post, name)
        try:
            value is None or value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{name} holds an unpaired surrogate escape"
    return None


@dataclass(slots=True)
class Aggregate:
    """The counts for one publication: one article, or many merged."""

    key: str
    name: str
    articles: int = 0
    mentions: dict = field(default_factory=dict)          # entity -> occurrences
    entity_articles: dict = field(default_factory=dict)   # entity -> articles that mention it
    labels: dict = field(default_factory=dict)           # entity -> {spaCy label -> occurrences}
    days: dict = field(default_factory=dict)             # day -> DayCounts (their sums are the counts above)

    @classmethod
    def from_article(cls, publication: str, entities: Iterable, day: str | None = None) -> "Aggregate":
        """One article's counts from its mentions: (key, label) pairs (counting rules v2), or bare
        keys, which count without a label (tests of stores that keep none). With `day`, the
        same counts are that day's too."""
        mentions: dict[str, int] = {}
        labels: dict[str, dict[str, int]] = {}
        for entity in entities:
            if isinstance(entity, tuple):
                entity, label = entity
                per_label = labels.setdefault(entity, {})
                per_label[label] = per_label.get(label, 0) + 1
            mentions[entity] = mentions.get(entity, 0) + 1
        days = {}
        if day is not None:
            days[day] = DayCounts(1, sum(mentions.values()), {e: [m, 1] for e, m in mentions.items()})
        return cls(publication_key(publication), publication, 1, mentions, dict.fromkeys(mentions, 1), labels, days)

    @property
    def total_mentions(self) -> int:
        return sum(self.mentions.values())

    def copy(self) -> "Aggregate":
        return Aggregate(self.key, self.name, self.articles, dict(self.mentions), dict(self.entity_articles),
                         {e: dict(per_label) for e, per_label in self.labels.items()},
                         {d: c.copy() for d, c in self.days.items()})


def merge(into: dict[str, Aggregate], items: Iterable[Aggregate]) -> dict[str, Aggregate]:
    """Add aggregates into a dict by publication key (the one place counts are summed).

    The first aggregate seen for a key is taken over, not copied: callers hand over what they merge.
    """
    for item in items:
        current = into.get(item.key)
        if current is None:
            into[item.key] = item
            continue
        current.articles += item.articles
        mentions, entity_articles = current.mentions, current.entity_articles
        for entity, n in item.mentions.items():
            mentions[entity] = mentions.get(entity, 0) + n
        for entity, n in item.entity_articles.items():
            entity_articles[entity] = entity_articles.get(entity, 0) + n
        for entity, per_label in item.labels.items():
            mine = current.labels.get(entity)
            if mine is None:
                current.labels[entity] = dict(per_label)
                continue
            for label, n in per_label.items():
                mine[label] = mine.get(label, 0) + n
        for day, counts in item.days.items():
            mine = current.days.get(day)
            if mine is None:
                current.days[day] = counts
            else:
                mine.add(counts)
    return into


@dataclass(slots=True)
class Delta:
    """What a saver writes in one batch: increments for several publications.

    `batch_id` is recorded in the same commit as the increments, so a retry of a batch that was
    in fact applied changes nothing. `groups` (a fleet's batch merging several Pub/Sub messages):
    their ids too, each recorded as if it were a batch of its own, all in one commit; a store
    refuses the whole batch (GroupsRefused) if any of them is recorded already or it needs more
    than one commit, and the backend then sends each group as a batch of its own. `rules`: the
    counting rules its keys were made with (naming.rules_record), kept with it in the journal so
    a replay is never applied under other rules.
    """

    batch_id: str
    publications: dict = field(default_factory=dict)  # key -> Aggregate
    groups: tuple = ()
    rules: str = ""

    @classmethod
    def of(cls, batch_id: str, aggregates: Iterable[Aggregate]) -> "Delta":
        return cls(batch_id, merge({}, (a.copy() for a in aggregates)))

    @property
    def articles(self) -> int:
        return sum(p.articles for p in self.publications.values())

    @property
    def entity_rows(self) -> int:
        return sum(len(p.mentions) for p in self.publications.values())


class PublicationSummary(BaseModel):
    publication: str
    articles: int
    entities: int
    mentions: int


class EntityCount(BaseModel):
    entity: str
    label: str = ""  # the label with most mentions (ties: alphabetically first); "" where a store keeps none
    mentions: int
    articles: int
