"""Requests without a key are paced in the HTTP layer, before an app thread is involved.

A 429 answered at once does not slow a client that loops: 16 such clients got ~800 refusals a
second out of the front door and left the writers a fifth of the CPU. So an anonymous request over
its limit waits here (a sleeping coroutine, no thread, no CPU) until the limit has room again, for
at most `MAX_WAIT` seconds, and only then is it served or refused: one that cannot be served
within that time (a spent per-minute limit) is still held until then, so a refusal costs a looping
client a second too. A client that waits for its answers is slowed to the limit; one that does not
runs into the connection bound.

Every request without a valid key is anonymous, whatever it asks for: reads, the docs, static
files, a 404, a write that will get its 401. Three limits apply, all per frontend worker:
- `per_address` (INGEST_READ_RATE_LIMIT), counted per client address, so one client cannot take
  what others need;
- `overall` (INGEST_ANON_RATE_LIMIT), all anonymous requests together, whatever their address:
  the cost bound. Per-address limits alone are no bound: sixteen addresses get sixteen times as
  much. Measured on 2 cores, every anonymous request served took about half a write's worth of
  CPU from the writers; at the shipped bound 16 hammering clients leave the writers >= 90%.
- `probes` (INGEST_PROBE_RATE_LIMIT), all anonymous probes (`/healthz`, `/readyz`, `/metrics`)
  together, in a line of their own: a crowd of anonymous readers cannot make a load balancer's
  health check wait, and a crowd of probes from many addresses is bounded too (without this bound,
  sixteen addresses looping on /healthz had twenty a second each, per worker).
The limits are written in the `limits` library's syntax (20/second;600/minute) and counted with it.
This is the frontend's only rate limiter: under another WSGI server (`ingest.frontend:create_app()`)
nothing paces requests without a key; put a proxy's limit in front of it.

The dashboard's own viewer is not one of the crowd. Before, one other keyless client reading was
enough for the page to show a red 429 banner (19 of 90 sequential keyless reads were refused).
- The page `/` hands its viewer a signed read token (`viewer_token`: HMAC-SHA256 over its expiry and
  the viewer's address, `VIEWER_TTL` seconds; the secret is derived from the configured API keys, so
  every worker and every frontend with the same keys honours it; with no keys at all it is per
  process). dashboard.js sends it as `X-Viewer-Token` and renews it at /dashboard/viewer-token. A
  request with a valid token skips the anonymous lines and waits in lines of its own: its token's
  (`VIEWER_EACH`) and all viewers' together (`VIEWERS_ALL`, the cost bound of viewers). The token
  grants no read where INGEST_READ_API_KEYS asks for a key; it is only about pacing.
- The page shell (`/` and /dashboard/static/...) of an address that is not looping (fewer than
  `QUIET` anonymous requests in the last minute), when the line of all anonymous requests is busy,
  waits in a line of its own (`PAGES`, all such addresses together) instead of behind the crowd, so
  the page loads while sixteen clients hammer the read API; an address that loops is back in the
  crowd's line after `QUIET` requests, so a crowd gains at most `PAGES` over the overall bound.
A 429 names the one limit that refused it (`Refusal.limit`), e.g. "20/10seconds in all".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from typing import Iterable

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from . import metrics
from .auth import key_matches, keys_in_headers

MAX_WAIT = 1.0       # seconds an over-limit request is held before it is refused
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
OVERALL = "*"  # the limiter's key for all anonymous requests together
ALL_PROBES = "*probes"  # and for all anonymous probes (no address looks like these)
ALL_PAGES = "*pages"  # the page shell of addresses that are not looping
ALL_VIEWERS = "*viewers"  # every request with a valid viewer token
VIEWER_HEADER = b"x-viewer-token"
VIEWER_TTL = 600  # seconds a viewer token is good for; dashboard.js renews it at half that
VIEWER_EACH = "10/second;300/minute"  # one viewer: the page polls about one read a second
VIEWERS_ALL = "10/second"  # all viewers together, per frontend worker
PAGES = "8/10seconds"  # page shells of quiet addresses behind a crowd, together (a page load is 4 requests)
QUIET = "30/minute"  # an address with fewer anonymous requests than this is not looping
PAGE_PREFIXES = ("/dashboard/static/",)


class Refusal(int):
    """The Retry-After of a 429, in seconds, and the one limit that refused it ("20/10seconds in all")."""

    limit: str

    def __new__(cls, retry_after: int, limit: str):
        self = super().__new__(cls, retry_after)
        self.limit = limit
        return self


def _spelled(item) -> str:
    """A `limits` item written as in the settings: 20/second, 20/10seconds."""
    name = item.GRANULARITY.name
    return f"{item.amount}/{item.multiples}{name}s" if item.multiples > 1 else f"{item.amount}/{name}"


def _viewer_secret(keys: Iterable[str]) -> bytes:
    keys = sorted(set(keys))
    if not keys:
        return secrets.token_bytes(32)
    return hashlib.sha256(b"ingestiond viewer token\0" + "\0".join(keys).encode("utf-8", "replace")).digest()


class ReadPacer:
    """Which requests are anonymous, and when each may go on."""

    def __init__(self, per_address: str, keys: Iterable[str], overall: str = "", probes: str = ""):
        self.per_address = parse_many(per_address) if per_address.strip() else []
        self.overall = parse_many(overall) if overall.strip() else []
        self.probes = parse_many(probes) if probes.strip() else []
        self.keys = tuple(keys)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.lines: dict[str, list] = {}  # limiter key -> [its lock, requests waiting for it]
        self.secret = _viewer_secret(self.keys)
        self.viewer_each, self.viewers_all = parse_many(VIEWER_EACH), parse_many(VIEWERS_ALL)
        self.pages, self.quiet = parse_many(PAGES), parse_many(QUIET)
        self.scope = {id(limits): scope for limits, scope in (
            (self.per_address, "per address"), (self.overall, "in all"), (self.probes, "for all probes"),
            (self.viewer_each, "for one dashboard viewer"), (self.viewers_all, "for all dashboard viewers"),
            (self.pages, "for all dashboard page loads"))}

    # -- the dashboard viewer's token ----------------------------------------------------------
    def _signature(self, expires: int, address: str) -> str:
        return hmac.new(self.secret, f"{expires}|{address}".encode(), hashlib.sha256).hexdigest()[:32]

    def viewer_token(self, address: str, now: float | None = None) -> str:
        """A read token for the page's viewer at `address`: good for VIEWER_TTL seconds, there only."""
        expires = int(now if now is not None else time.time()) + VIEWER_TTL
        return f"{expires}.{self._signature(expires, address)}"

    def viewer(self, headers, address: str) -> str | None:
        """The signature of a valid viewer token in `headers` (it names the viewer's line), or None."""
        for name, value in headers:
            if name.lower() == VIEWER_HEADER:
                expires, _, signature = value.decode("latin-1").partition(".")
                if not expires.isdigit() or not 0 < int(expires) - time.time() <= VIEWER_TTL + 60:
                    return None
                if hmac.compare_digest(signature, self._signature(int(expires), address)):
                    return signature
                return None
        return None

    def applies(self, headers) -> bool:
        """True for a request without a valid key (with no keys configured, every request)."""
        return not (self.keys and key_matches(keys_in_headers(headers), self.keys))

    def _stages(self, address: str, path: str, headers) -> list:
        viewer = self.viewer(headers, address) if headers is not None else None
        if viewer is not None:
            return [("viewer:" + viewer, self.viewer_each), (ALL_VIEWERS, self.viewers_all)]
        quiet = all(self.limiter.test(limit, "quiet:" + address) for limit in self.quiet)
        for limit in self.quiet:
            self.limiter.hit(limit, "quiet:" + address)
        if path in PROBES:
            second = (ALL_PROBES, self.probes)
        elif quiet and (path == "/" or path.startswith(PAGE_PREFIXES)) and not self._room(OVERALL, self.overall):
            second = (ALL_PAGES, self.pages)  # behind a crowd: the page shell's own line
        else:
            second = (OVERALL, self.overall)
        return [(address, self.per_address), second]

    def _room(self, key: str, limits) -> bool:
        """Nobody waits in the line and its limits have room: a request would go on at once."""
        return key not in self.lines and all(self.limiter.test(limit, key) for limit in limits)

    async def admit(self, address: str, path: str = "", headers=None) -> Refusal | None:
        """None when the request may go on; otherwise its 429's Retry-After and the limit that refused it.

        First in its address's line, then in the line of all anonymous requests (probes: of all
        anonymous probes; the page shell of a quiet address: of those; a viewer with a token: its
        token's, then all viewers'); one deadline for both. Each line is first come, first served (asyncio's
        lock), and only its first asks the limiter and sleeps until there is room, so a crowd of held
        requests costs one look at the limiter per slot, not one per request each time a slot frees."""
        deadline = time.monotonic() + MAX_WAIT
        held = False
        stages = self._stages(address, path, headers)
        for key, limits in stages:
            if not limits:
                continue
            outcome = await self._in_line(key, limits, deadline)
            if outcome is None:
                continue
            if outcome is True:
                held = True
                continue
            metrics.PACED_READS.labels("refused").inc()
            return outcome
        if held:
            metrics.PACED_READS.labels("served").inc()
        return None

    async def _in_line(self, key: str, limits, deadline: float):
        """None (went on at once), True (went on after a wait), or the Retry-After of a refusal."""
        line = self.lines.get(key)
        if line is None:
            line = self.lines[key] = [asyncio.Lock(), 0]
        line[1] += 1
        try:
            if line[0].locked():
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                        await line[0].acquire()
                except TimeoutError:  # the line ahead took all the time: its limit is the one
                    return Refusal(1, self._describe(limits))
            else:
                await line[0].acquire()
            try:
                return await self._first_in_line(key, limits, deadline)
            finally:
                line[0].release()
        finally:
            line[1] -= 1
            if line[1] == 0:
                self.lines.pop(key, None)

    async def _first_in_line(self, key: str, limits, deadline: float):
        held = False
        while True:
            if all(self.limiter.test(limit, key) for limit in limits):
                for limit in limits:
                    self.limiter.hit(limit, key)
                return True if held else None
            now = time.time()
            # the window of a full limit frees its oldest hit at reset_time (time passes between
            # the calls, so a limit may have freed up meanwhile: then try again at once)
            wait = max((stats.reset_time - now for stats in (
                self.limiter.get_window_stats(limit, key) for limit in limits)
                if stats.remaining == 0), default=0.0)
            wait = max(wait, 0.001)
            if time.monotonic() + wait > deadline:
                # refused, but only at the deadline: a 429 at once would let a looping client spin
                # (a spent per-minute limit gave 650 refusals a second to 16 clients)
                full = max((limit for limit in limits if self.limiter.get_window_stats(limit, key).remaining == 0),
                           key=lambda limit: self.limiter.get_window_stats(limit, key).reset_time, default=None)
                held_for = max(deadline - time.monotonic(), 0)
                await asyncio.sleep(held_for)
                return Refusal(max(1, math.ceil(wait - held_for)), self._describe(limits, full))
            held = True
            await asyncio.sleep(wait)

    def _describe(self, limits, full=None) -> str:
        """"20/second per address": the one limit (of a line's) that is full, and whose it is."""
        spelled = _spelled(full) if full is not None else ";".join(_spelled(limit) for limit in limits)
        return f"{spelled} {self.scope.get(id(limits), '')}".strip()
