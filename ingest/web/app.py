"""The HTTP front door: a Flask app factory.

`create_app(settings)` builds the app from its settings (`INGEST_*` variables when none are given)
and attaches what it holds (appstate.py): the backend intake client, a read-only store that each
process opens lazily after gunicorn forks, the pacer of requests without a key (used by the HTTP
layer, server.py) and the word-cloud budget. Only this module imports the blueprints. Keys and
bodies are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, g, request

from ..client import IngestClient
from ..config import FrontendSettings, load_frontend_settings
from . import appstate, metrics
from .errors import register_error_handlers
from .pacing import ReadPacer
from .readstore import ProcessLocalStore
from .wordcloud import Wordclouds

log = logging.getLogger("ingest.web")

WRITE_ENDPOINTS = frozenset({"api.enqueue", "api.enqueue_many"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(settings: FrontendSettings | None = None, *, client: Any = None, store: Any = None) -> Flask:
    """Build the app. `client` (put_many, status) and `store` (a read store) are used as given;
    by default they follow the settings (INGEST_INTAKE or the manager; INGEST_STORE)."""
    settings = settings if settings is not None else load_frontend_settings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes)
    appstate.attach(app, appstate.AppState(
        settings=settings,
        client=client if client is not None else _intake_client(settings),
        store=store if store is not None else ProcessLocalStore(settings.store_url),
        pacer=_pacer(settings),
        wordclouds=Wordclouds.from_settings(settings),
    ))
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


def _pacer(settings: FrontendSettings) -> ReadPacer | None:
    """The bounds on whoever comes without a key, counted in each worker's memory by the HTTP layer
    (pacing.py); None when every limit is empty."""
    limits = (settings.read_rate_limit, settings.anon_rate_limit, settings.probe_rate_limit)
    if not any(limit.strip() for limit in limits):
        return None
    return ReadPacer(settings.read_rate_limit, settings.api_keys + settings.read_api_keys,
                     settings.anon_rate_limit, settings.probe_rate_limit)


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
