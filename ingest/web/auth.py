"""API keys: where a client presents one, and the one check of it (constant time, never logged).

A key comes in `X-API-Key` or `access_token` (the course client's header; `access-token` is the
same header to us). The HTTP layer looks at raw header lines (`keys_in_headers`, to pace requests
without a key and to refuse a keyless write before its body), the app at Flask's request
(`presented_keys`); both compare with `key_matches`.
"""

from __future__ import annotations

import hmac
import logging
from typing import Iterable

from flask import request

from .errors import ApiError

log = logging.getLogger("ingest.web.auth")

KEY_HEADERS = (b"x-api-key", b"access-token")  # as raw, lower-case names; an underscore reads as a dash


def key_matches(presented: Iterable[str], keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    ok = False
    candidates = [p.encode("utf-8", "replace") for p in presented if p]
    for key in keys:
        expected = key.encode("utf-8")
        for candidate in candidates:
            ok |= hmac.compare_digest(candidate, expected)
    return ok


def keys_in_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The keys presented in raw (h11) header lines."""
    return [value.decode("latin-1") for name, value in headers if name.lower().replace(b"_", b"-") in KEY_HEADERS]


def presented_keys() -> list[str]:
    # `access_token` reaches us only because gunicorn_conf sets header_map (gunicorn >= 22 drops it)
    return [request.headers.get("X-API-Key", ""), request.headers.get("access_token", "")]


def allowed(keys: tuple[str, ...]) -> bool:
    """True when no key is asked for, or the request presents one of `keys`."""
    return not keys or key_matches(presented_keys(), keys)


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
