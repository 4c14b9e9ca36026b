"""Sixteen keyless readers in other processes against one keyed writer: shared by the hostile
test (writes keep flowing, every one answered 202) and `benchmarks/hostile.py` (the write rate
under the crowd against the rate alone, a ratio that belongs in a benchmark, not in a test)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from dataclasses import dataclass, field

import httpx

READ_MIX = ("/dashboard/wordcloud.png?publication=Read%20{}", "/publications",
            "/publications/Read%20{}/entities?limit=50", "/", "/dashboard/wordcloud.png?publication=Writer")
OTHER_MIX = ("/healthz", "/nothing-here", "/openapi.json", "/dashboard/static/dashboard.js", "/readyz")
READERS = 16


def fill(backend, frontend) -> None:
    """Publications to read: five of them, ten articles each."""
    with httpx.Client(base_url=frontend.url, headers={"X-API-Key": frontend.api_key}) as http:
        r = http.post("/posts", json=[{"publication": f"Read {i % 5}", "content": f"Report {i}. Angela Merkel met "
                                       "Barack Obama in Berlin and Paris with NATO."} for i in range(50)])
        assert r.status_code == 202, r.text
    backend.wait_idle()


def _reader(url: str, paths, on, stop, count) -> None:
    """A read-heavy client: while `on` is set, the given reads in turn, each as soon as the last is
    answered. At nice 19: the clients stand for other machines, their own CPU is not the server's."""
    os.nice(19)
    with httpx.Client(base_url=url, timeout=10) as http:
        for i, path in enumerate(itertools.cycle(paths)):
            on.wait()  # blocks: an idle reader costs nothing while the writer is measured alone
            if stop.is_set():
                return
            try:
                http.get(path.format(i // len(paths) % 5))  # each pass through the paths: the next publication
            except httpx.HTTPError:
                pass
            with count.get_lock():
                count.value += 1


def draw_the_clouds(frontend, publications) -> None:
    """The clouds a running service has drawn already, in every frontend worker: each asked for
    with a key eight times on new connections (a connection stays with its worker)."""
    for name in publications:
        for _ in range(8):
            r = httpx.get(f"{frontend.url}/dashboard/wordcloud.png", params={"publication": name},
                          headers={"X-API-Key": frontend.api_key}, timeout=30)
            assert r.status_code == 200, r.text


def _writes(http: httpx.Client, seconds: float) -> tuple[int, float]:
    """Sequential single posts for `seconds`; each must be answered 202."""
    n, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        r = http.post("/post/enqueue", json={"publication": "Writer", "content": f"Report {n}. Olaf Scholz spoke."})
        assert r.status_code == 202, r.text
        n += 1
    return n, time.monotonic() - started


@dataclass
class Windows:
    """Writes and seconds per kind of window, and each loaded window's writes and reads."""

    alone: list = field(default_factory=lambda: [0, 0.0])
    loaded: list = field(default_factory=lambda: [0, 0.0])
    loaded_writes: list = field(default_factory=list)
    loaded_reads: list = field(default_factory=list)
    pairs: int = 0

    @property
    def reads(self) -> int:
        return sum(self.loaded_reads)

    @property
    def ratio(self) -> float:
        """The write rate in all loaded windows over that in all alone ones."""
        return (self.loaded[0] / self.loaded[1]) / (self.alone[0] / self.alone[1])


def hammer(backend, frontend, paths, pairs: int, window: float = 1.0, more_if_below: float | None = None) -> Windows:
    """One keyed sequential writer, alone and with 16 keyless readers, in `pairs` interleaved pairs
    of windows (alone-loaded, then loaded-alone, so a drift of the machine's speed cancels out).
    `more_if_below`: measure as many pairs again when the ratio is under it (steal time spoils a block)."""
    with httpx.Client(base_url=frontend.url, headers={"X-API-Key": frontend.api_key}, timeout=10) as http:
        _writes(http, 0.2)  # the publication being written has a cloud from the start
    backend.wait_idle()
    draw_the_clouds(frontend, [f"Read {n}" for n in range(5)] + ["Writer"])
    context = multiprocessing.get_context("spawn")
    on, stop, count = context.Event(), context.Event(), context.Value("i", 0)
    readers = [context.Process(target=_reader, args=(frontend.url, paths, on, stop, count)) for _ in range(READERS)]
    out = Windows()
    try:
        for reader in readers:
            reader.start()
        on.set()
        first = count.value
        while count.value < first + 2 * READERS:  # warm-up: the readers' connections open, answered
            time.sleep(0.05)
        with httpx.Client(base_url=frontend.url, headers={"X-API-Key": frontend.api_key}, timeout=10) as http:
            on.clear()
            _writes(http, window)
            for i in range(2 * pairs):
                if i == pairs and (more_if_below is None or out.ratio >= more_if_below):
                    break
                out.pairs += 1
                for kind in (("alone", "loaded") if i % 2 == 0 else ("loaded", "alone")):
                    on.set() if kind == "loaded" else on.clear()
                    before = count.value
                    n, took = _writes(http, window)
                    getattr(out, kind)[0] += n
                    getattr(out, kind)[1] += took
                    if kind == "loaded":
                        out.loaded_reads.append(count.value - before)
                        out.loaded_writes.append(n)
    finally:
        stop.set()
        on.set()
        for reader in (r for r in readers if r.pid is not None):
            reader.join(15)
            if reader.is_alive():
                reader.kill()
                reader.join()
    return out
