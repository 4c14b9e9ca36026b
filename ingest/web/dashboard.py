"""The dashboard at GET /: publications, their top entities as bars, and a word cloud.

The page is a thin shell: its script polls the JSON read API (GET /publications and
GET /publications/<publication>/entities) so it shows exactly what the API answers, paged,
never all entities at once. The word cloud is the one thing rendered here, as a PNG from the
top entities, cached in-process under (publication key, articles, mentions) so a render happens
only when that publication's counts change, and asked for by one background thread per app, never
on a request's thread; the drawing itself is done by a low-priority child process (painter.py), so
it never holds the GIL of the worker serving the writers. Rendering has a budget, because a render
costs ~0.4 s of CPU and anybody may ask for a cloud: a publication whose counts keep changing is redrawn at most every
`WORDCLOUD_REFRESH` seconds for a request that does not name its current counts in `v` (its last
picture is served meanwhile, marked no-cache), and the renderer works on credit: `RENDER_BURST`
CPU seconds at once (a user clicking through publications), `RENDER_SHARE` of one core over time
(a client asking for clouds without end). Measured before the budget: 16 clients asking for the
cloud of a publication being written halved the write rate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from ..core.models import PublicationSummary
from ..core.naming import LABELS
from ..core.rules import publication_key
from .painter import WORDCLOUD_SIZE, WORDCLOUD_TOP_N, Painter, render_wordcloud, shared_painter  # noqa: F401 (tests read them here)

log = logging.getLogger("ingest.dashboard")

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)

DEFAULT_CACHE_ENTRIES = 64
# seconds: a picture younger than this is served even if the counts moved on (to a request not naming
# them: the dashboard's own requests do). At 10 s, 16 clients looping over the cloud of the publication
# being written cost the writers ~5% on a busy 2-core machine, 30 s a third of that.
WORDCLOUD_REFRESH = 30.0
RENDER_SHARE = 0.05       # of one core per frontend worker, sustained: the renderer's credit refills at this rate
RENDER_BURST = 4.0        # CPU seconds of credit at most (about ten pictures in a row)
RENDER_REST_MAX = 60.0    # seconds: the longest rest to pay off a debt
FIRST_PAINT_ROWS = 100  # the page's own table, one page of it (dashboard.js PUB_PAGE); the script pages the rest
POLL_SECONDS = 3
# the page loads nothing from elsewhere, and a name that slipped past escaping could not run
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


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
    picture's CPU time (this thread's and the child's) is taken from a credit of at most `burst` CPU seconds that refills at `share`
    of a core; in debt the thread rests until it is paid off. So clients hammering clouds of changing
    publications cost `share` of one core at most, and nothing for counts already drawn.
    """

    MAX_PENDING = 64

    def __init__(self, cache: WordcloudCache, share: float = RENDER_SHARE, burst: float = RENDER_BURST,
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


RENDER_WAIT = 5.0  # seconds a request waits for a fresh picture before it takes an older one or a 503


def _store():
    return current_app.extensions["ingest.store"]


def wordcloud_renderer() -> WordcloudRenderer:
    renderer = current_app.extensions.get("ingest.dashboard.renderer")
    if renderer is None:
        share = float(current_app.config.get("DASHBOARD_RENDER_SHARE", RENDER_SHARE))
        burst = float(current_app.config.get("DASHBOARD_RENDER_BURST", RENDER_BURST))
        renderer = current_app.extensions.setdefault("ingest.dashboard.renderer",
                                                     WordcloudRenderer(wordcloud_cache(), share, burst, shared_painter()))
    return renderer


def wordcloud_cache() -> WordcloudCache:
    cache = current_app.extensions.get("ingest.dashboard.wordcloud")
    if cache is None:
        capacity = int(current_app.config.get("DASHBOARD_WORDCLOUD_CACHE", DEFAULT_CACHE_ENTRIES))
        cache = current_app.extensions.setdefault("ingest.dashboard.wordcloud", WordcloudCache(capacity))
    return cache


def _read_keys() -> tuple[str, ...]:
    """The read keys the app was configured with, wherever create_app keeps its settings."""
    settings = current_app.extensions.get("ingest.settings") or current_app.config.get("INGEST_SETTINGS")
    keys = getattr(settings, "read_api_keys", None)
    if keys is None:
        keys = current_app.config.get("INGEST_READ_API_KEYS", ())
    if isinstance(keys, str):
        keys = tuple(k.strip() for k in keys.split(",") if k.strip())
    return tuple(keys)


def _reads_allowed() -> bool:
    keys = _read_keys()
    if not keys:
        return True
    given = request.headers.get("X-API-Key") or request.headers.get("access_token") or ""
    return any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)


def _error(status: int, code: str, detail: str):
    response = jsonify(error=code, detail=detail)
    response.status_code = status
    return response


@bp.get("/")
def page():
    """The HTML shell; with public reads it carries the publications table for a fast first paint."""
    publications = None
    if not _read_keys():
        try:
            publications = _store().publications(FIRST_PAINT_ROWS + 1, 0)
        except Exception:  # the script will retry and say what the read API answers
            log.exception("dashboard: store read failed")
    html = render_template(
        "dashboard.html",
        publications=publications[:FIRST_PAINT_ROWS] if publications else publications,
        more=bool(publications) and len(publications) > FIRST_PAINT_ROWS,
        poll_seconds=POLL_SECONDS,
        api_root=request.script_root,
        viewer_token=_viewer_token(),
        viewer_renew_url=url_for("dashboard.viewer_token"),
        labels=LABELS,
    )
    response = current_app.make_response(html)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _viewer_token() -> str:
    """The page's own reads are not the crowd's: a signed token the HTTP layer's pacing lets through
    in a line of its own (pacing.py). Empty where nothing paces reads."""
    pacer = current_app.extensions.get("ingest.read_pacer")
    return pacer.viewer_token(request.remote_addr or "") if pacer is not None else ""


@bp.get("/dashboard/viewer-token")
def viewer_token():
    """A fresh viewer token, for a page open longer than a token lasts (dashboard.js asks at half-life)."""
    from .pacing import VIEWER_TTL

    response = jsonify(token=_viewer_token(), expires_in=VIEWER_TTL)
    response.headers["Cache-Control"] = "no-store"
    return response


def _find(publication: str) -> PublicationSummary | None:
    return _store().summary(publication)


@bp.get("/dashboard/wordcloud.png")
def wordcloud_png():
    """?publication=NAME[&v=ARTICLES-MENTIONS]: the cloud of NAME's top entities by mentions.

    `v` only busts browser caches; the server always answers for the current counts, and lets
    the browser keep a response for long only when `v` names those counts.
    """
    if not _reads_allowed():
        return _error(401, "unauthorized", "reads need an API key in header X-API-Key")
    publication = request.args.get("publication", "")
    key = publication_key(publication)
    store = _store()
    renderer = wordcloud_renderer()

    def render() -> bytes:  # runs on the renderer's thread
        entities = store.entities(publication, limit=WORDCLOUD_TOP_N, offset=0) or []
        return renderer.draw({e.entity: e.mentions for e in entities})

    try:
        summary = _find(publication) if key else None
        if summary is None:
            return _error(404, "unknown_publication", "no such publication")
        cache_key = (key, summary.articles, summary.mentions)
        current = request.args.get("v") == f"{summary.articles}-{summary.mentions}"  # the URL names these counts
        cache = wordcloud_cache()
        png = cache.get(cache_key)
        fresh = png is not None
        if png is None:
            latest = cache.latest(key)
            refresh = float(current_app.config.get("DASHBOARD_WORDCLOUD_REFRESH", WORDCLOUD_REFRESH))
            if latest is not None and latest[1] < refresh and not current:
                # drawn a moment ago: the counts may move on again before a new one is (a request
                # naming the current counts, as the dashboard's does, waits for them: the budget holds)
                png = latest[0]
            else:
                done = renderer.request(cache_key, render)
                if done is not None:
                    done.wait(RENDER_WAIT)
                png = cache.get(cache_key)
                fresh = png is not None
                png = png or (latest[0] if latest is not None else None)
        if png is None:
            response = _error(503, "rendering", "the word cloud is being drawn; retry in a moment")
            response.headers["Retry-After"] = "1"
            return response
    except Exception:  # a locked database or unreachable Firestore is not the client's fault
        log.exception("dashboard: word cloud for %r failed", key)
        response = _error(503, "store_unavailable", "the store could not be read; retry later")
        response.headers["Retry-After"] = "1"
        return response
    response = current_app.response_class(png, mimetype="image/png")
    if fresh:
        response.set_etag(hashlib.blake2b(repr(cache_key).encode(), digest_size=12).hexdigest())
    scope = "private" if _read_keys() else "public"
    if fresh and current:
        response.headers["Cache-Control"] = f"{scope}, max-age=86400, immutable"
    else:
        response.headers["Cache-Control"] = f"{scope}, no-cache"
    return response.make_conditional(request)
