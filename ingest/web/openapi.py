"""GET /openapi.json (OpenAPI 3.1) and GET /docs (Swagger UI, served from this package, no CDN).

The request and response schemas are the pydantic models that validate and shape the API
(`Post`, `PublicationSummary`, `EntityCount`), so the description cannot drift from the code;
a test runs schemathesis against the running stack with it.
"""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, current_app, jsonify, render_template_string, send_from_directory
from pydantic import BaseModel

from .. import __version__
from ..core.models import EntityCount, Post, PublicationSummary
from ..core.naming import LABELS
from .appstate import settings

bp = Blueprint("docs", __name__, static_folder="static", static_url_path="/docs/static")

DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")


class Accepted(BaseModel):
    accepted: int
    duplicates: int


class Error(BaseModel):
    error: str
    detail: str


def _schema(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("title", None)
    return schema


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


READ_ERRORS = {"400": _error("a parameter out of range"), "401": _error("reads need a key (INGEST_READ_API_KEYS)"),
               "429": _error("too many reads without a key"), "503": _error("the store cannot be read now")}
WRITE_ERRORS = {"400": _error("malformed or invalid"), "401": _error("missing or wrong API key"),
                "413": _error("body, batch or article too large"), "415": _error("not JSON / NDJSON in UTF-8"),
                "503": _error("queue or journal full, backend unreachable or draining; see Retry-After. Nothing was "
                              "enqueued: resending is safe"),
                "504": _error("`outcome_unknown`: the backend went away after the request may have reached it and "
                              "did not come back within the deadline (INGEST_REQUEST_DEADLINE, 30 s); the articles may "
                              "or may not be queued: resend only if every article has an `id`")}
HTTP_ERRORS = {"408": _error("request not complete in time"), "431": _error("headers too large")}


@lru_cache(maxsize=1)
def document(max_batch: int = 1000) -> dict:
    post = _schema(Post)
    post["properties"]["publication"].update({"pattern": r"\S", "maxLength": 1000})
    post["properties"]["content"].update({"pattern": r"\S"})
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    offset = {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}
    label = {"name": "label", "in": "query", "required": False, "style": "form", "explode": True,
             "schema": {"type": "array", "items": {"type": "string", "enum": list(LABELS)}},
             "description": "only entities whose label (the label of most of their mentions; ties: the "
                            "alphabetically first) is one of these: `label=PERSON&label=ORG`, or comma-separated "
                            "`label=PERSON,ORG`; any case. An unknown label is 400."}
    ok_text = {"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}}
    day = {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    since = {"name": "since", "in": "query", "schema": day, "description": "first day of the window, UTC, inclusive"}
    until = {"name": "until", "in": "query", "schema": day, "description": "last day of the window, UTC, inclusive"}
    fmt = {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]},
           "description": "csv: the same rows with a header line (or send Accept: text/csv)"}
    pub = {"name": "publication", "in": "path", "required": True, "schema": {"type": "string"}}

    def rows(properties: dict, description: str) -> dict:
        item = {"type": "object", "properties": properties, "required": list(properties)}
        return {"description": description,
                "content": {"application/json": {"schema": {"type": "array", "items": item}},
                            "text/csv": {"schema": {"type": "string"}}}}
    count = {"type": "integer", "minimum": 0}
    series_errors = {"404": _error("no such publication"), "409": _error("`not_in_this_layout`: this store keeps no "
                                                                         "per-day counts"), **READ_ERRORS}
    rising = {"summary": "Entities whose share of articles rose most in the `days` days ending `until`, against the "
                         "`days` days before; score: the two-proportion z-score of the shares, at least 3 articles now",
              "parameters": [{"name": "days", "in": "query",
                              "schema": {"type": "integer", "minimum": 1, "maximum": 183}},
                             until, limit, fmt],
              "responses": {"200": rows({"entity": {"type": "string"}, "articles_now": count,
                                         "articles_before": count, "total_now": count, "total_before": count,
                                         "score": {"type": "number"}}, "rising entities by score"),
                            **series_errors}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ingestiond", "version": __version__,
                 "description": "News articles in; named-entity counts per publication out. Every error is "
                                "`{\"error\": code, \"detail\": text}`."},
        "components": {
            "schemas": {"Post": post, "Accepted": _schema(Accepted), "Error": _schema(Error),
                        "PublicationSummary": _schema(PublicationSummary), "EntityCount": _schema(EntityCount)},
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "paths": {
            "/post/enqueue": {"post": {
                "summary": "Accept one article (202 once it is on disk)", "security": [{"ApiKey": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Post"}}}},
                "responses": {"202": _json({"$ref": "#/components/schemas/Accepted"}, "accepted (or a duplicate id)"),
                              **WRITE_ERRORS, **HTTP_ERRORS}}},
            "/posts": {"post": {
                "summary": "Accept a batch, all or nothing", "security": [{"ApiKey": []}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                                    "items": {"$ref": "#/components/schemas/Post"}}},
                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                "responses": {"202": _json({"$ref": "#/components/schemas/Accepted"}, "accepted"),
                              **WRITE_ERRORS, **HTTP_ERRORS}}},
            "/publications": {"get": {
                "summary": "Publications by articles, paged", "parameters": [limit, offset, {
                    "name": "publication", "in": "query", "required": False, "schema": {"type": "string"},
                    "description": "only this publication: a list of one, or [] when unknown"}],
                "responses": {"200": _json({"type": "array",
                                            "items": {"$ref": "#/components/schemas/PublicationSummary"}},
                                           "publications"), **READ_ERRORS}}},
            "/publications/{publication}/entities": {"get": {
                "summary": "A publication's entities by mentions desc, entity asc",
                "parameters": [pub, limit, offset, label, since, until, fmt],
                "description": "all-time counts; with since/until, the counts summed over that window",
                "responses": {"200": _json({"type": "array", "items": {"$ref": "#/components/schemas/EntityCount"}},
                                           "entities"), **series_errors}}},
            "/publications/{publication}/days": {"get": {
                "summary": "A publication's articles and mentions per day, zeros included (default: the 30 days "
                           "ending with its latest day; at most 366 days)",
                "parameters": [pub, since, until, fmt],
                "responses": {"200": rows({"day": day, "articles": count, "mentions": count}, "one row per day"),
                              **series_errors}}},
            "/publications/{publication}/entities/{entity}/days": {"get": {
                "summary": "One entity's mentions and articles per day, zeros included",
                "parameters": [pub, {"name": "entity", "in": "path", "required": True, "schema": {"type": "string"}},
                               since, until, fmt],
                "responses": {"200": rows({"day": day, "mentions": count, "articles": count}, "one row per day"),
                              **series_errors}}},
            "/entities": {"get": {
                "summary": "Top entities across all publications (all time, or summed over since/until)",
                "parameters": [limit, offset, since, until, fmt],
                "responses": {"200": rows({"entity": {"type": "string"}, "mentions": count, "articles": count,
                                           "publications": count}, "entities by mentions"), **series_errors}}},
            "/publications/{publication}/rising": {"get": {**rising, "parameters": [pub, *rising["parameters"]]}},
            "/rising": {"get": rising},
            "/healthz": {"get": {"summary": "The frontend is up", "responses": {
                "200": _json({"type": "object"}, "up")}}},
            "/readyz": {"get": {"summary": "The backend takes articles now", "responses": {
                "200": _json({"type": "object"}, "ready"), "503": _json({"type": "object"}, "not ready, and why")}}},
            "/metrics": {"get": {"summary": "Prometheus text, front and back", "responses": ok_text}},
        },
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document(settings().max_batch))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ingestiond API</title>
<link rel="stylesheet" href="{{ assets }}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{{ assets }}/swagger-ui-bundle.js"></script>
<script src="{{ url_for('docs.static', filename='docs.js') }}"></script>
</body></html>"""


@bp.get("/docs")
def docs():
    response = current_app.make_response(render_template_string(PAGE, assets="/docs/assets"))
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/docs/assets/<path:name>")
def assets(name: str):
    from swagger_ui_bundle import swagger_ui_path

    if name not in ("swagger-ui.css", "swagger-ui-bundle.js"):
        return jsonify(error="not_found", detail="no such asset"), 404
    return send_from_directory(swagger_ui_path, name, max_age=86400)
