"""The dashboard's word clouds and their CPU budget; the drawing itself is painter.py's child.

A picture is rendered from a publication's top entities, cached in-process under (publication
key, articles, mentions) so a render happens only when that publication's counts change, and
asked for by one background thread per app, never on a request's thread; the drawing is done by a
low-priority child process (painter.py), so it never holds the GIL of the worker serving the
writers. Rendering has a budget, because a render costs ~0.4 s of CPU and anybody may ask for a
cloud: a publication whose counts keep changing is redrawn at most every `wordcloud_refresh`
seconds for a request that does not name its current counts in `v` (its last picture is served
meanwhile, marked no-cache), and the renderer works on credit: `wordcloud_burst` CPU seconds at
once (a user clicking through publications), `wordcloud_share` of one core over time (a client
asking for clouds without end). Measured before the budget: 16 clients asking for the cloud of a
publication being written halved the write rate. The defaults are FrontendSettings'.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .painter import WORDCLOUD_TOP_N, Painter, render_wordcloud, shared_painter

log = logging.getLogger("ingest.dashboard")

RENDER_REST_MAX = 60.0    # seconds: the longest rest to pay off a debt
RENDER_WAIT = 5.0  # seconds a request waits for a fresh picture before it takes an older one or a 503
CacheKey = tuple[str, int, int]  # publication key, articles, mentions


class WordcloudCache:
    """A small LRU of rendered PNGs; holds at most one entry per publication key."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._items: OrderedDict[tuple[str, int, int], tuple[bytes, float]] = OrderedDict()  # -> png, drawn at
        self._lock = threading.Lock()
        self.renders = 0

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple[str, int, int], png: bytes) -> None:
        with self._lock:
            for stale in [k for k in self._items if k[0] == key[0] and k != key]:
                del self._items[stale]  # counts changed: the old picture is worthless
            self._items[key] = (png, time.monotonic())
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def latest(self, publication_key: str) -> tuple[bytes, float] | None:
        """Any picture of this publication and its age in seconds: better than none while a new
        one renders, and good enough while younger than the refresh interval."""
        with self._lock:
            for key in reversed(self._items):
                if key[0] == publication_key:
                    png, drawn_at = self._items[key]
                    return png, time.monotonic() - drawn_at
        return None

    def __len__(self) -> int:
        return len(self._items)


class WordcloudRenderer:
    """One thread per app has clouds drawn (by the painter's child), one at a time, each
    (publication, counts) once.

    Requests never render: they read the cache, ask for a picture and wait a moment for it. Each
    picture's CPU time (this thread's and the child's) is taken from a credit of at most `burst` CPU
    seconds that refills at `share` of a core; in debt the thread rests until it is paid off. So
    clients hammering clouds of changing publications cost `share` of one core at most, and nothing
    for counts already drawn.
    """

    MAX_PENDING = 64

    def __init__(self, cache: WordcloudCache, share: float, burst: float,
                 painter: Painter | None = None):
        self.cache = cache
        self.painter = painter  # None: pictures are drawn on this thread (the renderer's own tests)
        self.share = min(max(share, 0.01), 1.0)
        self.burst = max(burst, 0.0)
        self.credit, self.credit_at = self.burst, time.monotonic()
        self._pending: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self, key: tuple[str, int, int], render) -> threading.Event | None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():  # lazily: after gunicorn's fork
                self._thread = threading.Thread(target=self._run, name="wordcloud", daemon=True)
                self._thread.start()
            if key in self._pending:
                return self._pending[key][1]
            if len(self._pending) >= self.MAX_PENDING:
                return None
            done = threading.Event()
            self._pending[key] = (render, done)
            self._cond.notify()
            return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                key, (render, done) = next(iter(self._pending.items()))
            spent = self._cpu_so_far()
            try:
                if self.cache.get(key) is None:
                    self.cache.put(key, render())
                    self.cache.renders += 1
            except Exception:  # a store read failed: the request answers 503 and a later one retries
                log.exception("dashboard: rendering the word cloud of %r failed", key[0])
            finally:
                with self._cond:
                    self._pending.pop(key, None)
                done.set()
            time.sleep(self._charge(self._cpu_so_far() - spent))

    def draw(self, frequencies: dict[str, int]) -> bytes:
        """Called by a `render` on this renderer's thread."""
        return self.painter.draw(frequencies) if self.painter is not None else render_wordcloud(frequencies)

    def _cpu_so_far(self) -> float:
        """This thread's CPU seconds and those the painter's child spent on its pictures."""
        return time.thread_time() + (self.painter.cpu_spent() if self.painter is not None else 0.0)

    def _charge(self, spent: float) -> float:
        """Take a picture's CPU seconds from the credit; the seconds to rest to get out of debt."""
        now = time.monotonic()
        self.credit = min(self.burst, self.credit + (now - self.credit_at) * self.share) - spent
        self.credit_at = now
        return min(-self.credit / self.share, RENDER_REST_MAX) if self.credit < 0 else 0.0


@dataclass
class Picture:
    png: bytes
    key: CacheKey
    fresh: bool  # drawn for exactly these counts (else an older picture, served meanwhile)


class Wordclouds:
    """One app's word clouds: its cache, its renderer and how long a picture stays good enough."""

    def __init__(self, cache_entries: int, refresh: float, share: float, burst: float, painter: Painter | None = None):
        self.cache = WordcloudCache(cache_entries)
        self.renderer = WordcloudRenderer(self.cache, share, burst, painter)
        self.refresh = refresh

    @classmethod
    def from_settings(cls, settings) -> "Wordclouds":
        return cls(settings.wordcloud_cache, settings.wordcloud_refresh, settings.wordcloud_share,
                   settings.wordcloud_burst, shared_painter())

    def picture(self, store, publication: str, key: CacheKey, current: bool) -> Picture | None:
        """The picture for these counts, drawn if needed (within the budget); an older one of the
        same publication when none comes in time; None when there is none at all (yet).
        `current`: the request names these counts (the dashboard's own do), so a picture of
        earlier counts will not do while it is younger than `refresh`."""
        png = self.cache.get(key)
        if png is not None:
            return Picture(png, key, True)
        latest = self.cache.latest(key[0])
        if latest is not None and latest[1] < self.refresh and not current:
            # drawn a moment ago: the counts may move on again before a new one is
            return Picture(latest[0], key, False)
        renderer = self.renderer

        def render() -> bytes:  # runs on the renderer's thread
            entities = store.entities(publication, limit=WORDCLOUD_TOP_N, offset=0) or []
            return renderer.draw({e.entity: e.mentions for e in entities})

        done = renderer.request(key, render)
        if done is not None:
            done.wait(RENDER_WAIT)
        png = self.cache.get(key)
        if png is not None:
            return Picture(png, key, True)
        return Picture(latest[0], key, False) if latest is not None else None
