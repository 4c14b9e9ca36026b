"""The input queue the manager server (manager.py) exposes to the frontend.

`Intake` lives in the backend's main process: the manager's threads call `put_many` and `status`,
the arbiter's loop calls `take` and `push_front`. It holds `Entry`s in order; the hub takes
them out and gives back the ones a dead worker never flushed. Nothing is answered before the
journal has it on disk.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Iterable

from ..core.days import DayError, parse_day
from ..core.protocol import Draining, QueueFull, TooLarge
from ..core.rules import MAX_ARTICLE_CHARS
from .journal import Entry, Journal

log = logging.getLogger("ingest.intake")


class Intake:
    """The accepted articles not yet handed to a worker, in order, over the durable journal.

    `put_many` returns only once the journal has the posts on disk (a group commit shared with
    concurrent requests); the queue itself holds only small `Entry`s, the text stays on disk.
    """

    def __init__(self, journal: Journal, capacity: int, on_put: Callable[[], None] | None = None,
                 max_article_chars: int = MAX_ARTICLE_CHARS):
        self.journal = journal
        self.capacity = capacity
        self.max_article_chars = max_article_chars
        self._items: collections.deque[Entry] = collections.deque()
        self._lock = threading.Lock()
        self._accepting = True
        self._appending = 0
        self._on_put = on_put or (lambda: None)
        self._status: dict = {}
        self.accepted = 0
        self.duplicates = 0
        self.rejected_full = 0
        self.rejected_draining = 0
        self.replayed = 0  # requests resent under a token already journaled: answered, nothing added
        self._tokens: dict[str, threading.Event] = {}  # tokens of the puts being journaled now

    # -- called by the frontend through the manager ---------------------
    def put_many(self, posts: list, token: str | None = None) -> dict:
        """Accept every post or none, durably: {"accepted": n, "duplicates": m}.

        `token` names the request: a put resent under a token the journal already has (its first
        attempt was journaled, then the answer was lost) gets the first answer, even from a
        backend that is draining or full now, and adds nothing."""
        items = [(str(p[0]), str(p[1]), None if len(p) < 3 or p[2] is None else str(p[2]), _day(p)) for p in posts]
        rejection, mine, too_large = None, None, any(len(item[1]) > self.max_article_chars for item in items)
        with self._lock:
            if too_large:
                rejection = TooLarge(f"an article is longer than {self.max_article_chars:,} characters")
            elif not self._accepting:
                rejection = Draining("backend is draining")
            elif len(self._items) + len(items) > self.capacity:
                rejection = QueueFull(f"input queue full ({len(self._items)}/{self.capacity})")
            else:
                self._appending += 1
                if token is not None and token not in self._tokens:
                    mine = self._tokens[token] = threading.Event()
            earlier = self._tokens.get(token) if token is not None and rejection is not None else None
        if rejection is not None:
            if earlier is not None:  # the same request, still being journaled on another connection
                earlier.wait()
            stored = self.journal.recall(token)
            if stored is not None:
                return self._replayed(stored)
            with self._lock:
                if isinstance(rejection, Draining):
                    self.rejected_draining += len(items)
                elif isinstance(rejection, QueueFull):
                    self.rejected_full += len(items)
            raise rejection
        try:
            result = self.journal.append(items, token)
        except QueueFull:
            with self._lock:
                self.rejected_full += len(items)
            raise
        finally:
            with self._lock:
                self._appending -= 1
                if mine is not None:
                    del self._tokens[token]
            if mine is not None:
                mine.set()
        if result.get("replayed"):
            return self._replayed(result)
        with self._lock:
            self._items.extend(Entry(seq, pub, size) for seq, pub, size in result["entries"])
            self.accepted += result["accepted"]
            self.duplicates += result["duplicates"]
        self._on_put()
        return {"accepted": result["accepted"], "duplicates": result["duplicates"]}

    def _replayed(self, stored: dict) -> dict:
        with self._lock:
            self.replayed += 1
        return {"accepted": stored["accepted"], "duplicates": stored["duplicates"]}

    def status(self) -> dict:
        """The intake's own numbers, read under its lock, plus the hub's latest published snapshot."""
        with self._lock:
            status = {
                "state": "accepting" if self._accepting else "draining",
                "depth": len(self._items),
                "capacity": self.capacity,
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected_full": self.rejected_full,
                "rejected_draining": self.rejected_draining,
                "replayed": self.replayed,
            }
        status.update(self.journal.stats())
        status.update(self._status)
        return status

    def publish(self, snapshot: dict) -> None:
        """The arbiter's loop hands over a fresh dict; readers never see hub state being changed."""
        self._status = snapshot

    # -- called inside the backend --------------------------------------
    def take(self, n: int, max_bytes: int | None = None) -> list[Entry]:
        """Up to n entries, and (after the first) no more than max_bytes of text: a worker's memory
        grows with the text of its micro-batch, not with the count."""
        taken, size = [], 0
        with self._lock:
            while self._items and len(taken) < n:
                nbytes = self._items[0].bytes
                if taken and max_bytes is not None and size + nbytes > max_bytes:
                    break
                taken.append(self._items.popleft())
                size += nbytes
        return taken

    def contents(self, entries: list[Entry]) -> list[tuple[str, str, str | None]]:
        """The posts a worker needs, as the wire has them (publication, text, None, day), read back from the journal."""
        missing = [e.seq for e in entries if e.content is None]
        texts = self.journal.texts_and_days(missing) if missing else {}
        out = []
        for e in entries:
            text, day = texts[e.seq] if e.content is None else (e.content, None)
            out.append((e.publication, text, None, day))
        return out

    def push_front(self, items: Iterable[Entry]) -> None:
        """Give back posts a dead worker never flushed; they go first, past the bound."""
        with self._lock:
            self._items.extendleft(reversed(list(items)))
        self._on_put()

    def push_back(self, items: Iterable[Entry]) -> None:
        with self._lock:
            self._items.extend(items)
        self._on_put()

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def busy(self) -> bool:
        """A request is being written: the drain waits for it, so its 202 is processed now."""
        return self._appending > 0

    def start(self) -> None:
        """Nothing to start: the manager server (started by the arbiter) calls put_many."""

    def close(self) -> int:
        """The last step of every exit: the accepted articles not stored stay in the journal for the
        next start. Returns how many."""
        left = self.journal.stats()["journal_articles"]
        if left:
            log.warning("%d accepted articles are not stored yet; they stay in the journal %s and are "
                        "counted at the next start", left, self.journal.path)
        return left

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accepting(self) -> bool:
        return self._accepting


def _day(post) -> str | None:
    """The post's day as the frontend settled it; none (the journal then takes the day of acceptance)
    from an older frontend, or if it is not a day at all."""
    if len(post) < 4 or post[3] is None:
        return None
    try:
        return parse_day(post[3]).isoformat()
    except DayError:
        return None
