"""Hostile and random bodies against a real frontend and backend: never a 5xx, and the store ends
up holding exactly an independent recount of the posts that were valid (and nothing else)."""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.core.rules import MAX_PUBLICATION_KEY, publication_key
from tests.frontend_support import start_frontend
from tests.support import start_backend

pytestmark = pytest.mark.slow

MAX_BATCH = 20
MAX_BODY = 32 * 1024
JSON, NDJSON = "application/json", "application/x-ndjson"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = start_backend(tmp_path_factory.mktemp("fuzz-backend"), "--workers", "1", "--savers", "1",
                      "--flush-interval", "0.5")
    yield b
    assert b.stop() == 0, b.log()


@pytest.fixture(scope="module")
def frontend(backend, tmp_path_factory):
    f = start_frontend(tmp_path_factory.mktemp("fuzz-frontend"), backend.env, workers=1,
                       env={"INGEST_MAX_BATCH": str(MAX_BATCH), "INGEST_MAX_BODY_BYTES": str(MAX_BODY)})
    yield f
    assert f.stop() == 0, f.log()
    assert "Traceback" not in f.log(), f.log()


@pytest.fixture(scope="module")
def sent(frontend):
    """Every post the frontend accepted in this module, for the recount."""
    return []


@pytest.fixture(scope="module")
def http(frontend):
    with frontend.client(headers={"X-API-Key": frontend.api_key}) as client:
        yield client


# -- an independent idea of "valid" ----------------------------------------------------

def valid_item(item) -> bool:
    if not isinstance(item, dict):
        return False
    pub, content = item.get("publication"), item.get("content")
    if type(pub) is not str or type(content) is not str:
        return False
    if not content.strip() or not " ".join(pub.split()):
        return False
    if len(" ".join(pub.split()).lower()) > MAX_PUBLICATION_KEY:
        return False
    try:
        pub.encode("utf-8"), content.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected_outcome(endpoint: str, content_type: str, body: bytes) -> list[tuple[str, str]] | None:
    """The posts a correct server accepts from this request, or None when it must refuse it."""
    if len(body) > MAX_BODY:
        return None
    if content_type not in ((JSON,) if endpoint == "/post/enqueue" else (JSON, NDJSON)):
        return None
    try:
        text = body.decode("utf-8")
        if content_type == NDJSON:
            items = [json.loads(line, parse_constant=_no_constants) for line in text.split("\n") if line.strip()]
        else:
            items = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    if endpoint == "/post/enqueue":
        items = [items]
    elif not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
        return None
    if not all(valid_item(item) for item in items):
        return None
    return [(item["publication"], item["content"]) for item in items]


def _no_constants(name):
    raise ValueError(name)


def send(http: httpx.Client, sent: list, endpoint: str, content_type: str, body: bytes) -> httpx.Response:
    expected = expected_outcome(endpoint, content_type, body)
    r = http.post(endpoint, content=body, headers={"Content-Type": content_type})
    assert r.status_code < 500, (endpoint, body[:200], r.text)
    if expected is None:
        assert 400 <= r.status_code < 500, (endpoint, body[:200], r.status_code, r.text)
        error = r.json()
        assert set(error) == {"error", "detail"} and error["error"], error
    else:
        assert r.status_code == 202, (endpoint, body[:200], r.text)
        assert r.json() == {"accepted": len(expected), "duplicates": 0}
        sent.extend(expected)
    return r


def assert_store_equals_recount(http, backend, sent, recount):
    backend.wait_idle(120)
    status = backend.status()
    assert status["accepted"] == len(sent) and status["processed"] == len(sent)
    expected = recount(sent)
    rows = http.get("/publications").json()
    got = {publication_key(row["publication"]): row for row in rows}
    assert set(got) == set(expected), "a publication was counted that no valid post named, or one is missing"
    for key, counts in expected.items():
        row = got[key]
        assert (row["articles"], row["entities"], row["mentions"]) == (
            counts.articles, len(counts.mentions), counts.total_mentions), key
        name = quote(row["publication"], safe="").replace(".", "%2E")
        r = http.get(f"/publications/{name}/entities?limit=1000")
        assert r.status_code == 200, (key, r.text)
        assert {e["entity"]: (e["mentions"], e["articles"]) for e in r.json()} == {
            e: (m, counts.entity_articles[e]) for e, m in counts.mentions.items()}, key


# -- a fixed list of hostile bodies ----------------------------------------------------------

def j(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def p(pub, content="Angela Merkel met Joe Biden in Berlin.") -> dict:
    return {"publication": pub, "content": content}


HOSTILE_PUBLICATIONS = ["a/b", "..", ".", "__x__", "__.__", "/leading", "trailing/", "a//b", "?x=1&y=2#z", "%2F%2E",
                        "ünïcödé " * 20, "🚀" * 200, "名" * 201, "\u200b\u200b", "\u0000nul", "tab\tand\nnewline",
                        "\u202eright-to-left", "CON", "x" * 200, "x" * 201, " " * 300 + "y", "\\",
                        "'; DROP TABLE publications;--"]
WRONG_TYPES = [None, True, False, 0, -1, 1.5, 10**30, [], ["x"], {}, {"a": "b"}]

HOSTILE = [
    *[("/post/enqueue", JSON, j(p(name))) for name in HOSTILE_PUBLICATIONS],
    *[("/post/enqueue", JSON, j(p(value))) for value in WRONG_TYPES],
    *[("/post/enqueue", JSON, j(p("Types", value))) for value in WRONG_TYPES],
    *[("/posts", JSON, j([p("Types"), p(value)])) for value in WRONG_TYPES],
    ("/post/enqueue", JSON, j(p("Huge", "word " * (MAX_BODY // 5)))),
    ("/posts", JSON, j([p("Huge", "x" * 1000)] * (MAX_BODY // 1000))),
    ("/post/enqueue", JSON, b"[" * 30_000 + b"]" * 30_000),
    ("/post/enqueue", JSON, b'{"publication": "Deep", "content": "x", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("/post/enqueue", JSON, b'{"publication": "Deep", "content": "x", "n": ' + b"[" * 50 + b"]" * 50 + b"}"),
    ("/post/enqueue", JSON, b'{"publication": "Num", "content": "x", "n": 1' + b"0" * 5000 + b"}"),
    ("/post/enqueue", JSON, b'{"publication": "Num", "content": "x", "n": 1e999999}'),
    ("/post/enqueue", JSON, b'{"publication": "Num", "content": "x", "n": NaN}'),
    ("/post/enqueue", JSON, b'{"publication": "Num", "content": "x", "n": -Infinity}'),
    ("/post/enqueue", JSON, b'{"publication": "Dup", "content": "x", "publication": 5}'),
    ("/post/enqueue", JSON, b'{"publication": 5, "content": "Olaf Scholz in Hamburg.", "publication": "Dup"}'),
    ("/post/enqueue", JSON, b'{"publication": "Extra", "content": "Paris.", "rev": 1, "tags": [1, {"a": null}]}'),
    ("/post/enqueue", JSON, b'{"publication": "Trail", "content": "x"} garbage'),
    ("/post/enqueue", JSON, b'{"publication": "Trail", "content": "x"}\n{"publication": "Trail", "content": "y"}'),
    ("/post/enqueue", JSON, b'{"publication": "Surrogate", "content": "\\udc00\\ud800"}'),
    ("/post/enqueue", JSON, b'{"publication": "Pair", "content": "\\ud83d\\ude80 launched from Kenya"}'),
    ("/post/enqueue", JSON, b'{"publication": "Ctl", "content": "\\u0000\\u0001\\u001f Tokyo"}'),
    ("/post/enqueue", JSON, b'{"publication": "Bad", "content": "\xc3\x28"}'),
    ("/post/enqueue", JSON, b'{"publication": "Bad", "content": "\xed\xa0\x80"}'),
    ("/post/enqueue", JSON, b'{"publication": "Bad", "content": "\xc0\xaf"}'),
    ("/post/enqueue", JSON, b'{"publication": "Bad", "content": "\xf4\x90\x80\x80"}'),
    ("/post/enqueue", JSON, b"\xff\xfe{\x00}\x00"),
    ("/post/enqueue", JSON, "{\"publication\": \"UTF16\", \"content\": \"x\"}".encode("utf-16")),
    ("/post/enqueue", JSON, b"\x00" * 100),
    ("/post/enqueue", JSON, b""),
    ("/post/enqueue", JSON, b"true"),
    ("/post/enqueue", JSON, b"\"publication\""),
    ("/post/enqueue", JSON, j([p("Array")])),
    ("/post/enqueue", NDJSON, j(p("Ndjson"))),
    ("/post/enqueue", "text/plain", j(p("Plain"))),
    ("/post/enqueue", "application/json-patch+json", j(p("Plain"))),
    ("/posts", JSON, j(p("Object"))),
    ("/posts", JSON, j([])),
    ("/posts", JSON, j([[]])),
    ("/posts", JSON, j([p("Many", f"Story {i} about Lagos.") for i in range(MAX_BATCH)])),
    ("/posts", JSON, j([p("Many", f"Story {i} about Lagos.") for i in range(MAX_BATCH + 1)])),
    ("/posts", NDJSON, b"\n".join(j(p("Nd", f"Item {i} in Madrid.")) for i in range(5))),
    ("/posts", NDJSON, b"\n".join(j(p("Nd", f"Item {i} in Madrid.")) for i in range(5)) + b"\n{bad json}\n"),
    ("/posts", NDJSON, b"\n".join(j(p("Nd", f"Item {i} in Madrid.")) for i in range(5)) + b"\n" + j(p("Nd", 5))),
    ("/posts", NDJSON, b"\n".join(j(p("Nd", f"Item {i}.")) for i in range(3)) + b"\n\xff\n"),
    ("/posts", NDJSON, j([p("NdArray")])),
    ("/posts", NDJSON, b"\n\n\n"),
    ("/posts", NDJSON, j(p("Sep", "Line\u2028separator\x1e and\x85 Oslo.")) + b"\r\n" + j(p("Sep", "Bergen."))),
    ("/posts", NDJSON, b"\n".join([j(p("NdMany", "Rome."))] * (MAX_BATCH + 1))),
    ("/posts", "application/x-www-form-urlencoded", b"publication=Form&content=x"),
]


def test_hostile_bodies_never_5xx_and_count_only_the_valid(http, backend, sent, recount):
    before = len(sent)
    for endpoint, content_type, body in HOSTILE:
        send(http, sent, endpoint, content_type, body)
    assert len(sent) > before + 20, "the list should hold valid posts too"
    assert len(sent) < before + sum(1 for _ in HOSTILE) + MAX_BATCH + 10
    assert_store_equals_recount(http, backend, sent, recount)


# -- random bodies -------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=30))
json_values = st.recursive(scalars,
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
texts = st.text(max_size=60) | st.sampled_from(["", " ", "\n\t", "Nairobi", "Angela Merkel in Paris.", "x" * 201])
# well-formed posts with random text: without them ~1 run in 20 held no valid post at all
valid_items = st.fixed_dictionaries({"publication": st.text(min_size=1, max_size=30).filter(str.strip),
                                     "content": st.text(min_size=1, max_size=60).filter(str.strip)})
items = st.fixed_dictionaries({"publication": texts | json_values, "content": texts | json_values},
                              optional={"extra": json_values}) | valid_items | json_values
requests_ = st.one_of(
    st.tuples(st.just("/post/enqueue"), st.just(JSON), items.map(j)),
    st.tuples(st.just("/posts"), st.just(JSON), st.lists(items, max_size=MAX_BATCH + 2).map(j)),
    st.tuples(st.just("/posts"), st.just(NDJSON),
              st.lists(items, max_size=MAX_BATCH + 2).map(lambda xs: b"\n".join(j(x) for x in xs))),
    st.tuples(st.sampled_from(["/post/enqueue", "/posts"]), st.sampled_from([JSON, NDJSON, "text/plain"]),
              st.binary(max_size=200)),
)


def test_random_bodies_never_5xx_and_count_only_the_valid(http, backend, sent, recount):
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests_)
    def run(request):
        send(http, sent, *request)

    before = len(sent)
    run()
    assert len(sent) > before, "200 random requests and not one valid post: the generator is broken"
    assert_store_equals_recount(http, backend, sent, recount)


def test_random_read_paths_never_5xx(http):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.text(min_size=1, max_size=80), st.text(max_size=12), st.text(max_size=12))
    def run(name, limit, offset):
        path = f"/publications/{quote(name, safe='')}/entities"
        r = http.get(path, params={"limit": limit, "offset": offset})
        assert r.status_code in (200, 400, 404), (path, limit, offset, r.status_code, r.text)
        if r.status_code != 200:
            assert set(r.json()) == {"error", "detail"}

    run()
    counts = Counter(http.get(f"/publications/x/entities?limit={n}").status_code for n in ("1", "1000", "0", "1001"))
    assert counts[400] == 2
