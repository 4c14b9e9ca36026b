"""Attention over time (CONTRACT.md, "Time"): per-day series, windows, top entities, rising, CSV.

Every read here takes the same parameters, checked the same way: `since`/`until` (inclusive UTC
dates YYYY-MM-DD), `limit`/`offset`, `format=csv` (or `Accept: text/csv`). A store layout that keeps
no per-day counts (Firestore's entities layout) answers 409 `not_in_this_layout`.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from ..core.days import MAX_SERIES_DAYS, RISING_MIN_ARTICLES, DayError, Window, parse_window
from ..core.naming import LABELS
from ..core.rules import MAX_PUBLICATION_KEY, entity_key, publication_key
from ..stores.base import NotInThisLayout
from . import appstate
from .auth import require_key
from .csvout import FormatError, to_csv, wanted_format
from .errors import RETRY_AFTER_FULL, ApiError

log = logging.getLogger("ingest.web.attention")

bp = Blueprint("attention", __name__)

MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
MAX_RISING_DAYS = 183
READ_ENDPOINTS = frozenset({"attention.publication_days", "attention.entity_days", "attention.top_entities",
                            "attention.publication_rising", "attention.rising"})


@bp.before_request
def _guard_reads():
    keys = appstate.settings().read_api_keys
    if keys:
        require_key(keys, "read")


# -- the endpoints ---------------------------------------------------------------

@bp.get("/publications/<publication:publication>/days", merge_slashes=False)
def publication_days(publication: str):
    window = window_args(max_days=MAX_SERIES_DAYS)
    found = read_over_time(lambda store: store.days(_known(publication), window))
    if found is None:
        raise ApiError(404, "not_found", "no such publication")
    return respond(found[1], ["day", "articles", "mentions"])


@bp.get("/publications/<publication:publication>/entities/<path:entity>/days", merge_slashes=False)
def entity_days(publication: str, entity: str):
    window = window_args(max_days=MAX_SERIES_DAYS)
    key = entity_key(entity)
    if not key:
        raise ApiError(400, "invalid_parameter", "the entity is empty")
    found = read_over_time(lambda store: store.entity_days(_known(publication), key, window))
    if found is None:
        raise ApiError(404, "not_found", "no such publication")
    return respond(found[1], ["day", "mentions", "articles"])


@bp.get("/entities")
def top_entities():
    window = window_args()
    labels = labels_arg()
    limit, offset = int_arg("limit", 20, 1, MAX_LIMIT), int_arg("offset", 0, 0, MAX_OFFSET)
    if window.all_time:
        rows = read_over_time(lambda store: store.top_entities(limit, offset, labels))
    else:
        rows = read_over_time(lambda store: store.entities_in(None, window, limit, offset, labels))
    return respond(rows, ["entity", "label", "mentions", "articles", "publications"])


@bp.get("/publications/<publication:publication>/rising", merge_slashes=False)
def publication_rising(publication: str):
    days, until, limit = rising_args()
    found = read_over_time(lambda store: store.rising(_known(publication), days, until, limit, RISING_MIN_ARTICLES))
    if found is None:
        raise ApiError(404, "not_found", "no such publication")
    return _rising_response(found)


@bp.get("/rising")
def rising():
    days, until, limit = rising_args()
    return _rising_response(read_over_time(lambda store: store.rising(None, days, until, limit, RISING_MIN_ARTICLES)))


# -- parameters, answers -----------------------------------------------------------

def labels_arg() -> frozenset[str] | None:
    """?label=PERSON&label=ORG or ?label=PERSON,ORG (any case): entities whose label is one of them."""
    values = request.args.getlist("label")
    if not values:
        return None
    labels = frozenset(part.strip().upper() for value in values for part in value.split(","))
    unknown = sorted(labels - set(LABELS))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"label must be one or more of {', '.join(LABELS)}; "
                                                 f"unknown: {', '.join(repr(u) for u in unknown)[:200]}")
    return labels


def window_args(max_days: int | None = None) -> Window:
    try:
        return parse_window(request.args.get("since"), request.args.get("until"), max_days=max_days)
    except DayError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


def rising_args() -> tuple[int, str | None, int]:
    days = int_arg("days", 7, 1, MAX_RISING_DAYS)
    until = request.args.get("until")
    if until is not None:
        try:
            until = parse_window(None, until).until
        except DayError as exc:
            raise ApiError(400, "invalid_parameter", str(exc)) from None
    return days, until, int_arg("limit", 20, 1, MAX_LIMIT)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or not low <= int(text) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(text)


def output_format() -> str:
    try:
        return wanted_format(request.args.get("format"), request.headers.get("Accept"))
    except FormatError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None


def respond(rows: list[dict], columns: list[str]):
    """JSON rows, or the same rows as CSV with a header line."""
    if output_format() == "csv":
        return Response(to_csv(rows, columns), content_type="text/csv; charset=utf-8")
    return jsonify(rows)


def _rising_response(found: dict):
    """Rows by score: the entity's articles in the recent window and the one before, the publication's (or
    all publications') articles in each (`total_now`, `total_before`), and the score (core.days.rising_score)."""
    rows = [{**r, "total_now": found["articles_now"], "total_before": found["articles_before"]}
            for r in found["rows"]]
    return respond(rows, ["entity", "articles_now", "articles_before", "total_now", "total_before", "score"])


def _known(publication: str) -> str:
    key = publication_key(publication)
    if not key or len(key) > MAX_PUBLICATION_KEY:
        raise ApiError(404, "not_found", "no such publication")
    return publication


def read_over_time(query):
    output_format()  # a bad format is a 400 before any store work
    try:
        return query(appstate.store())
    except NotInThisLayout as exc:
        raise ApiError(409, "not_in_this_layout", f"{exc}: per-day reads need SQLite or Firestore's packed "
                                                  "layout (docs/api.md)") from None
    except ApiError:
        raise
    except Exception:  # locked database, unreachable Firestore: the store's trouble, not the client's
        log.exception("store read failed")
        raise ApiError(503, "store_unavailable", "the store could not be read; retry later",
                       {"Retry-After": str(RETRY_AFTER_FULL)}) from None
