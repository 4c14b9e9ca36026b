"""What a run is asked to do (`Run`), and the requests it makes of the dataset (`Work`, `plan`).

Ids: an article's id from the dataset goes into its JSON post as `"id"` (unless `Run.ids` is false). The
server answers a (publication, id) it accepted within its retention window (7 days) with 202 but counts it
once, and says so in `"duplicates"`. A request whose articles all have ids is therefore safe to resend
after a failure that may have followed its delivery: it is `idempotent`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..datasets import Article, Dataset

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 40.0  # seconds per request: the frontend's write deadline (30 s) and some
DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # the frontend's default limit


@dataclass
class Run:
    """One run's settings, as the command line gave them."""

    dataset: Dataset
    url: str
    api_key: str = field(repr=False)
    concurrency: int = 8
    limit: int | None = None
    batch: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_retries: int = 20
    max_retry_time: float = 120.0
    timeout: float = DEFAULT_TIMEOUT
    progress: bool = True
    ids: bool = True  # send the dataset's ids
    wait: bool = True  # after sending, wait until the backend has processed what was accepted
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT

    @property
    def endpoint(self) -> str:
        return "/posts" if self.batch else "/post/enqueue"


@dataclass(frozen=True)
class Work:
    """One request's worth of articles, already encoded."""

    path: str
    body: bytes
    articles: int
    where: str  # source position of its first article
    idempotent: bool = False  # every article carries an id: the server deduplicates, so resending is safe


def _encode(article: Article, ids: bool = True) -> bytes:
    post = {"publication": article.publication, "content": article.content}
    if ids and article.id is not None:
        post["id"] = article.id
    if article.published is not None:
        post["published"] = article.published
    return json.dumps(post, ensure_ascii=False).encode("utf-8")


def plan(articles: Iterable[Article], batch: int | None, max_body_bytes: int, ids: bool = True) -> Iterator[Work]:
    """Single posts, or batches of up to `batch` articles whose JSON array stays under max_body_bytes.

    Articles carry their ids unless `ids` is false; a Work is idempotent when every article in it has one.
    """
    if not batch:
        for article in articles:
            yield Work("/post/enqueue", _encode(article, ids), 1, article.where, ids and article.id is not None)
        return
    items: list[bytes] = []
    size, where, keyed = 2, "", True
    for article in articles:
        item = _encode(article, ids)
        if items and (len(items) >= batch or size + len(item) + 1 > max_body_bytes):
            yield Work("/posts", b"[" + b",".join(items) + b"]", len(items), where, keyed)
            items, size = [], 2
        if not items:
            where, keyed = article.where, True
        items.append(item)
        size += len(item) + 1
        keyed = keyed and ids and article.id is not None
    if items:
        yield Work("/posts", b"[" + b",".join(items) + b"]", len(items), where, keyed)
