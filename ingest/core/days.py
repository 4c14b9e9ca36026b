"""Days, windows and "rising": the pure rules of attention over time (CONTRACT.md, "Time").

A day is a UTC calendar date, kept as an ISO string `YYYY-MM-DD` everywhere (it sorts, it is what
the API shows, SQLite and Firestore compare it as text). No clock here: callers pass `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

EPOCH = date(1970, 1, 1)
MAX_AHEAD = timedelta(hours=24)      # a `published` later than acceptance + this is refused
MAX_SERIES_DAYS = 366                # the longest window a per-day series answers
RISING_MIN_ARTICLES = 3              # an entity needs this many articles in the recent window to rise
RISING_Z = "two-proportion z-score"


class DayError(ValueError):
    """A malformed or out-of-range date, said in one line for a 400."""


def parse_published(value: str) -> datetime:
    """`YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time with `Z` or an offset, as an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        raise DayError("published must be an RFC 3339 date-time or a date YYYY-MM-DD")
    text = value.strip()
    if len(text) == 10:
        return datetime.combine(parse_day(text, "published"), datetime.min.time(), tzinfo=timezone.utc)
    if len(text) < 20 or text[10] not in "Tt ":
        raise DayError(f"published {value!r} is not an RFC 3339 date-time or a date YYYY-MM-DD")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise DayError(f"published {value!r} is not an RFC 3339 date-time or a date YYYY-MM-DD") from None
    if instant.tzinfo is None:
        raise DayError(f"published {value!r} has no time zone (end it with Z or an offset such as +01:00)")
    return instant.astimezone(timezone.utc)


def day_of_post(published: str | None, accepted_at: float) -> str:
    """The post's day: its `published` instant's UTC date, else the UTC date of `accepted_at` (epoch seconds)."""
    accepted = datetime.fromtimestamp(accepted_at, timezone.utc)
    if published is None:
        return accepted.date().isoformat()
    instant = parse_published(published)
    if instant.date() < EPOCH:
        raise DayError(f"published {published!r} is before 1970-01-01")
    if instant > accepted + MAX_AHEAD:
        raise DayError(f"published {published!r} is more than 24 hours after now")
    return instant.date().isoformat()


def parse_day(value: str, name: str = "day") -> date:
    """A strict `YYYY-MM-DD` (no other spelling: it is compared as text in the stores)."""
    if not isinstance(value, str) or len(value) != 10 or value[4] != "-" or value[7] != "-":
        raise DayError(f"{name} must be a date YYYY-MM-DD, not {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise DayError(f"{name} must be a date YYYY-MM-DD, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class Window:
    """Inclusive UTC days; None on a side means open (all time)."""

    since: str | None = None
    until: str | None = None

    @property
    def all_time(self) -> bool:
        return self.since is None and self.until is None

    def days(self) -> list[str]:
        """Every day of a closed window, in order."""
        start, end = date.fromisoformat(self.since), date.fromisoformat(self.until)
        return [(start + timedelta(n)).isoformat() for n in range((end - start).days + 1)]


def parse_window(since: str | None, until: str | None, *, max_days: int | None = None) -> Window:
    """The `since`/`until` query parameters; `since` after `until`, or longer than `max_days`: DayError."""
    first = parse_day(since, "since") if since is not None else None
    last = parse_day(until, "until") if until is not None else None
    if first and last and first > last:
        raise DayError(f"since ({since}) is after until ({until})")
    if max_days and first and last and (last - first).days + 1 > max_days:
        raise DayError(f"the window {since}..{until} is longer than {max_days} days")
    return Window(first.isoformat() if first else None, last.isoformat() if last else None)


def series_window(window: Window, latest: str | None, default_days: int = 30) -> Window:
    """Close a series' window: until defaults to the latest day with data (else today's caller gave),
    since to `default_days` before until; at most MAX_SERIES_DAYS."""
    until = window.until or latest or window.since
    if until is None:
        return Window(None, None)
    since = window.since or (date.fromisoformat(until) - timedelta(default_days - 1)).isoformat()
    return parse_window(since, until, max_days=MAX_SERIES_DAYS)


def rising_windows(days: int, until: str) -> tuple[Window, Window]:
    """(recent, before): the `days` days ending `until`, and the `days` days before them."""
    end = date.fromisoformat(until)
    recent = Window((end - timedelta(days - 1)).isoformat(), end.isoformat())
    before_end = end - timedelta(days)
    return recent, Window((before_end - timedelta(days - 1)).isoformat(), before_end.isoformat())


def rising_score(now: int, before: int, total_now: int, total_before: int,
                 min_articles: int = RISING_MIN_ARTICLES) -> float | None:
    """How surely an entity's share of articles rose: the two-proportion z-score of now/total_now against
    before/total_before (pooled standard error). None when it cannot rise: fewer than `min_articles`
    articles now, no articles in either window, or a share that did not grow.

    Why a z-score: it grows with the rise of the share *and* with the evidence behind it, so 0 -> 3
    articles does not beat 20 -> 60, and a flat entity scores 0 (not listed)."""
    if now < min_articles or total_now <= 0 or total_before <= 0:
        return None
    share_now, share_before = now / total_now, before / total_before
    if share_now <= share_before:
        return None
    pooled = (now + before) / (total_now + total_before)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_now + 1 / total_before))
    if spread == 0:
        return None
    return round((share_now - share_before) / spread, 6)


@dataclass(slots=True)
class DayCounts:
    """One publication's counts on one day, as a worker aggregates them and a store adds them."""

    articles: int = 0
    mentions: int = 0
    entities: dict = None  # entity -> [mentions, articles]

    def __post_init__(self):
        if self.entities is None:
            self.entities = {}

    def add_article(self, mentions: dict) -> None:
        """One article whose entities occurred `mentions[entity]` times."""
        self.articles += 1
        for entity, n in mentions.items():
            row = self.entities.get(entity)
            if row is None:
                self.entities[entity] = [n, 1]
            else:
                row[0] += n
                row[1] += 1
            self.mentions += n

    def add(self, other: "DayCounts") -> None:
        self.articles += other.articles
        self.mentions += other.mentions
        for entity, (m, a) in other.entities.items():
            row = self.entities.get(entity)
            if row is None:
                self.entities[entity] = [m, a]
            else:
                row[0] += m
                row[1] += a

    def copy(self) -> "DayCounts":
        return DayCounts(self.articles, self.mentions, {e: list(r) for e, r in self.entities.items()})


def merge_days(into: dict, days: dict) -> dict:
    """Add {day: DayCounts} into `into` (copying what it takes, so the source can be reused)."""
    for day, counts in days.items():
        mine = into.get(day)
        if mine is None:
            into[day] = counts.copy()
        else:
            mine.add(counts)
    return into
