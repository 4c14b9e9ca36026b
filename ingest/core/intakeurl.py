"""The fleet's intake: `pubsub://PROJECT/NAME` URLs and the one message format both sides speak.

A message is the articles of one accepted request (at most MESSAGE_BYTES of them; a larger
request is split): JSON `{"posts": [[publication, content, id or null], ...]}` with attributes
`group` (the message's article group id, which becomes the id of the store batch that counts it)
and `articles`. The group id is `i` + a digest of the request's (publication key, id) pairs when
every post carries an id — a client's retry of the same request then has the same id and the
store's batch marker counts it once — and `r` + a random uuid otherwise. See docs/pubsub.md.

No Google import here: the frontend and the backend import this cheaply.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from .days import DayError, parse_day
from .models import Post, unstorable
from .rules import publication_key

SCHEME = "pubsub"
MESSAGE_BYTES = 8 * 1024 * 1024  # Pub/Sub takes 10 MB per message; room for the JSON and attributes
GROUP_ATTRIBUTE = "group"
ARTICLES_ATTRIBUTE = "articles"
TAG = "\x00"  # inside one backend: "GROUP\x00publication" keeps a worker's aggregates apart per message
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._~%+-]{2,254}")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[A-Za-z0-9._:-]{1,100}")
_GROUP = re.compile(r"[ir][0-9a-f]{32}")


class IntakeURLError(ValueError):
    """Not a usable intake URL."""


@dataclass(frozen=True)
class IntakeURL:
    project: str
    name: str                       # a topic (frontend) or a subscription (backend)
    options: dict = field(default_factory=dict)

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.name}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.name}"

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)

    def __str__(self) -> str:
        return f"{SCHEME}://{self.project}/{self.name}"


def parse_intake_url(text: str) -> IntakeURL:
    """`pubsub://PROJECT/NAME[?dead_letter=TOPIC]`; ids as Pub/Sub allows them (3+ characters)."""
    parts = urlsplit(text.strip())
    if parts.scheme != SCHEME:
        raise IntakeURLError(f"{text!r}: an intake is pubsub://PROJECT/TOPIC (frontend) or "
                             "pubsub://PROJECT/SUBSCRIPTION (backend); without one, the local manager is used")
    project, name = parts.netloc, parts.path.strip("/")
    if not _PROJECT.fullmatch(project or ""):
        raise IntakeURLError(f"{text!r}: {project!r} is not a Google Cloud project id")
    if not _NAME.fullmatch(name or "") or name.lower().startswith("goog"):
        raise IntakeURLError(f"{text!r}: {name!r} is not a Pub/Sub topic or subscription id "
                             "(3-255 characters, starting with a letter)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"dead_letter"}
    if unknown:
        raise IntakeURLError(f"{text!r}: unknown option(s) {', '.join(sorted(unknown))} (known: dead_letter)")
    if "dead_letter" in options and not _NAME.fullmatch(options["dead_letter"]):
        raise IntakeURLError(f"{text!r}: dead_letter={options['dead_letter']!r} is not a topic id")
    return IntakeURL(project, name, options)


# -- messages ---------------------------------------------------------------------------------

def group_id(posts: list[tuple]) -> str:
    """Stable for a request whose every post has an id (a retry of it dedups in the store), else random."""
    if posts and all(len(p) > 2 and p[2] is not None for p in posts):
        pairs = sorted([publication_key(p[0]), p[2]] for p in posts)
        return "i" + hashlib.blake2b(json.dumps(pairs).encode("utf-8"), digest_size=16).hexdigest()
    return "r" + uuid.uuid4().hex


def is_group(text: str) -> bool:
    return bool(_GROUP.fullmatch(text or ""))


def unique_posts(posts: list[tuple]) -> tuple[list[tuple], int]:
    """The posts with a repeated (publication key, id) left out, and how many were: counted once."""
    seen, out = set(), []
    for post in posts:
        client_id = post[2] if len(post) > 2 else None
        if client_id is not None:
            key = (publication_key(post[0]), client_id)
            if key in seen:
                continue
            seen.add(key)
        out.append((post[0], post[1], client_id))
    return out, len(posts) - len(out)


def encode(posts: list[tuple]) -> bytes:
    return json.dumps({"posts": [list(p) for p in posts]}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def split_messages(posts: list[tuple], limit: int = MESSAGE_BYTES) -> list[tuple[str, bytes, int]]:
    """[(group id, data, articles)]: one message per request unless it is over `limit` bytes. A
    request to split whose every post has an id is split in the order of its (publication key, id)
    pairs, so a resend in any order splits the same way and each part has the same group id."""
    if len(encode(posts)) > limit and all(len(p) > 2 and p[2] is not None for p in posts):
        posts = sorted(posts, key=lambda p: (publication_key(p[0]), p[2]))
    return _split(posts, limit)


def _split(posts: list[tuple], limit: int) -> list[tuple[str, bytes, int]]:
    data = encode(posts)
    if len(data) <= limit or len(posts) == 1:
        return [(group_id(posts), data, len(posts))]
    half = len(posts) // 2
    return _split(posts[:half], limit) + _split(posts[half:], limit)


def decode(data: bytes, max_article_chars: int | None = None) -> list[tuple[str, str, str | None]]:
    """The posts of a message; ValueError when it is not one the frontend could have published.

    The same checks as the front door's (`Post`, unpaired surrogates, the article length): any
    publisher may write to the topic, and a post no store can keep must be dead-lettered here, not
    wedge the journal that tries to keep it."""
    try:
        body = json.loads(data.decode("utf-8"))
        posts = body["posts"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an ingest message: {type(exc).__name__}") from None
    out = []
    for n, post in enumerate(posts if isinstance(posts, list) else [None]):
        if not (isinstance(post, list) and len(post) in (3, 4)):
            raise ValueError(f"not an ingest message: post {n} is not [publication, content, id, day]")
        day = post[3] if len(post) == 4 else None
        if day is not None:
            try:
                parse_day(day)
            except DayError as exc:
                raise ValueError(f"not an ingest message: post {n}: {exc}") from None
        try:
            checked = Post.model_validate({"publication": post[0], "content": post[1], "id": post[2]})
        except ValidationError as exc:
            raise ValueError(f"not an ingest message: post {n}: {exc.errors()[0]['msg']}") from None
        problem = unstorable(checked)
        if problem:
            raise ValueError(f"not an ingest message: post {n}: {problem}")
        if max_article_chars is not None and len(checked.content) > max_article_chars:
            raise ValueError(f"not an ingest message: post {n}: content is {len(checked.content):,} characters; "
                             f"the limit is {max_article_chars:,}")
        out.append(checked.as_wire(day))
    if not out:
        raise ValueError("not an ingest message: no posts")
    return out


def tag(group: str, publication: str) -> str:
    return f"{group}{TAG}{publication}"


def untag(tagged: str) -> tuple[str, str]:
    """(group, the rest) of a tagged publication name or key (a key may start with one space)."""
    group, _, rest = tagged.partition(TAG)
    return group, rest
