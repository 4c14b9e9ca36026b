"""A NER worker: a small loop of named steps, fed and drained by the arbiter over its own pipe.

The per-publication cache is flushed when the arbiter asks (idle input, flush interval, drain)
or when `cache_size` messages are held. The worker is single-threaded on purpose (FACTS.md:
a second live thread slows spaCy by ~20%).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from .. import testing
from ..core.models import Aggregate, merge
from . import wire
from .child import BootFailure, Child

log = logging.getLogger("ingest.worker")

class Worker(Child):
    role = "worker"

    def __init__(self, conn, settings, number: int):
        super().__init__(conn, settings, number)
        self.cache: dict[str, Aggregate] = {}
        self.held = 0  # messages in the cache
        self.oldest = 0.0
        self.processor = None
        self.poison = testing.poison_token()  # a test's fault injection; None outside tests

    def boot(self) -> None:
        from .nlp import ModelLoadError, Processor

        try:
            self.processor = Processor(self.settings.model, self.settings.batch_size, aliases=self.settings.alias_table)
        except ModelLoadError as exc:
            raise BootFailure(str(exc)) from None

    # -- steps ------------------------------------------------------------
    def handle(self, message: tuple) -> bool:
        kind = message[0]
        if kind == wire.POSTS:
            self.process(message[1])
            self.conn.send((wire.DONE, self.flush() if self.flush_due() else None))
        elif kind == wire.FLUSH:
            self.conn.send((wire.DONE, self.flush()))
        elif kind == wire.STOP:
            self.conn.send((wire.DONE, self.flush()))
            return False
        else:
            log.error("%s: unknown message %r ignored", self.name, kind)
            self.conn.send((wire.DONE, None))
        return True

    def process(self, posts: list) -> None:
        if self.poison and any(self.poison in p[1] for p in posts):
            os.kill(os.getpid(), signal.SIGKILL)
        if not self.held:
            self.oldest = time.monotonic()
        merge(self.cache, self.processor.process(posts))
        self.held += len(posts)

    def flush_due(self) -> bool:
        return self.held >= self.settings.cache_size or time.monotonic() - self.oldest >= self.settings.flush_interval

    def flush(self) -> list[Aggregate]:
        flushed = list(self.cache.values())
        self.cache = {}
        self.held = 0
        return flushed
