"""Every answer that is not a success: one JSON shape, `{"error": code, "detail": ...}`.

Views raise `ApiError`; werkzeug's own HTTP errors and unexpected exceptions are rendered the
same way by the handlers registered here. Bad input is a 4xx, never a 5xx.
"""

from __future__ import annotations

import logging
from typing import Mapping

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("ingest.web.errors")

RETRY_AFTER_FULL = 1
RETRY_AFTER_UNAVAILABLE = 5

# short error codes for werkzeug's own HTTP errors (routing, size limit, methods)
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "headers_too_large",
}


class ApiError(Exception):
    """An answer to the client, raised from anywhere in a view; rendered as JSON."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None):
    g.error_code = code
    response = jsonify(error=code, detail=detail)
    response.status_code = status
    response.headers.update(headers or {})
    return response



def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = HTTP_ERROR_CODES.get(status, "http_%d" % status)
        detail = exc.description or exc.name
        if status == 413:
            detail = f"request body over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        if status == 429:
            given = headers.get("Retry-After", "1")
            headers["Retry-After"] = str(max(1, int(given) if given.isdigit() else 1))
            detail = f"too many reads without an API key from this address ({exc.description}); slow down"
        if status == 413:
            headers["Connection"] = "close"  # the rest of the body is never read
        return error_response(status, code, detail, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # a bug, not bad input: log the traceback (never the body), answer JSON
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error; see the frontend log")
