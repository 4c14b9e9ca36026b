"""A corpus of raw requests, valid and malformed, sent byte for byte to a real `ingest-frontend`.

Each case says what a strict HTTP/1.1 server answers: the statuses in order, and for a refusal the
API's JSON error code. Every exchange ends with the server closing the connection (the corpus
asks for that, or the server closes after a refusal); a socket timeout is a hang and fails the case.
The malformed cases are the ones a front proxy and this server could read differently (request
smuggling): bare LF line ends, obs-fold, bad chunk framing, and versions other than 1.0/1.1.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.frontend_support import API_KEY, running_stack

pytestmark = pytest.mark.slow

TIMEOUT = 10.0  # seconds a socket waits for the server; reaching it means the server hung
MAX_BODY = 4096


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("http-corpus"),
                       frontend_env={"INGEST_HEADER_TIMEOUT": "5", "INGEST_BODY_TIMEOUT": "5",
                                     "INGEST_MAX_BODY_BYTES": str(MAX_BODY)}) as (_, front):
        yield front


def connect(frontend) -> socket.socket:
    host, port = frontend.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


def read_to_close(s: socket.socket) -> bytes:
    """Everything the server sends until it closes; a timeout is a hang."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except socket.timeout:
        raise AssertionError(f"the server neither answered nor closed within {TIMEOUT}s; got {data[:300]!r}") from None
    except ConnectionResetError:
        pass
    return data


def read_response(s: socket.socket, pending: bytes = b"") -> tuple[int, dict, bytes, bytes]:
    """One response (status, headers, body) off the socket, and what was read past it."""
    data = pending
    while b"\r\n\r\n" not in data:
        data += _recv(s, data)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {k.strip().lower().decode(): v.strip().decode()
               for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = 0 if status < 200 else int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += _recv(s, rest)
    return status, headers, rest[:length], rest[length:]


def _recv(s: socket.socket, so_far: bytes) -> bytes:
    try:
        chunk = s.recv(65536)
    except socket.timeout:
        raise AssertionError(f"no complete answer within {TIMEOUT}s; got {so_far[:300]!r}") from None
    if not chunk:
        raise AssertionError(f"the server closed mid-answer; got {so_far[:300]!r}")
    return chunk


def parse_all(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every response in a byte stream that ended with the server closing."""
    out = []
    while data:
        assert data.startswith(b"HTTP/1.1 "), data[:300]
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:300]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


def post(target: bytes, body: bytes, *extra: bytes, chunked: bool = False, key: bool = True) -> bytes:
    """A POST with JSON content type; `body` is sent as is (already chunked when `chunked`)."""
    head = [b"POST " + target + b" HTTP/1.1", b"Host: x", b"Content-Type: application/json", b"Connection: close"]
    if key:
        head.append(b"X-API-Key: " + API_KEY.encode())
    head.append(b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body))
    return b"\r\n".join(head + list(extra)) + b"\r\n\r\n" + body


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x" % len(data) + ext + b"\r\n" + data + b"\r\n"


ARTICLE = json.dumps({"publication": "Corpus Daily", "content": "Angela Merkel spoke in Berlin."}).encode()
BATCH = json.dumps([{"publication": "Corpus Daily", "content": "Barack Obama visited Paris."}]).encode()
GET_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
CHUNKED_GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

# (id, raw bytes, the statuses in order, the error code of a refusal or None)
CASES = [
    # -- valid: served ----------------------------------------------------------------------------
    ("get", GET_CLOSE, [200], None),
    ("http-1.0-get", b"GET /healthz HTTP/1.0\r\n\r\n", [200], None),
    ("http-1.0-with-host", b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n", [200], None),
    ("keep-alive-pipelined-two", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + GET_CLOSE, [200, 200], None),
    ("post-content-length", post(b"/post/enqueue", ARTICLE), [202], None),
    ("post-chunked", post(b"/posts", chunk(BATCH[:10]) + chunk(BATCH[10:]) + b"0\r\n\r\n", chunked=True), [202], None),
    ("post-chunked-extension-and-trailer",
     post(b"/posts", chunk(BATCH, b";name=value;q=\"a b\"") + b"0\r\nX-Trailer: yes\r\n\r\n", chunked=True), [202],
     None),
    ("post-chunked-uppercase-hex", post(b"/posts", b"%X\r\n" % len(BATCH) + BATCH + b"\r\n0\r\n\r\n", chunked=True),
     [202], None),
    ("absolute-form", b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
     [200], None),
    ("absolute-form-https-port", b"GET HTTPS://example.org:8443/healthz HTTP/1.1\r\n"
                                 b"Host: x\r\nConnection: close\r\n\r\n",
     [200], None),
    ("absolute-form-keeps-query",
     b"GET http://127.0.0.1/publications/nobody/entities?limit=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
     [400], "invalid_parameter"),
    ("header-value-tab-and-spaces", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \t a b \t\r\nConnection: close\r\n\r\n",
     [200], None),

    # -- smuggling: a bad chunk terminator (CVE-2025-43859, h11 < 0.16) ---------------------------
    ("chunk-bad-terminator-smuggles", CHUNKED_GET + b"5\r\nAAAAAXX" + b"2\r\n\r\n" + SMUGGLED, [400], "bad_request"),
    ("chunk-terminator-bare-lf", CHUNKED_GET + b"5\r\nAAAAA\n0\r\n\r\n", [400], "bad_request"),
    ("chunk-missing-terminator", CHUNKED_GET + b"5\r\nAAAAA0\r\n\r\n", [400], "bad_request"),

    # -- bare LF line ends in the head ------------------------------------------------------------
    ("bare-lf-hides-content-length",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: a\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(SMUGGLED)
     + SMUGGLED, [400], "bad_request"),
    ("bare-lf-hides-transfer-encoding",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: a\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
     b"0\r\n\r\n" + SMUGGLED, [400], "bad_request"),
    ("bare-lf-everywhere", b"GET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n", [400], "bad_request"),
    ("bare-lf-after-request-line", b"GET /healthz HTTP/1.1\nHost: x\r\nConnection: close\r\n\r\n", [400],
     "bad_request"),
    ("bare-lf-ends-head", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\n", [400], "bad_request"),
    ("bare-cr-in-head", b"GET /healthz HTTP/1.1\r\nHost: x\rX-A: b\r\nConnection: close\r\n\r\n", [400], "bad_request"),

    # -- obs-fold ---------------------------------------------------------------------------------
    ("obs-fold-transfer-encoding",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
     [400], "bad_request"),
    ("obs-fold-content-length",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\t4\r\nConnection: close\r\n\r\nabcd", [400],
     "bad_request"),
    ("obs-fold-plain-header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\nConnection: close\r\n\r\n",
     [400], "bad_request"),

    # -- chunk extensions and other chunk framing -------------------------------------------------
    ("chunk-extension-bare-cr", CHUNKED_GET + b"5;a=\rb\r\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("chunk-extension-nul", CHUNKED_GET + b"5;a=\x00b\r\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("last-chunk-extension-bare-cr", CHUNKED_GET + b"0;a\rb\r\n\r\n", [400], "bad_request"),
    ("chunk-extension-no-name", CHUNKED_GET + b"5;\r\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("chunk-size-not-hex", CHUNKED_GET + b"zz\r\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("chunk-size-bare-lf", CHUNKED_GET + b"5\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("chunk-size-negative", CHUNKED_GET + b"-5\r\nAAAAA\r\n0\r\n\r\n", [400], "bad_request"),
    ("trailer-bare-lf", CHUNKED_GET + b"0\r\nX-T: a\n\r\n", [400], "bad_request"),
    ("trailer-obs-fold", CHUNKED_GET + b"0\r\nX-T: a\r\n b\r\n\r\n", [400], "bad_request"),
    ("chunked-body-over-limit",
     post(b"/posts", chunk(b"x" * 3000) + chunk(b"x" * 3000) + b"0\r\n\r\n", chunked=True), [413], "body_too_large"),

    # -- HTTP versions other than 1.0 and 1.1 -----------------------------------------------------
    ("http-2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n", [505], "http_version_not_supported"),
    ("http-1.2", b"GET /healthz HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n", [505], "http_version_not_supported"),
    ("http-0.9", b"GET /healthz HTTP/0.9\r\nHost: x\r\nConnection: close\r\n\r\n", [505], "http_version_not_supported"),
    ("http-3.0-post", post(b"/post/enqueue", ARTICLE).replace(b"HTTP/1.1", b"HTTP/3.0", 1), [505],
     "http_version_not_supported"),
    ("no-version", b"GET /healthz\r\n\r\n", [400], "bad_request"),
    ("lowercase-version", b"GET /healthz http/1.1\r\nHost: x\r\n\r\n", [400], "bad_request"),

    # -- other framing h11 already refuses (kept so it stays refused) ------------------------------
    ("space-before-colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n", [400], "bad_request"),
    ("two-content-lengths", b"POST /posts HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     [400], "bad_request"),
    ("leading-blank-line", b"\r\n" + GET_CLOSE, [400], "bad_request"),
]


@pytest.mark.parametrize("raw, statuses, error", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corpus(frontend, raw, statuses, error):
    with connect(frontend) as s:
        s.sendall(raw)
        answers = parse_all(read_to_close(s))
    assert [status for status, _ in answers] == statuses, answers
    for status, body in answers:
        if status >= 400:
            assert json.loads(body) == {"error": error, "detail": json.loads(body)["detail"]}, body


def test_expect_100_continue_gets_the_100_before_the_body_is_sent(frontend):
    head, _, body = post(b"/post/enqueue", ARTICLE, b"Expect: 100-continue").partition(b"\r\n\r\n")
    with connect(frontend) as s:
        s.sendall(head + b"\r\n\r\n")
        status, _, _, rest = read_response(s)
        assert status == 100 and rest == b""
        s.sendall(body)
        status, _, answer, _ = read_response(s, rest)
    assert status == 202 and json.loads(answer)["accepted"] == 1


def test_expect_100_continue_without_a_key_gets_401_json_and_no_100(frontend):
    """Its headers do not pass (no key): no 100, so the client never sends the body."""
    head = post(b"/post/enqueue", ARTICLE, b"Expect: 100-continue", key=False).partition(b"\r\n\r\n")[0]
    with connect(frontend) as s:
        s.sendall(head + b"\r\n\r\n")
        answers = parse_all(read_to_close(s))
    assert [status for status, _ in answers] == [401]
    assert json.loads(answers[0][1])["error"] == "unauthorized"


def test_expect_100_continue_over_the_size_limit_gets_413_and_no_100(frontend):
    head = post(b"/posts", b"x" * (MAX_BODY + 1), b"Expect: 100-continue").partition(b"\r\n\r\n")[0]
    with connect(frontend) as s:
        s.sendall(head + b"\r\n\r\n")
        answers = parse_all(read_to_close(s))
    assert [status for status, _ in answers] == [413]
    assert json.loads(answers[0][1])["error"] == "body_too_large"


def test_expect_100_continue_chunked_gets_the_100_then_202(frontend):
    head, _, body = post(b"/posts", chunk(BATCH) + b"0\r\n\r\n", b"Expect: 100-continue", chunked=True).partition(
        b"\r\n\r\n")
    with connect(frontend) as s:
        s.sendall(head + b"\r\n\r\n")
        status, _, _, rest = read_response(s)
        assert status == 100
        s.sendall(body)
        status, _, answer, _ = read_response(s, rest)
    assert status == 202 and json.loads(answer)["accepted"] == 1


@pytest.mark.parametrize("target", [b"/healthz", b"/openapi.json"])
def test_head_carries_the_content_length_of_get_and_no_body(frontend, target):
    with connect(frontend) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, got_headers, got_body, _ = read_response(s)
        assert status == 200 and int(got_headers["content-length"]) == len(got_body) > 0
        s.sendall(b"HEAD " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_to_close(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    lengths = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"content-length:")]
    assert lengths == [got_headers["content-length"].encode()]
    assert rest == b""


def test_a_refused_head_closes_the_connection_so_pipelined_bytes_are_never_served(frontend):
    """The request behind a refused one is never answered, whatever the framing error was."""
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: a\nContent-Length: 0\r\n\r\n" + GET_CLOSE
    with connect(frontend) as s:
        s.sendall(raw)
        answers = parse_all(read_to_close(s))
    assert [status for status, _ in answers] == [400]
