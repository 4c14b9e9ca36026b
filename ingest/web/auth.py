"""API keys: compared in constant time against every configured key, never logged."""

from __future__ import annotations

import hmac
import logging
from typing import Iterable

from flask import request

from .errors import ApiError

log = logging.getLogger("ingest.web.auth")


def key_matches(presented: Iterable[str], keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    ok = False
    candidates = [p.encode("utf-8", "replace") for p in presented if p]
    for key in keys:
        expected = key.encode("utf-8")
        for candidate in candidates:
            ok |= hmac.compare_digest(candidate, expected)
    return ok


def presented_keys() -> list[str]:
    # `access_token` reaches us only because gunicorn_conf sets header_map (gunicorn >= 22 drops it)
    return [request.headers.get("X-API-Key", ""), request.headers.get("access_token", "")]


# a refused client's connection is closed: what it sends next (the rest of a body, more requests) is not read
CLOSE = {"Connection": "close"}


def require_key(keys: tuple[str, ...], what: str) -> None:
    if not keys:
        raise ApiError(401, "unauthorized", f"no API keys are configured on this server; {what} is disabled", CLOSE)
    given = presented_keys()
    if not any(given):
        raise ApiError(401, "unauthorized", "missing API key: send it in the X-API-Key header", CLOSE)
    if not key_matches(given, keys):
        log.info("rejected %s from %s: wrong API key", what, request.remote_addr)
        raise ApiError(401, "unauthorized", "invalid API key", CLOSE)


