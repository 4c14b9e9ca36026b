"""Every answer that is not a success: one JSON shape, `{"error": code, "detail": ...}`.

`error_body` is the one place that shape is made: the HTTP layer (server.py) answers with it
before the app is involved, and the app's views raise `ApiError`, rendered by the handlers
registered here, as are werkzeug's own HTTP errors and unexpected exceptions. Bad input is a 4xx,
never a 5xx.
"""

from __future__ import annotations

import json
import logging
from typing import Mapping

from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("ingest.web.errors")

RETRY_AFTER_FULL = 1
RETRY_AFTER_UNAVAILABLE = 5

# the short error code of a status when nothing more specific is known: werkzeug's own HTTP errors
# (routing, size limit, methods) and the HTTP layer's refusals (framing, deadlines, bounds)
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    414: "request_line_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "headers_too_large",
    501: "not_implemented",
    503: "overloaded",
    505: "http_version_not_supported",
}


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, f"http_{status}")


def error_body(status: int, detail: str, code: str | None = None) -> bytes:
    """The JSON of every error answer, from the app or the HTTP layer."""
    return json.dumps({"error": code or error_code(status), "detail": detail}).encode()


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
    response = current_app.response_class(error_body(status, detail, code), status=status,
                                          mimetype="application/json")
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = error_code(status)
        detail = exc.description or exc.name
        headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after")}
        if status == 413:
            detail = f"request body over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
            headers["Connection"] = "close"  # the rest of the body is never read
        return error_response(status, code, detail, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # a bug, not bad input: log the traceback (never the body), answer JSON
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error; see the frontend log")
