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
The limits are flask-limiter's syntax, counted with the `limits` library (the one flask-limiter
counts with); the app keeps flask-limiter on the read endpoints for any other server.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Iterable

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from . import metrics
from .auth import key_matches

MAX_WAIT = 1.0       # seconds an over-limit request is held before it is refused
KEY_HEADERS = (b"x-api-key", b"access-token")  # `access_token` too: underscores are read as dashes
PACED = "ingest.paced"  # environ flag: the HTTP layer has counted this request
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
OVERALL = "*"  # the limiter's key for all anonymous requests together
ALL_PROBES = "*probes"  # and for all anonymous probes (no address looks like these)


class ReadPacer:
    """Which requests are anonymous, and when each may go on."""

    def __init__(self, per_address: str, keys: Iterable[str], overall: str = "", probes: str = ""):
        self.per_address = parse_many(per_address) if per_address.strip() else []
        self.overall = parse_many(overall) if overall.strip() else []
        self.probes = parse_many(probes) if probes.strip() else []
        self.keys = tuple(keys)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.lines: dict[str, list] = {}  # limiter key -> [its lock, requests waiting for it]

    def applies(self, headers) -> bool:
        """True for a request without a valid key (with no keys configured, every request)."""
        presented = [value.decode("latin-1") for name, value in headers
                     if name.replace(b"_", b"-") in KEY_HEADERS]
        return not (self.keys and key_matches(presented, self.keys))

    async def admit(self, address: str, path: str = "") -> int | None:
        """None when the request may go on; otherwise the Retry-After, in seconds, of its 429.

        First in its address's line, then in the line of all anonymous requests (probes: of all
        anonymous probes); one deadline for both. Each line is first come, first served (asyncio's
        lock), and only its first asks the limiter and sleeps until there is room, so a crowd of held
        requests costs one look at the limiter per slot, not one per request each time a slot frees."""
        deadline = time.monotonic() + MAX_WAIT
        held = False
        stages = [(address, self.per_address),
                  (ALL_PROBES, self.probes) if path in PROBES else (OVERALL, self.overall)]
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
                except TimeoutError:
                    return 1
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
                held_for = max(deadline - time.monotonic(), 0)
                await asyncio.sleep(held_for)
                return max(1, math.ceil(wait - held_for))
            held = True
            await asyncio.sleep(wait)
