"""A NER worker: a small loop of named steps, fed and drained by the arbiter over its own pipe.

The per-publication cache is flushed when the arbiter asks (idle input, flush interval, drain)
or when `cache_size` messages are held. The worker is single-threaded on purpose.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from . import logs, wire
from .models import ProcessedPost

log = logging.getLogger("ingest.worker")


class Worker:
    def __init__(self, conn, settings, number: int):
        self.conn = conn
        self.settings = settings
        self.number = number
        self.cache: dict[str, ProcessedPost] = {}
        self.held = 0  # messages in the cache
        self.oldest = 0.0
        self.processor = None

    # -- lifecycle --------------------------------------------------------
    def run(self) -> int:
        self.ignore_signals()
        if not self.boot():
            return wire.EXIT_BOOT_ERROR
        self.conn.send((wire.READY, os.getpid()))
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                log.error("worker %d: arbiter went away; %d unflushed messages lost", self.number, self.held)
                return 1
            if not self.handle(message):
                return 0

    def ignore_signals(self) -> None:
        """The arbiter drives shutdown; a signal to the whole group must not cut a drain short."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def boot(self) -> bool:
        from .nlp import ModelLoadError, Processor

        try:
            self.processor = Processor(self.settings.model, self.settings.batch_size)
        except ModelLoadError as exc:
            log.error("worker %d: %s", self.number, exc)
            self.conn.send((wire.BOOT_ERROR, str(exc)))
            return False
        return True

    # -- steps ------------------------------------------------------------
    def handle(self, message: tuple) -> bool:
        kind = message[0]
        if kind == wire.POSTS:
            self.process(message[1])
            due = self.held >= self.settings.cache_size or time.monotonic() - self.oldest >= self.settings.flush_interval
            self.conn.send((wire.DONE, self.flush() if due else None))
            return True
        if kind == wire.FLUSH:
            self.conn.send((wire.DONE, self.flush()))
            return True
        if kind == wire.STOP:
            self.conn.send((wire.DONE, self.flush()))
            return False
        log.error("worker %d: unknown message %r ignored", self.number, kind)
        self.conn.send((wire.DONE, None))
        return True

    def process(self, posts: list) -> None:
        if not self.held:
            self.oldest = time.monotonic()
        for post in self.processor.process(posts):
            self.cache_add(post)
        self.held += len(posts)

    def cache_add(self, post: ProcessedPost) -> None:
        current = self.cache.get(post.key)
        if current is None:
            self.cache[post.key] = post
        else:
            current += post

    def flush(self) -> list:
        flushed = [wire.post_to_wire(p) for p in self.cache.values()]
        self.cache.clear()
        self.held = 0
        return flushed


def worker_main(conn, settings, number: int) -> None:
    """Entry point of a spawned worker process."""
    logs.setup(settings.log_level, f"worker-{number}")
    sys.exit(Worker(conn, settings, number).run())
