"""The HTTP front door as a user meets it: a real `ingest-frontend` (gunicorn, 2 workers) on a free
port in front of a real `ingestiond` with a SQLite store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.core.rules import publication_key
from tests import corpus
from tests.frontend_support import start_frontend
from tests.support import BIN, Backend, free_port, start_backend, stop_process, wait_for

pytestmark = pytest.mark.slow

MAX_BATCH = 40
MAX_BODY = 64 * 1024
WRONG_KEY = "wrong-key-0123456789"
SECRET_CONTENT = "Zanzibar-body-marker-never-logged"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = start_backend(tmp_path_factory.mktemp("backend"), "--workers", "1", "--savers", "1", "--flush-interval", "0.5")
    yield b
    assert b.stop() == 0, b.log()


@pytest.fixture(scope="module")
def frontend(backend, tmp_path_factory):
    f = start_frontend(tmp_path_factory.mktemp("frontend"), backend.env, workers=2,
                       env={"INGEST_MAX_BATCH": str(MAX_BATCH), "INGEST_MAX_BODY_BYTES": str(MAX_BODY)})
    yield f
    assert f.stop() == 0, f.log()
    log = f.log()
    assert f.api_key not in log and WRONG_KEY not in log and SECRET_CONTENT not in log
    assert "Traceback" not in log, log


@pytest.fixture
def http(frontend):
    with frontend.client() as client:
        yield client


@pytest.fixture
def key(frontend):
    return {"X-API-Key": frontend.api_key}


def post(title: str, n: int = 0) -> dict:
    return {"publication": title, "content": f"Report {n}. Angela Merkel met Barack Obama in Berlin with NATO."}


def path_segment(name: str) -> str:
    """Percent-encode everything, dots too: clients normalise a bare '..' segment away."""
    return quote(name, safe="").replace(".", "%2E")


def accepted(backend: Backend) -> int:
    return backend.status()["accepted"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"], body
    return body


# -- probes ------------------------------------------------------------------------------

def test_health_and_readiness(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["state"] == "accepting"


# -- keys --------------------------------------------------------------------------------

def test_writes_need_a_valid_key(http, backend, frontend):
    before = accepted(backend)
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": WRONG_KEY}, {"access_token": WRONG_KEY},
                    {"X-API-Key": frontend.api_key + "x"}, {"X-API-Key": frontend.api_key[:-1]}):
        assert_error(http.post("/post/enqueue", json=post("Keys"), headers=headers), 401, "unauthorized")
        assert_error(http.post("/posts", json=[post("Keys")], headers=headers), 401, "unauthorized")
    assert accepted(backend) == before


def test_access_token_header_is_accepted_like_x_api_key(http, backend, frontend):
    """gunicorn >= 22 drops headers with underscores unless header_map allows them."""
    before = accepted(backend)
    r = http.post("/post/enqueue", json=post("Keys"), headers={"access_token": frontend.api_key})
    assert r.status_code == 202 and r.json() == {"accepted": 1, "duplicates": 0}
    r = http.post("/posts", json=[post("Keys"), post("Keys", 1)], headers={"X-API-Key": frontend.api_key})
    assert r.status_code == 202 and r.json() == {"accepted": 2, "duplicates": 0}
    assert accepted(backend) == before + 3


# -- bad single posts --------------------------------------------------------------------

BAD_POSTS = [
    (b'{"publication": "A", "content": "x"', "invalid_json"),
    (b"", "invalid_json"),
    (b"   ", "invalid_json"),
    (b"null", "invalid_post"),
    (b'["A", "x"]', "invalid_post"),
    (b'"just a string"', "invalid_post"),
    (b"{}", "invalid_post"),
    (b'{"publication": "A"}', "invalid_post"),
    (b'{"content": "x"}', "invalid_post"),
    (b'{"publication": 5, "content": "x"}', "invalid_post"),
    (b'{"publication": "A", "content": 5}', "invalid_post"),
    (b'{"publication": "A", "content": ["x"]}', "invalid_post"),
    (b'{"publication": "A", "content": true}', "invalid_post"),
    (b'{"publication": null, "content": "x"}', "invalid_post"),
    (b'{"publication": "", "content": "x"}', "invalid_post"),
    (b'{"publication": " \\t\\n ", "content": "x"}', "invalid_post"),
    (b'{"publication": "A", "content": ""}', "invalid_post"),
    (b'{"publication": "A", "content": "   \\n"}', "invalid_post"),
    (json.dumps({"publication": "p" * 201, "content": "x"}).encode(), "invalid_post"),
    (json.dumps({"publication": "é" * 201, "content": "x"}).encode(), "invalid_post"),
    (b'{"publication": "A", "content": "\\ud800"}', "invalid_post"),
    (b'{"publication": "A", "content": NaN}', "invalid_json"),
    (b'{"publication": "A", "content": "x", "n": 1' + b"0" * 5000 + b"}", "invalid_json"),
    (b"[" * 60_000, "invalid_json"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_json"),
    (b'{"publication": "A", "content": "\xff\xfe bad utf-8"}', "invalid_utf8"),
    (b"\xef\xbb\xbf" + json.dumps(post("A")).encode(), "invalid_json"),  # a BOM is not JSON
]


@pytest.mark.parametrize("body,code", BAD_POSTS, ids=range(len(BAD_POSTS)))
def test_malformed_single_post_is_400_and_enqueues_nothing(http, key, backend, body, code):
    before = accepted(backend)
    assert_error(http.post("/post/enqueue", content=body, headers={**key, "Content-Type": "application/json"}), 400,
                 code)
    assert accepted(backend) == before


def test_publication_key_of_exactly_200_characters_is_fine(http, key):
    r = http.post("/post/enqueue", json={"publication": "  " + "é" * 200 + "  ", "content": SECRET_CONTENT},
                  headers=key)
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=latin-1", "application/xml",
])
def test_wrong_content_type_is_415(http, key, backend, content_type):
    headers = dict(key)
    if content_type:
        headers["Content-Type"] = content_type
    before = accepted(backend)
    body = json.dumps(post("Types")).encode()
    assert_error(http.post("/post/enqueue", content=body, headers=headers), 415, "unsupported_media_type")
    assert_error(http.post("/posts", content=b"[" + body + b"]", headers=headers), 415, "unsupported_media_type")
    assert accepted(backend) == before


def test_ndjson_is_only_for_the_batch_endpoint(http, key):
    r = http.post("/post/enqueue", content=json.dumps(post("Types")),
                  headers={**key, "Content-Type": "application/x-ndjson"})
    assert_error(r, 415, "unsupported_media_type")


def test_charset_utf8_parameter_is_fine(http, key):
    r = http.post("/post/enqueue", content=json.dumps(post("Types")),
                  headers={**key, "Content-Type": "application/json; charset=UTF-8"})
    assert r.status_code == 202, r.text


# -- body size ---------------------------------------------------------------------------

def test_body_over_the_limit_is_413_before_it_is_read(http, key, backend):
    before = accepted(backend)
    body = json.dumps([post("Size", i) for i in range(MAX_BODY // 60)]).encode()
    assert len(body) > MAX_BODY
    assert_error(http.post("/posts", content=body, headers={**key, "Content-Type": "application/json"}), 413,
                 "body_too_large")
    assert accepted(backend) == before


def test_chunked_body_over_the_limit_is_413(http, key, backend):
    before = accepted(backend)

    def chunks():  # no Content-Length: the limit must hold on the stream itself
        yield b'[{"publication": "Size", "content": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}]'

    r = http.post("/posts", content=chunks(), headers={**key, "Content-Type": "application/json"})
    assert_error(r, 413, "body_too_large")
    assert accepted(backend) == before


def test_body_of_exactly_the_limit_is_read(http, key):
    body = b" " * (MAX_BODY - 1) + b"x"  # not JSON, but within the limit: a 400, not a 413
    assert_error(http.post("/posts", content=body, headers={**key, "Content-Type": "application/json"}), 400,
                 "invalid_json")

    def chunks():
        yield body

    assert_error(http.post("/posts", content=chunks(), headers={**key, "Content-Type": "application/json"}), 400,
                 "invalid_json")


# -- batches -----------------------------------------------------------------------------

def test_batch_is_all_or_nothing(http, key, backend):
    before = accepted(backend)
    good = [post("Batch", i) for i in range(5)]
    for bad in ({"publication": "Batch"}, {"publication": "Batch", "content": 1}, "text", None, [],
                {"publication": " ", "content": "x"}):
        assert_error(http.post("/posts", json=good + [bad] + good, headers=key), 400, "invalid_post")
    ndjson = "\n".join(json.dumps(p) for p in good) + '\n{"publication": "Batch", "content": \n'
    assert_error(http.post("/posts", content=ndjson, headers={**key, "Content-Type": "application/x-ndjson"}),
                 400, "invalid_json")
    ndjson = "\n".join(json.dumps(p) for p in good) + "\n[1, 2]\n"
    assert_error(http.post("/posts", content=ndjson, headers={**key, "Content-Type": "application/x-ndjson"}),
                 400, "invalid_post")
    assert accepted(backend) == before

    r = http.post("/posts", json=good, headers=key)
    assert r.status_code == 202 and r.json() == {"accepted": 5, "duplicates": 0}
    ndjson = "\r\n".join(json.dumps(p) for p in good) + "\n\n"
    r = http.post("/posts", content=ndjson, headers={**key, "Content-Type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json() == {"accepted": 5, "duplicates": 0}
    assert accepted(backend) == before + 10


def test_batch_size_limits(http, key, backend):
    before = accepted(backend)
    assert_error(http.post("/posts", json=[], headers=key), 400, "empty_batch")
    assert_error(http.post("/posts", content="\n \n\n", headers={**key, "Content-Type": "application/x-ndjson"}),
                 400, "empty_batch")
    assert_error(http.post("/posts", json=post("Batch"), headers=key), 400, "invalid_batch")
    too_many = [post("Batch", i) for i in range(MAX_BATCH + 1)]
    assert_error(http.post("/posts", json=too_many, headers=key), 413, "batch_too_large")
    ndjson = "\n".join(json.dumps(p) for p in too_many)
    assert_error(http.post("/posts", content=ndjson, headers={**key, "Content-Type": "application/x-ndjson"}),
                 413, "batch_too_large")
    assert accepted(backend) == before
    r = http.post("/posts", json=too_many[:MAX_BATCH], headers=key)
    assert r.status_code == 202 and r.json() == {"accepted": MAX_BATCH, "duplicates": 0}


# -- reads -------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=", "limit=1.5",
                                   "offset=-1", "offset=x", "limit=99999999999999999999999", "offset=1e3"])
def test_bad_paging_is_400(http, key, query):
    http.post("/post/enqueue", json=post("Paging"), headers=key)
    assert_error(http.get(f"/publications/paging/entities?{query}"), 400, "invalid_parameter")


def test_unknown_publication_is_404(http):
    for name in ("no such paper", "x" * 300, "%20", quote("no/such/paper", safe=""), "%2E%2E%2E%2E"):
        assert_error(http.get(f"/publications/{name}/entities"), 404, "not_found")
    assert_error(http.get("/no/such/page"), 404, "not_found")
    assert_error(http.delete("/publications"), 405, "method_not_allowed")


def test_reads_after_writes_equal_an_independent_recount(http, key, backend, recount):
    from ingest.core.naming import majority_label

    posts = [(f"Recount {pub}", content) for pub, content in corpus.articles(60, seed=11)]
    posts += [("  recount   THE daily planet ", "Angela Merkel visited Paris."),
              ("Recount 🚀 Ünïcode", "NATO met in Oslo.")]
    for i in range(0, len(posts), 25):
        chunk = posts[i:i + 25]
        r = http.post("/posts", json=[{"publication": p, "content": c} for p, c in chunk], headers=key)
        assert r.status_code == 202 and r.json() == {"accepted": len(chunk), "duplicates": 0}
    backend.wait_idle(120)
    expected = recount(posts)

    listed = {publication_key(row["publication"]): row for row in http.get("/publications").json()}
    for pub_key, counts in expected.items():
        row = listed[pub_key]
        assert (row["articles"], row["entities"], row["mentions"]) == (
            counts.articles, len(counts.mentions), counts.total_mentions), pub_key
        name = quote(row["publication"], safe="")
        entities = http.get(f"/publications/{name}/entities?limit=1000").json()
        assert {e["entity"]: (e["mentions"], e["articles"], e["label"]) for e in entities} == {
            e: (m, counts.entity_articles[e], majority_label(counts.labels[e])) for e, m in counts.mentions.items()}
        people = http.get(f"/publications/{name}/entities?limit=1000&label=PERSON").json()
        assert people == [e for e in entities if e["label"] == "PERSON"]
        assert entities == sorted(entities, key=lambda e: (-e["mentions"], e["entity"]))
        # paging walks the same list; the key matches case- and whitespace-insensitively
        upper = quote("  " + row["publication"].upper() + " ", safe="")
        paged = [e for off in range(0, len(entities), 7)
                 for e in http.get(f"/publications/{upper}/entities?limit=7&offset={off}").json()]
        assert paged == entities
    rows = http.get("/publications").json()
    assert [r["articles"] for r in rows] == sorted((r["articles"] for r in rows), reverse=True)
    # ?publication= is the list filtered to one publication, found by its key; [] when unknown
    one = next(r for r in rows if r["publication"].startswith("Recount"))
    assert http.get("/publications", params={"publication": " " + one["publication"].lower()}).json() == [one]
    assert http.get("/publications", params={"publication": "no such paper"}).json() == []
    assert http.get("/publications", params={"publication": "x" * 5000}).json() == []


def test_hostile_publication_names_round_trip(http, key, backend):
    names = ["a/b", "..", ".", "__x__", "x/entities", "?q=1#frag", "%2F", "ünï 🚀 名前", "\u202eevil"]
    r = http.post("/posts", json=[{"publication": n, "content": "Barack Obama spoke in Kenya."} for n in names],
                  headers=key)
    assert r.status_code == 202
    backend.wait_idle(60)
    for name in names:
        r = http.get(f"/publications/{path_segment(name)}/entities")
        assert r.status_code == 200, (name, r.text)
        assert {e["entity"] for e in r.json()} >= {"barack obama", "kenya"}, name


def test_read_keys_guard_reads_when_set(backend, tmp_path):
    f = start_frontend(tmp_path, backend.env, workers=1, env={"INGEST_READ_API_KEYS": "reader-key"})
    try:
        with f.client() as http:
            assert_error(http.get("/publications"), 401, "unauthorized")
            assert_error(http.get("/publications/x/entities", headers={"X-API-Key": "nope"}), 401, "unauthorized")
            assert http.get("/publications", headers={"X-API-Key": "reader-key"}).status_code == 200
            assert http.get("/publications", headers={"access_token": "reader-key"}).status_code == 200
            assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    finally:
        assert f.stop() == 0


# -- metrics -----------------------------------------------------------------------------

def scrape(http) -> dict[tuple, float]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_cover_front_and_back(http, key, backend):
    for _ in range(6):  # several requests, so both gunicorn workers are likely to serve some
        assert http.post("/post/enqueue", json=post("Metrics"), headers=key).status_code == 202
        http.post("/post/enqueue", json=post("Metrics"))
        http.post("/posts", json=[], headers=key)
    backend.wait_idle(60)
    m = scrape(http)
    status = backend.status()
    # every article this module got went through this frontend: the front's sum over workers equals the back's
    assert m[("ingest_frontend_accepted_articles_total", ())] == status["accepted"]
    assert m[("ingest_frontend_rejected_requests_total", (("reason", "unauthorized"),))] >= 6
    assert m[("ingest_frontend_rejected_requests_total", (("reason", "empty_batch"),))] >= 6
    assert m[("ingest_frontend_http_requests_total",
              (("endpoint", "/post/enqueue"), ("method", "POST"), ("status", "202")))] >= 6
    assert m[("ingest_backend_up", ())] == 1 and m[("ingest_backend_accepting", ())] == 1
    assert m[("ingest_backend_processed_total", ())] == status["processed"] == status["accepted"]
    assert m[("ingest_backend_depth", ())] == 0
    assert m[("ingest_backend_capacity", ())] == status["capacity"]
    assert m[("ingest_backend_store_writes_total", ())] > 0
    assert m[("ingest_backend_store_errors_total", ())] == 0
    assert m[("ingest_backend_store_commits_total", ())] == status["store_commits"] > 0
    assert m[("ingest_backend_worker_deaths_total", ())] == 0 and ("ingest_backend_lost_total", ()) not in m


# -- an unreachable, draining and restarted backend ---------------------------------------

def test_unreachable_backend_is_503_and_found_again_after_it_starts(tmp_path):
    """The frontend is up first (supervisord starts both at once); it finds the backend by itself."""
    port = free_port()
    env = {"INGEST_MANAGER_ADDRESS": f"127.0.0.1:{port}", "INGEST_AUTHKEY": "k-" + os.urandom(6).hex(),
           "INGEST_STORE": f"sqlite:///{tmp_path / 'late.db'}", "INGEST_VAR_DIR": str(tmp_path / "var")}
    f = start_frontend(tmp_path, env, workers=1)
    backend = None
    try:
        with f.client() as http:
            key = {"X-API-Key": f.api_key}
            body = assert_error(http.post("/post/enqueue", json=post("Late"), headers=key), 503, "backend_unavailable")
            assert "Retry-After" in http.post("/posts", json=[post("Late")], headers=key).headers
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["ready"] is False and "Retry-After" in ready.headers
            assert http.get("/healthz").status_code == 200
            assert scrape(http)[("ingest_backend_up", ())] == 0
            assert http.get("/publications").json() == []  # no database yet: empty, not an error
            assert env["INGEST_AUTHKEY"] not in json.dumps(body)

            backend = start_backend_at(tmp_path, env, "--workers", "1")
            wait_for(lambda: http.get("/readyz").status_code == 200, 60, 0.2, "frontend to see the backend")
            r = http.post("/post/enqueue", json=post("Late"), headers=key)
            assert r.status_code == 202, r.text
            backend.wait_idle(60)
            assert http.get("/publications").json()[0]["articles"] == 1

            # a restart: the frontend's open connections to the old backend are stale now
            assert backend.stop() == 0
            assert_error(http.post("/post/enqueue", json=post("Late"), headers=key), 503, "backend_unavailable")
            backend = start_backend_at(tmp_path, env, "--workers", "1")
            wait_for(lambda: http.get("/readyz").status_code == 200, 60, 0.2, "frontend to see the new backend")
            for _ in range(6):
                assert http.post("/post/enqueue", json=post("Late"), headers=key).status_code == 202
            backend.wait_idle(60)
            assert http.get("/publications").json()[0]["articles"] == 7
    finally:
        f.stop()
        if backend is not None:
            backend.stop()


def start_backend_at(tmp_path, env: dict, *args: str) -> Backend:
    """`ingestiond` on an address chosen before it starts (start_backend picks its own)."""
    log_path = tmp_path / f"late-backend-{len(list(tmp_path.glob('late-backend-*.log')))}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "ingestiond"), *args], env={**os.environ, **env}, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    host, port = env["INGEST_MANAGER_ADDRESS"].rsplit(":", 1)
    return Backend(proc, (host, int(port)), env["INGEST_AUTHKEY"], env["INGEST_STORE"], env=env, log_path=log_path)


LONG_ARTICLE = " ".join(
    f"Paragraph {i}: Angela Merkel and Emmanuel Macron met officials from the United Nations in Geneva, "
    f"while Barack Obama spoke to reporters in Chicago about Microsoft and Google." for i in range(3))


def test_queue_full_and_drain_answer_503_and_lose_nothing(tmp_path):
    backend = start_backend(tmp_path, "--workers", "1", "--savers", "1", "--queue-size", "200")
    f = start_frontend(tmp_path, backend.env, workers=1)
    try:
        with f.client() as http:
            key = {"X-API-Key": f.api_key}
            batch = [{"publication": f"Drain {i % 3}", "content": f"Item {i}. {LONG_ARTICLE}"} for i in range(201)]
            r = http.post("/posts", json=batch, headers=key)  # more than the queue can ever hold: refused whole
            assert_error(r, 503, "queue_full")
            assert r.headers["Retry-After"].isdigit()
            assert backend.status()["accepted"] == 0

            r = http.post("/posts", json=batch[:200], headers=key)
            assert r.status_code == 202 and r.json() == {"accepted": 200, "duplicates": 0}
            backend.proc.send_signal(signal.SIGTERM)
            status = wait_for(lambda: (s := backend.status())["state"] == "draining" and s, 10, 0.02, "draining")
            assert status["depth"] + status["in_flight"] + status["unsaved"] > 0, "the drain had nothing to do"

            r = http.post("/post/enqueue", json=batch[0], headers=key)
            assert_error(r, 503, "draining")
            assert r.headers["Retry-After"].isdigit()
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["error"] == "draining"
            assert scrape(http)[("ingest_backend_accepting", ())] == 0

            assert backend.proc.wait(120) == 0, backend.log()
            assert_error(http.post("/post/enqueue", json=batch[0], headers=key), 503, "backend_unavailable")
            total = sum(row["articles"] for row in http.get("/publications").json())
            assert total == 200
    finally:
        f.stop()
        stop_process(backend.proc)


# -- the command line ----------------------------------------------------------------------

@pytest.mark.parametrize("args,env,message", [
    (["--workers", "0"], {}, "--workers='0': Input should be greater than or equal to 1"),
    ([], {"INGEST_FRONTEND_WORKERS": "many"}, "INGEST_FRONTEND_WORKERS='many': Input should be a valid integer"),
    ([], {"INGEST_FRONTEND_CONNECTIONS": "abc"}, "INGEST_FRONTEND_CONNECTIONS='abc': Input should be a valid integer"),
    ([], {"INGEST_HEADER_TIMEOUT": "0"}, "INGEST_HEADER_TIMEOUT='0': Input should be greater than 0"),
    ([], {"INGEST_WORDCLOUD_SHARE": "2"}, "INGEST_WORDCLOUD_SHARE='2'"),
    ([], {"INGEST_MAX_BATCH": "abc"}, "INGEST_MAX_BATCH"),
    ([], {"INGEST_MAX_BODY_BYTES": "-1"}, "INGEST_MAX_BODY_BYTES"),
    ([], {"INGEST_STORE": "mysql://x"}, "unknown store URL"),
    ([], {"INGEST_MANAGER_ADDRESS": "no-port"}, "HOST:PORT"),
])
def test_bad_configuration_is_one_clear_line(tmp_path, args, env, message):
    from tests.frontend_support import frontend_command

    done = subprocess.run([*frontend_command(), "--bind", f"127.0.0.1:{free_port()}", *args],
                          env={**os.environ, "INGEST_VAR_DIR": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_create_app_takes_settings_for_fresh_test_apps(tmp_path):
    """The factory alone, in-process: its settings, no server, no backend (writes answer 503)."""
    from ingest.config import FrontendSettings
    from ingest.frontend import create_app
    from ingest.web import appstate

    settings = FrontendSettings(store=f"sqlite:///{tmp_path / 'none.db'}", api_keys="k1,k2",
                                manager_address=("127.0.0.1", free_port()), authkey="x", max_batch=2)
    app = create_app(settings)
    assert appstate.of(app).settings.api_keys == ("k1", "k2")
    client = app.test_client()
    assert client.get("/publications").get_json() == []
    r = client.post("/posts", json=[post("F")] * 3, headers={"X-API-Key": "k2"})
    assert r.status_code == 413 and r.get_json()["error"] == "batch_too_large"
    r = client.post("/posts", json=[post("F")] * 2, headers={"X-API-Key": "k1"})
    assert r.status_code == 503 and r.get_json()["error"] == "backend_unavailable" and r.headers["Retry-After"]


def test_a_taken_address_is_one_line_naming_it_and_the_setting(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([str(BIN / "ingest-frontend"), "--bind", f"127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "INGEST_API_KEYS": "k"})
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "INGEST_BIND" in result.stderr and "Traceback" not in result.stderr


def test_a_taken_manager_address_is_one_line_naming_it_and_the_setting(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([str(BIN / "ingestiond"), "--workers", "1", "--manager-address", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                env={**os.environ, "INGEST_AUTHKEY": "k", "INGEST_VAR_DIR": str(tmp_path / "var")})
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert f"127.0.0.1:{port} is already in use" in out and "INGEST_MANAGER_ADDRESS" in out and "Traceback" not in out


def test_a_standalone_frontend_stops_cleanly_20_times_under_load(tmp_path, backend):
    import threading

    for round_ in range(20):
        front = (start_frontend(tmp_path / f"f{round_}", backend.env, workers=2)
                 if (tmp_path / f"f{round_}").mkdir() is None else None)
        stop = threading.Event()

        def load(front=front, stop=stop, round_=round_):
            with httpx.Client(base_url=front.url, timeout=5, headers={"X-API-Key": front.api_key}) as http:
                while not stop.is_set():
                    try:
                        http.post("/post/enqueue", json=post("Stopper", round_))
                        http.get("/metrics")
                    except httpx.HTTPError:
                        pass

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        code = front.stop(signal.SIGTERM if round_ % 2 else signal.SIGINT, timeout=40)
        stop.set()
        for t in threads:
            t.join()
        log = front.log()
        assert code == 0, log
        assert "Traceback" not in log and "SIGKILL" not in log and "WORKER TIMEOUT" not in log, log


def _unread_bytes_at(port: int) -> int:
    """Bytes received and not yet read on established TCP connections to local `port` (/proc/net/tcp*)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


@pytest.mark.slow
def test_healthz_answers_while_every_app_thread_waits_on_a_stopped_backend(tmp_path):
    """An autohealing probe must not fail because the writes wait: one app thread, held by a POST to
    a backend that stopped answering (SIGSTOP) — /healthz is answered meanwhile, by the HTTP layer."""
    import threading

    backend = start_backend(tmp_path, "--workers", "1")
    frontend = start_frontend(tmp_path, backend.env, env={"INGEST_FRONTEND_THREADS": "1",
                                                          "INGEST_REQUEST_DEADLINE": "15"})
    answers: list = []
    try:
        with httpx.Client(base_url=frontend.url, headers={"X-API-Key": frontend.api_key}, timeout=60) as http:
            assert http.post("/post/enqueue", json={"publication": "P", "content": "Ada Lovelace."}).status_code == 202
            os.kill(backend.proc.pid, signal.SIGSTOP)
            writer = threading.Thread(target=lambda: answers.append(
                http.post("/post/enqueue", json={"publication": "P", "content": "Charles Babbage."}).status_code))
            writer.start()
            # the put's bytes wait in the stopped backend's socket: the only app thread is in its call now
            wait_for(lambda: _unread_bytes_at(backend.address[1]) > 0, 30, what="the put to reach the stopped backend")
            probe = httpx.get(frontend.url + "/healthz", timeout=10)
            assert probe.status_code == 200 and probe.json() == {"status": "ok"}
            assert writer.is_alive(), "the probe was answered while the write still held the only app thread"
            os.kill(backend.proc.pid, signal.SIGCONT)
            writer.join(60)
        assert answers and answers[0] in (202, 504)
    finally:
        os.kill(backend.proc.pid, signal.SIGCONT)
        frontend.stop()
        assert backend.stop() == 0, backend.log()[-2000:]


# -- the settings' reference and the fork-safe handles ----------------------------------------

def test_docs_configuration_md_is_generated_from_the_settings_declarations():
    from ingest.config import configuration_markdown
    from tests.support import ROOT

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configuration_markdown(), \
        "docs/configuration.md is stale: python -m ingest.config --markdown > docs/configuration.md"


def test_every_variable_the_code_reads_is_documented_and_every_flag_is_the_commands():
    """docs/configuration.md names every INGEST_* variable in ingest/ (test seams aside), and its
    flags are exactly those `ingestiond --help` and `ingest-frontend --help` offer."""
    import re

    from ingest.config import BackendSettings, FrontendSettings, build_parser
    from tests.support import ROOT

    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(INGEST_[A-Z_]+)`", text))
    in_code = {name for path in (ROOT / "ingest").rglob("*.py")
               for name in re.findall(r"\bINGEST_[A-Z][A-Z_]*[A-Z]\b", path.read_text())}
    assert {name for name in in_code if not name.startswith("INGEST_TEST_")} - documented == set()
    offered = {option for model in (BackendSettings, FrontendSettings)
               for action in build_parser(model)._actions for option in action.option_strings if option != "-h"}
    assert set(re.findall(r"^\| `(--[a-z-]+)`", text, flags=re.M)) == offered - {"--help"}


def test_a_per_process_handle_is_made_again_in_a_forked_child_and_never_closed_there():
    """A handle made before gunicorn's fork is the parent's: the child makes its own, and does
    not close the parent's (a SQLite connection or gRPC channel must never be shared)."""
    from ingest.core.forksafe import PerProcess

    made, closed = [], []
    handle = PerProcess(lambda: made.append(os.getpid()) or len(made), close=closed.append)
    assert handle.get() == handle.get() == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it saw, then leave without running pytest's teardown
        handle.drop()  # the parent's value: forgotten, not closed
        os.write(write, json.dumps([handle.get(), closed, made[-1] == os.getpid()]).encode())
        os._exit(0)
    os.close(write)
    report = json.loads(os.read(read, 1000))
    os.waitpid(pid, 0)
    assert report == [2, [], True]
    handle.drop()
    assert closed == [1] and not handle.made()


def test_gunicorn_is_configured_from_the_frontend_settings(monkeypatch):
    """gunicorn_conf reads nothing itself: what a worker gets is what FrontendSettings validated."""
    from ingest.config import FrontendSettings
    from ingest.web.gunicorn_conf import options

    monkeypatch.setenv("INGEST_FRONTEND_THREADS", "7")
    made = options(FrontendSettings(bind="127.0.0.1:9", frontend_workers=3, frontend_timeout=45, log_level="debug"))
    assert (made["bind"], made["workers"], made["threads"], made["timeout"], made["loglevel"]) == \
        (["127.0.0.1:9"], 3, 7, 45, "debug")
    assert made["worker_class"] == "ingest.web.server.BufferingWorker" and made["header_map"] == "dangerous"
