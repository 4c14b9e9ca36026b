"""Data that crosses process boundaries: posts in, per-publication aggregates out."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Iterable

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .rules import MAX_PUBLICATION_KEY, publication_key


class Post(BaseModel):
    """One article as accepted by the front door. Strict: no coercion of wrong types."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    publication: Annotated[str, StringConstraints(min_length=1)]
    content: Annotated[str, StringConstraints(min_length=1)]

    @field_validator("publication")
    @classmethod
    def _publication_key_ok(cls, value: str) -> str:
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

    def as_wire(self) -> tuple[str, str]:
        """Posts travel between processes as plain tuples: cheaper to pickle than models."""
        return (self.publication, self.content)


class ProcessedPost(BaseModel):
    """The aggregate for one publication: one article, or many summed with `+=`."""

    key: str
    name: str
    articles: int = 0
    mentions: Counter[str] = Field(default_factory=Counter)
    entity_articles: Counter[str] = Field(default_factory=Counter)

    @classmethod
    def from_article(cls, publication: str, entities: Iterable[str]) -> "ProcessedPost":
        mentions = Counter(entities)
        return cls(
            key=publication_key(publication),
            name=publication,
            articles=1,
            mentions=mentions,
            entity_articles=Counter(dict.fromkeys(mentions, 1)),
        )

    def __iadd__(self, other: "ProcessedPost") -> "ProcessedPost":
        if other.key != self.key:
            raise ValueError(f"cannot add {other.key!r} to {self.key!r}")
        self.articles += other.articles
        self.mentions.update(other.mentions)
        self.entity_articles.update(other.entity_articles)
        return self

    @property
    def total_mentions(self) -> int:
        return sum(self.mentions.values())


class Delta(BaseModel):
    """What a saver writes in one batch: increments for several publications.

    `batch_id` is recorded in the same commit as the increments, so a retry of a
    batch that was in fact applied changes nothing.
    """

    batch_id: str
    publications: dict[str, ProcessedPost] = Field(default_factory=dict)

    def add(self, post: ProcessedPost) -> None:
        current = self.publications.get(post.key)
        if current is None:
            self.publications[post.key] = post.model_copy(deep=True)
        else:
            current += post

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
    mentions: int
    articles: int
