"""Test-only seams: the environment variables through which the test suite injects faults into, or
observes, the real processes it starts. Each is read here and nowhere else, so this module lists every
place production code bends for a test. Unset (always, outside tests), each costs one environment look-up.

Every variable is named INGEST_TEST_*; tests/test_layout.py fails if one is read anywhere else.
"""

from __future__ import annotations

import os

POISON_TOKEN = "INGEST_TEST_POISON_TOKEN"
WRITE_LOG = "INGEST_TEST_WRITE_LOG"


def poison_token() -> str | None:
    """INGEST_TEST_POISON_TOKEN: an NER worker SIGKILLs itself on an article containing this token, as a
    segfault or the OOM killer would. The durability and Pub/Sub tests use it to show that an article
    that kills a worker twice is quarantined, and that the rest of the batch is still counted."""
    return os.environ.get(POISON_TOKEN) or None


def write_log() -> str | None:
    """INGEST_TEST_WRITE_LOG: a file the Firestore store appends one JSON line to per commit (writer, pid,
    when it started and ended, which documents). The Firestore tests read it to show who wrote which
    documents, and that two savers never commit the same document at once."""
    return os.environ.get(WRITE_LOG) or None
