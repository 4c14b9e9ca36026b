"""The HTTP front door: a Flask app factory.

`create_app()` builds the app from `INGEST_*` settings (or test overrides) and hands it its
handles in `app.extensions`: the backend queue client (`ingest.client`), a read-only store that
each process opens lazily after gunicorn forks (`ingest.store`), and the settings
(`ingest.settings`). Every error is JSON `{"error": code, "detail": ...}`; bad input is a 4xx,
never a 5xx. Keys and bodies are never logged.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import threading
import time
from typing import Any, Iterable, Mapping

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .config import FrontendSettings, load_frontend_settings
from .queues import IngestClient
from .stores import PermanentStoreError, open_store

log = logging.getLogger("ingest.frontend")

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


class ProcessLocalStore:
    """The read store, opened lazily once per process and thread.

    gunicorn forks its workers after the app may have been built; a SQLite connection must not
    cross a fork or be used by two threads at once, so each (pid, thread) opens its own.
    """

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def _store(self):
        store = getattr(self._local, "store", None)
        if store is None or self._local.pid != os.getpid():
            store = open_store(self.url, readonly=True)
            self._local.store, self._local.pid = store, os.getpid()
        return store

    def publications(self):
        return self._store().publications()

    def entities(self, publication: str, limit: int = 20, offset: int = 0):
        return self._store().entities(publication, limit, offset)

    def apply(self, delta):
        raise PermanentStoreError("the frontend's store handle is read-only")

    def close(self) -> None:
        store = getattr(self._local, "store", None)
        if store is not None and self._local.pid == os.getpid():
            store.close()
        self._local.store = None


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


def require_key(keys: tuple[str, ...], what: str) -> None:
    if not keys:
        raise ApiError(401, "unauthorized", f"no API keys are configured on this server; {what} is disabled")
    given = presented_keys()
    if not any(given):
        raise ApiError(401, "unauthorized", "missing API key: send it in the X-API-Key header")
    if not key_matches(given, keys):
        log.info("rejected %s from %s: wrong API key", what, request.remote_addr)
        raise ApiError(401, "unauthorized", "invalid API key")


def _settings(test_config: dict[str, Any]) -> FrontendSettings:
    settings = test_config.pop("settings", None) or load_frontend_settings()
    fields = {f.name for f in dataclasses.fields(FrontendSettings)}
    # "store" is the URL when a string; anything else is a Store object for create_app itself
    overrides = {k: test_config.pop(k) for k in list(test_config)
                 if k in fields and not (k == "store" and not isinstance(test_config[k], str))}
    for name in ("api_keys", "read_api_keys"):
        if isinstance(overrides.get(name), str):
            overrides[name] = tuple(k.strip() for k in overrides[name].split(",") if k.strip())
        elif name in overrides:
            overrides[name] = tuple(overrides[name])
    return dataclasses.replace(settings, **overrides) if overrides else settings


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `test_config` may carry `settings`, any FrontendSettings field (`store` as a
    URL, `api_keys`, ...), a `client` or `store` object to use as is, and Flask config (TESTING, ...)."""
    config = dict(test_config or {})
    settings = _settings(config)
    client = config.pop("client", None) or IngestClient(settings.manager_address, settings.authkey)
    store = config.pop("store", None) or ProcessLocalStore(settings.store)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, INGEST_SETTINGS=settings)
    app.config.update(config)
    app.extensions["ingest.settings"] = settings
    app.extensions["ingest.client"] = client
    app.extensions["ingest.store"] = store
    if not settings.api_keys:
        log.warning("no API keys configured (INGEST_API_KEYS or the key file): every write will get 401")

    from .api import bp as api_bp

    app.register_blueprint(api_bp)
    _register_dashboard(app)
    _register_hooks(app)
    _register_error_handlers(app)
    return app


def _register_dashboard(app: Flask) -> None:
    try:
        from .dashboard import bp as dashboard_bp
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.dashboard":
            log.warning("dashboard disabled: %s", exc)
        dashboard_bp = None
    except ImportError as exc:
        log.warning("dashboard disabled: %s", exc)
        dashboard_bp = None
    if dashboard_bp is not None:
        app.register_blueprint(dashboard_bp)
    else:
        from .api import index

        app.add_url_rule("/", "index", index)


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "OTHER"
        metrics.HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        if request.endpoint in WRITE_ENDPOINTS and response.status_code >= 400:
            metrics.REJECTED.labels(g.get("error_code", str(response.status_code))).inc()
        return response


WRITE_ENDPOINTS = frozenset({"api.enqueue", "api.enqueue_many"})


def _register_error_handlers(app: Flask) -> None:
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
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        if status == 413:
            headers["Connection"] = "close"  # the rest of the body is never read
        return error_response(status, code, detail, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # a bug, not bad input: log the traceback (never the body), answer JSON
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error; see the frontend log")
