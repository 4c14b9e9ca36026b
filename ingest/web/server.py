"""A gunicorn worker that reads whole requests asynchronously before any app thread sees them.

gunicorn's threaded worker hands a connection to an app thread as soon as it is readable, and that
thread then blocks reading headers and body: ten idle sockets stopped the front door. Here one
asyncio loop per worker reads every connection with h11 (the HTTP/1.1 parser of httpx), under a
deadline for the headers and for the body, with a bound on connections; only a complete, valid
request goes to the thread pool that runs the Flask app. So a slow or idle client costs a socket,
never a thread. Pipelined requests are answered in order. Every error the HTTP layer raises itself
(bad framing, oversize lines and headers, unknown transfer codings, timeouts) is the API's JSON
shape, and a request refused before its body (413 by Content-Length) closes the connection
without reading the body. Requests without a key are paced here, before an app thread (pacing.py).

h11 is lenient where a proxy in front of us may not be: it ends lines at a bare LF, unfolds obs-fold
and takes any bytes in a chunk extension. Two parsers that disagree on where a header or a message
ends let a request be smuggled past the first, so the raw head and chunk framing are checked here
first (HeadCheck, ChunkCheck) and anything RFC 9112 does not allow is refused with 400, as gunicorn
does at its strictest. Only HTTP/1.0 and 1.1 are served (else 505).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h11
from gunicorn.workers.base import Worker

from . import appstate
from .auth import key_matches, keys_in_headers
from .backend_health import BackendHealth, probe_answer
from .errors import error_body, error_code
from .pacing import Refusal

log = logging.getLogger("ingest.web.server")
access = logging.getLogger("gunicorn.access")

KEEPALIVE_TIMEOUT = 5.0
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_TARGET = 8190
LINGER_SECONDS = 5.0           # after a refusal: how long the rest of a request is read and dropped
LINGER_BYTES = 64 * 1024 * 1024

WRITE_TARGETS = (b"/post/enqueue", b"/posts")


_BLANK_LINE = re.compile(rb"\n\r?\n")               # where h11 ends a head
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_SIZE_LINE = re.compile(  # RFC 9112 7.1.1: chunk-size *( BWS ";" BWS name [ BWS "=" BWS value ] )
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*[ \t]*" % (_TOKEN, _TOKEN, _QUOTED))
MAX_CHUNK_LINE = 4096


def _head_problem(data: bytes) -> str | None:
    """What h11 would let through in a head (request line and header lines): a line not ended by
    CRLF, or obs-fold. `data` holds a whole head, maybe followed by the body."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end + 2]  # no CRLF CRLF: h11 found its end at a bare LF
    if _BARE_CR_OR_LF.search(head):
        return "the request line and header lines must end in CRLF (a bare LF or CR was sent)"
    if b"\n " in head or b"\n\t" in head:
        return "obs-fold (a header line continued on the next line) is not accepted"
    return None


class HeadCheck:
    """Sees the bytes h11 gets until a head is complete, then checks that head once."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.done = False

    def feed(self, data: bytes) -> str | None:
        if self.done or not data:
            return None
        start = max(0, len(self.seen) - 2)  # only the new bytes (and two before) can finish the head
        self.seen += data
        if _BLANK_LINE.search(self.seen, start) is None:
            return None  # h11 cannot have the whole head yet
        self.done = True
        return _head_problem(bytes(self.seen))


class ChunkCheck:
    """Follows a chunked body alongside h11 and refuses what it would pass: a chunk extension with
    a CR, NUL or other byte outside RFC 9112's grammar, bare LF line ends, obs-fold in trailers.
    It only refuses; h11 still does the framing."""

    def __init__(self) -> None:
        self.state = "size"  # size -> data -> data-end -> size ... -> trailer -> done
        self.left = 0
        self.line = bytearray()

    def feed(self, data: bytes) -> str | None:
        pos = 0
        while pos < len(data) and self.state != "done":
            if self.state == "data":
                take = min(self.left, len(data) - pos)
                self.left, pos = self.left - take, pos + take
                if not self.left:
                    self.state = "data-end"
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self.line += data[pos:]
                return "chunk header line too long" if len(self.line) > MAX_CHUNK_LINE else None
            self.line += data[pos:newline]
            pos = newline + 1
            line, self.line = bytes(self.line), bytearray()
            if problem := self.end_line(line):
                return problem
        return None

    def end_line(self, line: bytes) -> str | None:
        """One line of chunk framing, without its LF."""
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            return "chunk framing lines must end in CRLF"
        line = line[:-1]
        if self.state == "data-end":
            if line:
                return "chunk data not followed by CRLF"
            self.state = "size"
        elif self.state == "size":
            match = _CHUNK_SIZE_LINE.fullmatch(line)
            if match is None:
                return f"illegal chunk size line {line[:100]!r}"
            self.left = int(match[1], 16)
            self.state = "data" if self.left else "trailer"
        elif not line:
            self.state = "done"
        elif line[:1] in (b" ", b"\t"):
            return "obs-fold in a trailer is not accepted"
        return None


class _Closed(Exception):
    pass


class HttpConnection:
    """One client connection: read a request, hand it over, write the answer, again."""

    def __init__(self, worker: "BufferingWorker", reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.worker = worker
        self.settings = worker.settings
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        peer = writer.get_extra_info("peername") or ("", 0)
        self.peer = peer[:2] if isinstance(peer, tuple) else (str(peer), 0)
        self.sock = writer.get_extra_info("sockname") or ("", 0)

    async def serve(self) -> None:
        try:
            first = True
            while self.worker.alive:
                request = await self.read_head(self.settings.header_timeout if first else KEEPALIVE_TIMEOUT,
                                               quiet_timeout=not first)
                self.worker.nr += 1
                if request is None:
                    return
                first = False
                body = await self.read_body(request)
                if body is None:
                    return
                keep = await self.answer(request, body)
                if not keep or self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
        except _Closed:
            pass
        except Exception:  # a bug here must not take the loop down
            log.exception("connection from %s failed", self.peer[0])
        finally:
            await self.linger()
            self.writer.close()

    async def linger(self) -> None:
        """Close gently: say we are done writing, then discard what the client still sends, for a
        bounded time and size. A client that writes a whole oversized body before reading then
        reads its 413 instead of a reset; no app thread is involved, and nothing is kept."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            deadline, discarded = time.monotonic() + LINGER_SECONDS, 0
            while discarded < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = await asyncio.wait_for(self.reader.read(256 * 1024), left)
                if not chunk:
                    break
                discarded += len(chunk)
        except (OSError, asyncio.TimeoutError, TimeoutError, asyncio.IncompleteReadError):
            pass

    async def next_event(self, deadline: float, check: HeadCheck | ChunkCheck | None = None):
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self.refuse(exc.error_status_hint or 400, _describe(exc))
                raise _Closed from None
            if event is not h11.NEED_DATA:
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.reader.read(65536), left)
            if check is not None:
                await self.vet(check, data)
            self.conn.receive_data(data)  # b"" is the end of the stream

    async def vet(self, check: HeadCheck | ChunkCheck, data: bytes) -> None:
        """Refuse (400, then close) bytes that break a framing rule h11 lets through."""
        problem = check.feed(data)
        if problem:
            await self.refuse(400, f"malformed request: {problem}")
            raise _Closed

    async def read_head(self, timeout: float, quiet_timeout: bool):
        check = HeadCheck()
        try:
            await self.vet(check, self.conn.trailing_data[0])  # what a pipelining client sent already
            event = await self.next_event(time.monotonic() + timeout, check)
        except (TimeoutError, asyncio.TimeoutError):
            if self.conn.trailing_data[0]:  # a request was begun and not finished: say so
                await self.refuse(408, f"request headers not complete within {timeout:.0f}s")
            return None  # an idle connection just closes
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            return None
        if event.http_version not in (b"1.0", b"1.1"):
            await self.refuse(505, f"HTTP/{event.http_version.decode()} is not supported; use HTTP/1.1 or HTTP/1.0")
            return None
        if len(event.target) > MAX_TARGET:
            await self.refuse(414, f"request target longer than {MAX_TARGET} bytes")
            return None
        if sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEADER_BYTES:
            await self.refuse(431, f"request headers over {MAX_HEADER_BYTES} bytes")
            return None
        if len(event.headers) > MAX_HEADERS:
            await self.refuse(431, f"more than {MAX_HEADERS} header fields")
            return None
        if _header(event, b"content-length") is not None and _header(event, b"transfer-encoding") is not None:
            # the classic request-smuggling pair: refuse rather than pick one
            await self.refuse(400, "malformed request: Content-Length together with Transfer-Encoding")
            return None
        return event

    async def read_body(self, request: h11.Request) -> bytes | None:
        limit = self.settings.max_body_bytes
        length = _header(request, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self.refuse(413, f"request body of {int(length)} bytes is over the limit of {limit}")
            return None
        if self.conn.they_are_waiting_for_100_continue and not self.worker.may_write(request):
            # its headers do not pass: no 100, so the client sends no body for nothing
            await self.refuse(401, "missing or invalid API key: send it in the X-API-Key header")
            return None
        check = ChunkCheck() if _header(request, b"transfer-encoding") is not None else None
        if check is not None:
            await self.vet(check, self.conn.trailing_data[0])
        await self.send_continue()
        chunks, size = [], 0
        deadline = time.monotonic() + self.settings.body_timeout
        try:
            while True:
                event = await self.next_event(deadline, check)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        await self.refuse(413, f"request body over the limit of {limit} bytes")
                        return None
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:  # ConnectionClosed mid-body
                    return None
        except (TimeoutError, asyncio.TimeoutError):
            await self.refuse(408, f"request body not complete within {self.settings.body_timeout:.0f}s")
            return None

    async def send_continue(self) -> None:
        """A client that sent `Expect: 100-continue` waits for this before sending its body (curl
        for a second). Sent only once the head passed every check made before the body."""
        if self.conn.they_are_waiting_for_100_continue:
            await self.flush(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))

    async def answer(self, request: h11.Request, body: bytes) -> bool:
        started = time.monotonic()
        environ = self.environ(request, body)
        pacer = self.worker.pacer
        if pacer is not None and pacer.applies(request.headers):
            retry_after = await pacer.admit(self.peer[0], environ["PATH_INFO"], request.headers)
            if retry_after is not None:
                await self.too_many(request, retry_after, started)
                return True
        probe = probe_answer(environ["PATH_INFO"], self.worker.backend_health) \
            if request.method in (b"GET", b"HEAD") else None
        if probe is not None:
            await self.alive(request, started, *probe)  # from the loop: a probe never waits behind app threads
            return True
        try:
            status, headers, payload = await asyncio.get_running_loop().run_in_executor(
                self.worker.pool, self.worker.call_app, environ)
        except RuntimeError:  # the pool is shut down: we are stopping
            await self.refuse(503, "the frontend is restarting; retry")
            return False
        close = any(k.lower() == "connection" and v.lower() == "close" for k, v in headers) \
            or not self.worker.alive
        length = _content_length(request, headers, payload)
        headers = [(k, v) for k, v in headers if k.lower() not in ("connection", "content-length", "transfer-encoding")]
        headers.append(("Content-Length", length))
        if close:
            headers.append(("Connection", "close"))
        code = int(status.split(" ", 1)[0])
        reason = status.partition(" ")[2].encode("latin-1")
        await self.send(h11.Response(status_code=code, headers=headers, reason=reason),
                        b"" if request.method == b"HEAD" else payload)
        self.log_access(request, code, len(payload), started)
        return not close

    async def alive(self, request: h11.Request, started: float, status: int, payload: bytes) -> None:
        """`/healthz`: this worker's loop is up (and, with INGEST_BACKEND_HEALTH, the backend beside it:
        backend_health.py). Answered here, not by the app: an autohealing probe must not fail
        because every app thread waits on a slow backend or publish (30 s each)."""
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                   ("Cache-Control", "no-store")]
        body = b"" if request.method == b"HEAD" else payload
        await self.send(h11.Response(status_code=status, headers=headers), body)
        self.log_access(request, status, len(payload), started)

    async def too_many(self, request: h11.Request, retry_after: Refusal, started: float) -> None:
        """A paced request still over its limit: 429, and the connection stays open (its body is read)."""
        body = error_body(429, f"too many requests without an API key (over {retry_after.limit}); slow down, "
                               "or send a key")
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Retry-After", str(retry_after))]
        await self.send(h11.Response(status_code=429, headers=headers), b"" if request.method == b"HEAD" else body)
        self.log_access(request, 429, len(body), started)

    async def send(self, response: h11.Response, payload: bytes) -> None:
        data = self.conn.send(response)
        if payload:
            data += self.conn.send(h11.Data(data=payload))
        data += self.conn.send(h11.EndOfMessage())
        await self.flush(data)

    async def flush(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), self.settings.body_timeout)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            raise _Closed from None

    async def refuse(self, status: int, detail: str) -> None:
        """An answer from the HTTP layer itself, in the API's shape; the connection closes after it."""
        body = error_body(status, detail)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]
        if status == 503:
            headers.append(("Retry-After", "1"))
        by_hand = self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE)  # e.g. after a broken request line
        if not by_hand:
            try:
                await self.send(h11.Response(status_code=status, headers=headers), body)
            except (h11.LocalProtocolError, _Closed, OSError):
                by_hand = True
        if by_hand:  # h11 refuses to speak in this state: the same answer, framed by hand
            self.writer.write(f"HTTP/1.1 {status} {error_code(status)}\r\n".encode()
                              + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n" + body)
        log.info("refused %s: %d %s", self.peer[0], status, detail)

    def environ(self, request: h11.Request, body: bytes) -> dict:
        target = request.target.decode("latin-1")
        path, _, query = _origin_form(target).partition("?")
        from urllib.parse import unquote_to_bytes

        environ = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_NAME": str(self.sock[0]),
            "SERVER_PORT": str(self.sock[1]),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": str(self.peer[0]),
            "REMOTE_PORT": str(self.peer[1]),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in request.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = text
            elif key == "CONTENT_LENGTH":
                continue  # the body is whole: its length is what we read
            else:
                # an underscore in a name (the course client's `access_token`) maps like a dash did in
                # older gunicorn; a repeated header is joined with commas, so a mixed pair never matches a key
                key = "HTTP_" + key
                environ[key] = environ[key] + "," + text if key in environ else text
        return environ

    def log_access(self, request: h11.Request, status: int, size: int, started: float) -> None:
        line = (f"{request.method.decode()} {request.target.decode('latin-1')[:200]} "
                f"HTTP/{request.http_version.decode()}")
        access.info('%s "%s" %d %d %dms', self.peer[0], line, status, size, (time.monotonic() - started) * 1000)


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(request: h11.Request, headers: list, payload: bytes) -> str:
    """A HEAD answer carries the length the GET would have: Werkzeug sends no body for HEAD but
    keeps its Content-Length. Any other answer is measured."""
    if request.method == b"HEAD":
        for key, value in headers:
            if key.lower() == "content-length" and value.isdigit():
                return value
    return str(len(payload))


_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)


def _origin_form(target: str) -> str:
    """`http://host/path?q` (absolute-form, what a client sends to a proxy; RFC 9112 3.2.2 says a
    server accepts it) routes by its path and query, like `/path?q`."""
    match = _ABSOLUTE_FORM.match(target)
    if match is None:
        return target
    rest = target[match.end():]
    return rest if rest.startswith("/") else "/" + rest


def _describe(exc: h11.RemoteProtocolError) -> str:
    text = str(exc) or "malformed request"
    return f"malformed request: {text}"


def _quiet_cancellations(loop, context) -> None:
    """A connection accepted as the worker stops is cancelled unborn; asyncio would log that as an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


class BufferingWorker(Worker):
    """gunicorn worker: an asyncio loop reads requests; a thread pool runs the app."""

    QUICK_STOP = 1.0  # seconds SIGINT/SIGQUIT leave requests in flight (SIGTERM: graceful_timeout)

    def init_process(self):
        """`self.app` is ingest-frontend's gunicorn application: its settings were validated once,
        before gunicorn started, and come to each worker with the fork."""
        self.settings = self.app.settings
        self.quick = False
        self.pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="app")
        self.connections = 0
        super().init_process()

    def call_app(self, environ: dict):
        """Runs in an app thread: the WSGI call, its whole answer collected."""
        captured = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, list(headers)
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        result = self.wsgi(environ, start_response)
        try:
            for chunk in result:
                chunks.append(chunk)
        finally:
            if hasattr(result, "close"):
                result.close()
        return captured["status"], captured["headers"], b"".join(chunks)

    def handle_quit(self, sig, frame):
        """Ctrl-C (SIGINT) or SIGQUIT: stop soon, but through the loop, not sys.exit inside it."""
        self.alive = False
        self.quick = True

    def may_write(self, request: h11.Request) -> bool:
        """False for a write that presents no valid write key (checked before its body is read when
        the client waits for `100 Continue`; the app checks every write again)."""
        if request.method != b"POST" or request.target.split(b"?", 1)[0] not in WRITE_TARGETS:
            return True
        keys = self.settings.api_keys
        return bool(keys) and key_matches(keys_in_headers(request.headers), keys)

    def run(self):
        self.pacer = appstate.of(self.wsgi).pacer
        self.backend_health = BackendHealth.from_settings(self.settings)
        asyncio.run(self.serve())

    async def serve(self):
        asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
        servers = []
        for listener in self.sockets:
            servers.append(await asyncio.start_server(self.on_connect, sock=listener.sock, backlog=2048,
                                                      limit=MAX_HEADER_BYTES * 4))
        tasks: set[asyncio.Task] = set()
        self._tasks = tasks
        self._writers: set[asyncio.StreamWriter] = set()
        parent = self.ppid
        while self.alive:
            self.notify()
            if os.getppid() != parent:
                self.log.info("Parent changed, shutting down: %s", self)
                break
            await asyncio.sleep(0.5)
        for server in servers:
            server.close()
        await asyncio.sleep(0.05)  # connections accepted just now start their tasks, so they are tracked
        deadline = time.monotonic() + (self.QUICK_STOP if self.quick else self.cfg.graceful_timeout)
        while tasks and time.monotonic() < deadline:  # finish requests in flight; idle ones end by timeout
            self.notify()
            await asyncio.sleep(0.1)
        for writer in list(self._writers):  # what is left is idle or too slow: close it, let it end
            writer.transport.abort()
        for _ in range(50):
            if not tasks:
                break
            await asyncio.sleep(0.02)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        bound = self.settings.frontend_connections
        if self.connections >= bound:
            body = error_body(503, f"more than {bound} connections to this worker")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            writer.close()
            return
        self.connections += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await HttpConnection(self, reader, writer).serve()
        except asyncio.CancelledError:  # the worker is stopping: the connection just closes
            writer.close()
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            self._writers.discard(writer)
