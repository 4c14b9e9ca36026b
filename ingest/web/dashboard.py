"""The dashboard at GET /: publications, their top entities as bars, and a word cloud.

The page is a thin shell: its script polls the JSON read API (GET /publications and
GET /publications/<publication>/entities) so it shows exactly what the API answers, paged,
never all entities at once. The word cloud is the one thing rendered for it, as a PNG from the
top entities, within a CPU budget (wordcloud.py).
"""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from ..core.models import PublicationSummary
from ..core.naming import LABELS
from ..core.rules import publication_key
from .appstate import current as _state
from .appstate import settings as _settings
from .appstate import store as _store
from .auth import allowed
from .errors import error_response

log = logging.getLogger("ingest.dashboard")

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)

FIRST_PAINT_ROWS = 100  # the page's own table, one page of it (dashboard.js PUB_PAGE); the script pages the rest
POLL_SECONDS = 3
# the page loads nothing from elsewhere, and a name that slipped past escaping could not run
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _read_keys() -> tuple[str, ...]:
    return _settings().read_api_keys


@bp.get("/")
def page():
    """The HTML shell; with public reads it carries the publications table for a fast first paint."""
    publications = None
    if not _read_keys():
        try:
            publications = _store().publications(FIRST_PAINT_ROWS + 1, 0)
        except Exception:  # the script will retry and say what the read API answers
            log.exception("dashboard: store read failed")
    html = render_template(
        "dashboard.html",
        publications=publications[:FIRST_PAINT_ROWS] if publications else publications,
        more=bool(publications) and len(publications) > FIRST_PAINT_ROWS,
        poll_seconds=POLL_SECONDS,
        api_root=request.script_root,
        viewer_token=_viewer_token(),
        viewer_renew_url=url_for("dashboard.viewer_token"),
        labels=LABELS,
    )
    response = current_app.make_response(html)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _viewer_token() -> str:
    """The page's own reads are not the crowd's: a signed token the HTTP layer's pacing lets through
    in a line of its own (pacing.py). Empty where nothing paces reads."""
    pacer = _state().pacer
    return pacer.viewer_token(request.remote_addr or "") if pacer is not None else ""


@bp.get("/dashboard/viewer-token")
def viewer_token():
    """A fresh viewer token, for a page open longer than a token lasts (dashboard.js asks at half-life)."""
    from .pacing import VIEWER_TTL

    response = jsonify(token=_viewer_token(), expires_in=VIEWER_TTL)
    response.headers["Cache-Control"] = "no-store"
    return response


def _find(publication: str) -> PublicationSummary | None:
    return _store().summary(publication)


@bp.get("/dashboard/wordcloud.png")
def wordcloud_png():
    """?publication=NAME[&v=ARTICLES-MENTIONS]: the cloud of NAME's top entities by mentions.

    `v` only busts browser caches; the server always answers for the current counts, and lets
    the browser keep a response for long only when `v` names those counts.
    """
    if not allowed(_read_keys()):
        return error_response(401, "unauthorized", "reads need an API key in header X-API-Key")
    publication = request.args.get("publication", "")
    key = publication_key(publication)
    try:
        summary = _find(publication) if key else None
        if summary is None:
            return error_response(404, "unknown_publication", "no such publication")
        current = request.args.get("v") == f"{summary.articles}-{summary.mentions}"  # the URL names these counts
        picture = _state().wordclouds.picture(_store(), publication, (key, summary.articles, summary.mentions), current)
        if picture is None:
            return error_response(503, "rendering", "the word cloud is being drawn; retry in a moment",
                                  {"Retry-After": "1"})
    except Exception:  # a locked database or unreachable Firestore is not the client's fault
        log.exception("dashboard: word cloud for %r failed", key)
        return error_response(503, "store_unavailable", "the store could not be read; retry later",
                              {"Retry-After": "1"})
    response = current_app.response_class(picture.png, mimetype="image/png")
    if picture.fresh:
        response.set_etag(hashlib.blake2b(repr(picture.key).encode(), digest_size=12).hexdigest())
    scope = "private" if _read_keys() else "public"
    if picture.fresh and current:
        response.headers["Cache-Control"] = f"{scope}, max-age=86400, immutable"
    else:
        response.headers["Cache-Control"] = f"{scope}, no-cache"
    return response.make_conditional(request)
