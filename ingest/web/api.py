"""The JSON API: write endpoints that validate everything before enqueuing anything, reads, probes.

A write is checked in the order a client can fix it: key (401), declared size (413, before a
byte of the body is read), content type (415), the body itself (413 for an oversized chunked
body, 400 for anything malformed), then the queue (503 with Retry-After). A rejected request
enqueues nothing. Each write goes to the backend under a fresh token, so the client may resend it
after a broken call without counting it twice; when the backend stays away past the deadline after
the request may have reached it, the answer is 504 `outcome_unknown`, never a 503.
"""

from __future__ import annotations

import json
import logging
import re
import time

from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.routing import PathConverter

from ..core.days import DayError, day_of_post
from ..core.models import Post, unstorable
from ..client import new_token
from ..core.protocol import BackendUnavailable, Draining, OutcomeUnknown, QueueFull, TooLarge
from ..core.rules import MAX_PUBLICATION_KEY, publication_key
from . import metrics
from .appstate import client as _client
from .appstate import settings as _settings
from .appstate import store as _store
from .attention import labels_arg, read_over_time, respond, window_args
from .auth import require_key
from .backend_health import BackendHealth
from .errors import RETRY_AFTER_FULL, RETRY_AFTER_UNAVAILABLE, ApiError

log = logging.getLogger("ingest.web.api")

bp = Blueprint("api", __name__)


class PublicationConverter(PathConverter):
    """Any publication name, even '/x', 'a//b' or 'a/' once percent-decoded ('a%2Fb' arrives as 'a/b')."""

    regex = r"[\s\S]+?"  # newlines too (a name may hold "\n")
    part_isolating = False  # may span '/': werkzeug would otherwise match it within one segment


@bp.record_once
def _register_converter(state):  # runs before the routes below are added to the app
    state.app.url_map.converters["publication"] = PublicationConverter


NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})
JSON_TYPE = "application/json"
MAX_LIMIT = 1000
MAX_OFFSET = 2**31 - 1
READ_ENDPOINTS = frozenset({"api.publications", "api.entities"})
_DIGITS = re.compile(r"[0-9]{1,12}")


@bp.before_request
def _guard_reads():
    if request.endpoint in READ_ENDPOINTS and _settings().read_api_keys:
        require_key(_settings().read_api_keys, "read")


# -- writes ---------------------------------------------------------------

@bp.post("/post/enqueue")
def enqueue():
    _check_write_request(allowed={JSON_TYPE})
    item = _parse_json(_read_body())
    if not isinstance(item, dict):
        raise ApiError(400, "invalid_post", f"expected a JSON object, got {_json_type(item)}")
    post = _validate(item, "body")
    return _put([post])


@bp.post("/posts")
def enqueue_many():
    mimetype = _check_write_request(allowed={JSON_TYPE, *NDJSON_TYPES})
    body = _read_body()
    if mimetype in NDJSON_TYPES:
        items = _parse_ndjson(body)
    else:
        items = _parse_json(body)
        if not isinstance(items, list):
            raise ApiError(400, "invalid_batch", f"expected a JSON array of posts, got {_json_type(items)}")
        _check_batch_size(len(items))
    posts = [_validate(item, f"item {i}") for i, item in enumerate(items)]
    return _put(posts)


def _check_write_request(allowed: set[str]) -> str:
    require_key(_settings().api_keys, "write")
    limit = _settings().max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large",
                       f"request body of {request.content_length} bytes is over the limit of {limit}",
                       {"Connection": "close"})
    mimetype = request.mimetype
    if mimetype not in allowed:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be one of {', '.join(sorted(allowed))}, not {mimetype or 'missing'!r}")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", f"only UTF-8 bodies are accepted, not charset={charset!r}")
    return mimetype


def _read_body() -> str:
    """Read at most limit + 1 bytes, so an oversized chunked body is a 413, not a truncated 400."""
    limit = _settings().max_body_bytes
    # gunicorn ends wsgi.input at Content-Length or the last chunk itself; werkzeug's wrapper would
    # call a body of exactly `limit` bytes too large, so count here instead
    terminated = "wsgi.input_terminated" in request.environ
    stream, chunks, total = request.environ["wsgi.input"] if terminated else request.stream, [], 0
    while True:
        chunk = stream.read(min(64 * 1024, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"request body over the limit of {limit} bytes",
                           {"Connection": "close"})
    raw = b"".join(chunks)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_utf8", f"body is not valid UTF-8 (byte {exc.start})") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str, where: str = "body"):
    if not text.strip():
        raise ApiError(400, "invalid_json", f"{where} is empty")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"{where}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json",
                       f"{where} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # NaN/Infinity, integers over Python's digit limit
        raise ApiError(400, "invalid_json",
                       f"{where}: a number is out of range or not valid JSON (NaN, Infinity)") from None


def _parse_ndjson(text: str) -> list:
    # split on "\n" only: str.splitlines() would also cut at U+2028, \x1e ... which JSON strings may hold raw
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    _check_batch_size(len(lines))
    items = []
    for n, line in lines:
        item = _parse_json(line, f"line {n}")
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_post", f"line {n}: expected a JSON object, got {_json_type(item)}")
        items.append(item)
    return items


def _check_batch_size(n: int) -> None:
    if n == 0:
        raise ApiError(400, "empty_batch", "the batch holds no posts")
    limit = _settings().max_batch
    if n > limit:
        raise ApiError(413, "batch_too_large", f"the batch holds {n} posts; the limit is {limit}")


def _validate(item, where: str) -> tuple:
    """The post as the wire carries it, with its day settled now (a `published` checked against the clock)."""
    if not isinstance(item, dict):
        raise ApiError(400, "invalid_post", f"{where}: expected a JSON object, got {_json_type(item)}")
    try:
        post = Post.model_validate(item)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'post'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(400, "invalid_post", f"{where}: {problems}") from None
    limit = _settings().max_article_chars
    if len(post.content) > limit:
        raise ApiError(413, "article_too_large", f"{where}: content is {len(post.content):,} characters; "
                                                 f"the limit is {limit:,} (INGEST_MAX_ARTICLE_CHARS)")
    problem = unstorable(post)  # lone surrogates from \ud800-style escapes: no store can keep them
    if problem:
        raise ApiError(400, "invalid_post", f"{where}: {problem}")
    try:
        day = day_of_post(post.published, time.time())
    except DayError as exc:
        raise ApiError(400, "invalid_post", f"{where}: {exc}") from None
    return post.as_wire(day)


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _put(posts: list[tuple]):
    try:
        answer = _client().put_many(posts, token=new_token())
    except TooLarge as exc:
        raise ApiError(413, "article_too_large", str(exc)) from None
    except QueueFull as exc:
        raise ApiError(503, "queue_full", f"no room for this request: {exc}; retry later",
                       {"Retry-After": str(RETRY_AFTER_FULL)}) from None
    except Draining:
        raise ApiError(503, "draining", "the backend is shutting down and accepts nothing more; retry later",
                       {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}) from None
    except BackendUnavailable as exc:
        _warn_unavailable(exc)
        raise ApiError(503, "backend_unavailable", "the backend is not reachable; retry later",
                       {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}) from None
    except OutcomeUnknown as exc:
        _warn_unavailable(exc)
        raise ApiError(504, "outcome_unknown", "the backend went away after this request may have reached it and "
                                               "did not come back in time: its articles may or may not be queued; "
                                               "resend only if every article has an id") from None
    metrics.ACCEPTED.inc(answer["accepted"])
    response = jsonify(accepted=answer["accepted"], duplicates=answer.get("duplicates", 0))
    response.status_code = 202
    return response


_last_warning = [0.0]


def _warn_unavailable(exc: Exception) -> None:
    """At most one line per 10 s per process: a down backend under load must not flood the log."""
    now = time.monotonic()
    if now - _last_warning[0] > 10:
        _last_warning[0] = now
        log.warning("%s", exc)


# -- reads ----------------------------------------------------------------

@bp.get("/publications")
def publications():
    """Paged like the entities: ?limit (1..1000, default 1000) &offset; a full page has a next one.
    ?publication=NAME is the list filtered to that one publication ([] when unknown): how the
    dashboard follows a publication that is not on the page of the table it shows."""
    limit = _int_arg("limit", MAX_LIMIT, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    name = request.args.get("publication")
    if name is not None:
        key = publication_key(name)
        found = _read(lambda store: store.summary(name)) if key and len(key) <= MAX_PUBLICATION_KEY else None
        rows = [found][offset:offset + limit] if found is not None else []
    else:
        rows = _read(lambda store: store.publications(limit, offset))
    return respond([row.model_dump() for row in rows], ["publication", "articles", "entities", "mentions"])


@bp.get("/publications/<publication:publication>/entities", merge_slashes=False)
def entities(publication: str):
    """All-time counts; with `since`/`until`, the counts summed over that window of days."""
    limit = _int_arg("limit", 20, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, MAX_OFFSET)
    labels = labels_arg()
    window = window_args()
    key = publication_key(publication)
    rows = None
    if key and len(key) <= MAX_PUBLICATION_KEY:
        if window.all_time:
            rows = _read(lambda store: store.entities(publication, limit, offset, labels))
            rows = None if rows is None else [row.model_dump() for row in rows]
        else:
            rows = read_over_time(lambda store: store.entities_in(publication, window, limit, offset, labels))
            rows = None if rows is None else [{k: r[k] for k in ("entity", "label", "mentions", "articles")}
                                              for r in rows]
    if rows is None:
        raise ApiError(404, "not_found", "no such publication")
    return respond(rows, ["entity", "label", "mentions", "articles"])


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {low} to {high}")
    return int(text)


def _read(query):
    try:
        return query(_store())
    except Exception:  # locked database, unreachable Firestore: the store's trouble, not the client's
        log.exception("store read failed")
        raise ApiError(503, "store_unavailable", "the store could not be read; retry later",
                       {"Retry-After": str(RETRY_AFTER_FULL)}) from None


# -- probes and metrics ------------------------------------------------------

@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    try:
        status = _client().status()
    except BackendUnavailable as exc:
        return _not_ready("backend_unavailable", str(exc), {})
    state, depth, capacity = status.get("state"), status.get("depth", 0), status.get("capacity", 0)
    # what a client needs to know whether its articles are counted yet (ingest-load waits on these)
    facts = {"state": state, "depth": depth, "capacity": capacity,
             **{k: status.get(k, 0) for k in ("accepted", "duplicates", "processed", "in_flight", "unsaved",
                                              "quarantined", "journal_articles", "journal_room_bytes",
                                              "journal_room_articles", "stuck_batches")}}
    if state != "accepting":
        return _not_ready("draining", f"backend is {state}", facts)
    if capacity and depth >= capacity:
        return _not_ready("queue_full", f"input queue is full ({depth}/{capacity})", facts)
    journal, journal_capacity = status.get("journal_bytes", 0), status.get("journal_capacity_bytes", 0)
    if journal_capacity and journal >= journal_capacity * 0.99:
        return _not_ready("queue_full", f"the journal is full ({journal:,}/{journal_capacity:,} bytes)", facts)
    if status.get("quarantine_full"):
        return _not_ready("quarantine_full",
                          f"the quarantine is full ({status.get('quarantined')} articles that killed "
                          "workers): `ingestiond quarantine list`, then retry or drop them", facts)
    if status.get("store_healthy") is False:
        return _not_ready("store_unavailable", f"store writes have failed for {status.get('store_failing_seconds')}s; "
                                               "accepted articles wait in the journal", facts)
    return jsonify(ready=True, **facts)


def _not_ready(code: str, detail: str, facts: dict):
    response = jsonify(ready=False, error=code, detail=detail, **facts)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
    return response


@bp.get("/metrics")
def metrics_endpoint():
    return Response(metrics.render(_status_and_health), content_type=metrics.CONTENT_TYPE)


def _status_and_health() -> dict:
    """The intake's status, and with INGEST_BACKEND_HEALTH the health file's numbers as `health_*` (on a
    fleet VM the intake is Pub/Sub: the backend beside it, its dead-letter backlog included, is seen there)."""
    status = dict(_client().status())
    health = BackendHealth.from_settings(_settings())
    facts = health.facts() if health is not None else None
    for key, value in (facts or {}).items():
        if key not in ("pid", "time", "monotonic"):
            status[f"health_{key}"] = value
    return status
