"""The HTTP front door: a Flask app factory.

`create_app()` builds the app from `INGEST_*` settings (or test overrides) and hands it its
handles in `app.extensions`: the backend queue client (`ingest.client`), a read-only store that
each process opens lazily after gunicorn forks (`ingest.store`), and the settings
(`ingest.settings`). Only this module imports the blueprints. Keys and bodies are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from flask import Flask, g, request

from ..client import IngestClient
from ..config import FrontendSettings, load_frontend_settings
from . import metrics
from .errors import register_error_handlers
from .readstore import ProcessLocalStore

log = logging.getLogger("ingest.web")

WRITE_ENDPOINTS = frozenset({"api.enqueue", "api.enqueue_many"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _settings(test_config: dict[str, Any]) -> FrontendSettings:
    settings = test_config.pop("settings", None) or load_frontend_settings()
    fields = set(FrontendSettings.model_fields)
    # "store" is the URL when a string; anything else is a Store object for create_app itself
    overrides = {k: test_config.pop(k) for k in list(test_config)
                 if k in fields and not (k == "store" and not isinstance(test_config[k], str))}
    for name in ("api_keys", "read_api_keys"):
        if name in overrides:
            overrides[name] = FrontendSettings._split(overrides[name])
    return settings.model_copy(update=overrides) if overrides else settings


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `test_config` may carry `settings`, any FrontendSettings field (`store` as a
    URL, `api_keys`, ...), a `client` or `store` object to use as is, and Flask config (TESTING, ...)."""
    config = dict(test_config or {})
    settings = _settings(config)
    client = config.pop("client", None) or _intake_client(settings)
    store = config.pop("store", None) or ProcessLocalStore(settings.store_url)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, INGEST_SETTINGS=settings)
    app.config.update(config)
    app.extensions["ingest.settings"] = settings
    app.extensions["ingest.client"] = client
    app.extensions["ingest.store"] = store
    if not settings.api_keys:
        log.warning("no API keys configured (INGEST_API_KEYS or the key file): every write will get 401")

    from .api import bp as api_bp
    from .attention import bp as attention_bp
    from .dashboard import bp as dashboard_bp
    from .openapi import bp as docs_bp

    app.register_blueprint(api_bp)
    app.register_blueprint(attention_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(docs_bp)
    _limit_anonymous_reads(app, settings)
    _register_hooks(app)
    register_error_handlers(app)
    return app


def _intake_client(settings: FrontendSettings):
    """The local backend's manager (one machine), or Pub/Sub with INGEST_INTAKE=pubsub://PROJECT/TOPIC (a fleet)."""
    if settings.intake:
        from .publisher import PubSubPublisher

        return PubSubPublisher(settings.intake, max_article_chars=settings.max_article_chars,
                               timeout=settings.request_deadline)
    return IngestClient(settings.manager_address, settings.authkey_bytes, deadline=settings.request_deadline)


READ_VIEWS = ("api.publications", "api.entities", "attention.publication_days", "attention.entity_days",
              "attention.top_entities", "attention.publication_rising", "attention.rising", "dashboard.page",
              "dashboard.wordcloud_png")


def _limit_anonymous_reads(app: Flask, settings: FrontendSettings) -> None:
    """A cost bound for whoever comes without a key: per client address and in all, in each worker's memory."""
    if not any(limit.strip() for limit in (settings.read_rate_limit, settings.anon_rate_limit,
                                           settings.probe_rate_limit)):
        return
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from .auth import key_matches, presented_keys

    from .pacing import PACED, ReadPacer

    keys = settings.api_keys + settings.read_api_keys
    # under ingest's own gunicorn worker the HTTP layer paces every request without a key (see
    # pacing.py) and marks it; flask-limiter bounds the reads for any other server (the dev server)
    app.extensions["ingest.read_pacer"] = ReadPacer(settings.read_rate_limit, keys, settings.anon_rate_limit,
                                                      settings.probe_rate_limit)
    if not settings.read_rate_limit.strip():
        return
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", headers_enabled=True)
    exempt = lambda: request.environ.get(PACED, False) or (  # noqa: E731
        bool(keys) and key_matches(presented_keys(), keys))
    for name in READ_VIEWS:
        if name in app.view_functions:
            app.view_functions[name] = limiter.limit(settings.read_rate_limit, exempt_when=exempt)(app.view_functions[name])


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
