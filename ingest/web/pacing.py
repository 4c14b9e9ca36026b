"""Reads without a key are paced in the HTTP layer, before an app thread is involved.

A 429 answered at once does not slow a client that loops: 16 such clients got ~800 refusals a
second out of the front door and left the writers a fifth of the CPU. So an anonymous read over
its limit waits here (a sleeping coroutine, no thread, no CPU) until the limit has room again, for
at most `MAX_WAIT` seconds, and only then is it served or refused: a read that cannot be served
within that time (a spent per-minute limit) is still held until then, so a refusal costs a looping
client a second too. A client that waits for its answers is slowed to the limit; one that does not
runs into the connection bound. The limits are flask-limiter's syntax, counted per client address
and per frontend worker with the `limits` library (the one flask-limiter counts with); the app
keeps flask-limiter for any other server.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Iterable

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import HTTPException

from . import metrics
from .auth import key_matches

MAX_WAIT = 1.0       # seconds an over-limit read is held before it is refused
KEY_HEADERS = (b"x-api-key", b"access-token")  # `access_token` too: underscores are read as dashes
PACED = "ingest.paced"  # environ flag: the HTTP layer has counted this read


class ReadPacer:
    """Which requests are anonymous reads, and when each may go on."""

    def __init__(self, rate_limit: str, keys: Iterable[str], url_map, read_endpoints: Iterable[str]):
        self.limits = parse_many(rate_limit)
        self.keys = tuple(keys)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.adapter = url_map.bind("localhost")
        self.read_endpoints = frozenset(read_endpoints)
        self.lines: dict[str, list] = {}  # address -> [its lock, reads waiting for it]

    def applies(self, method: bytes, path: str, headers) -> bool:
        if method not in (b"GET", b"HEAD"):
            return False
        try:
            endpoint, _ = self.adapter.match(path, method="GET")
        except HTTPException:  # not found, a redirect, another method: the app answers those
            return False
        if endpoint not in self.read_endpoints:
            return False
        presented = [value.decode("latin-1") for name, value in headers
                     if name.replace(b"_", b"-") in KEY_HEADERS]
        return not (self.keys and key_matches(presented, self.keys))

    async def admit(self, address: str) -> int | None:
        """None when the read may go on; otherwise the Retry-After, in seconds, of its 429.

        The reads of one address wait in line (asyncio's lock is first come, first served): only
        the first asks the limiter and sleeps until the limit has room, so a crowd of held reads
        costs one look at the limiter per slot, not one per read each time a slot frees."""
        deadline = time.monotonic() + MAX_WAIT
        line = self.lines.get(address)
        if line is None:
            line = self.lines[address] = [asyncio.Lock(), 0]
        line[1] += 1
        try:
            try:
                await asyncio.wait_for(line[0].acquire(), max(deadline - time.monotonic(), 0.001))
            except (asyncio.TimeoutError, TimeoutError):
                metrics.PACED_READS.labels("refused").inc()
                return 1
            try:
                return await self._first_in_line(address, deadline)
            finally:
                line[0].release()
        finally:
            line[1] -= 1
            if line[1] == 0:
                self.lines.pop(address, None)

    async def _first_in_line(self, address: str, deadline: float) -> int | None:
        held = False
        while True:
            if all(self.limiter.test(limit, address) for limit in self.limits):
                for limit in self.limits:
                    self.limiter.hit(limit, address)
                if held:
                    metrics.PACED_READS.labels("served").inc()
                return None
            now = time.time()
            # the window of a full limit frees its oldest hit at reset_time (time passes between
            # the calls, so a limit may have freed up meanwhile: then try again at once)
            wait = max((stats.reset_time - now for stats in (
                self.limiter.get_window_stats(limit, address) for limit in self.limits)
                if stats.remaining == 0), default=0.0)
            wait = max(wait, 0.001)
            if time.monotonic() + wait > deadline:
                # refused, but only at the deadline: a 429 at once would let a looping client spin
                # (a spent per-minute limit gave 650 refusals a second to 16 clients)
                held_for = max(deadline - time.monotonic(), 0)
                await asyncio.sleep(held_for)
                metrics.PACED_READS.labels("refused").inc()
                return max(1, math.ceil(wait - held_for))
            held = True
            await asyncio.sleep(wait)
