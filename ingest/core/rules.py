"""The counting rules of the contract, in one place so every layer keys things the same way."""

from __future__ import annotations

import hashlib

SKIPPED_LABELS = frozenset({"CARDINAL", "DATE", "MONEY", "ORDINAL", "PERCENT", "QUANTITY", "TIME"})
MAX_PUBLICATION_KEY = 200
MAX_PUBLICATION_BYTES = 1000  # UTF-8 bytes of a publication as sent, before whitespace is folded
MAX_ARTICLE_CHARS = 200_000  # the default longest article (--max-article-chars, INGEST_MAX_ARTICLE_CHARS)
MAX_CLIENT_ID = 200
# A store's batch markers outlive any journal entry that could replay them: the journal refuses to
# replay a recorded batch older than MARKER_TTL_SECONDS - MARKER_MARGIN_SECONDS (see backend/journal.py).
MARKER_TTL_SECONDS = 30 * 86400
MARKER_MARGIN_SECONDS = 86400


def normalize(text: str) -> str:
    return " ".join(text.split())


def publication_key(publication: str) -> str:
    return normalize(publication).lower()


def entity_key(text: str) -> str:
    return normalize(text).lower()


def doc_id(key: str) -> str:
    """A Firestore-safe, process-stable document id for any key (never Python's hash())."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()
