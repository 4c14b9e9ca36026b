"""A fleet backend's scratch journal: the text of held Pub/Sub messages waits on disk, not in memory.

Pub/Sub, not this file, is the durable intake: it is emptied at every start (whatever it held was
not acknowledged and is still in Pub/Sub) and written without fsync. Only its writer id is kept,
so the packed layout's documents stay this backend's across restarts.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..journal import Journal


def scratch_journal(settings) -> Journal:
    """This backend's scratch journal, emptied first: what it held is still in Pub/Sub, unacknowledged."""
    base = settings.journal_path
    path = base.with_name(base.stem + "-pubsub" + (base.suffix or ".db"))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another backend on it: leave it, Journal() says so
        writer = Journal.peek_meta(path, "writer")
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    # the intake bounds the articles it holds (PubSubIntake._admit); the journal only its bytes
    journal = Journal(path, max_articles=2**62, max_bytes=settings.journal_size,
                      retention=settings.dedup_retention, sync=False)
    if writer:  # the packed layout's documents of this backend stay its own across restarts
        journal.set_meta("writer", writer, replace=False)
    return journal
