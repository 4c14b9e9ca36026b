"""Word clouds drawn in a child process at low priority, never under a frontend worker's GIL.

A picture costs ~0.4 s of CPU, nearly all of it Python holding the GIL. Drawn on a thread of the
frontend worker, every request that worker served meanwhile waited for the GIL at each step (a
switch interval per step), so a client asking for clouds of a publication being written slowed the
writers by several percent through that worker alone. Here the worker's renderer thread only
writes the frequencies to a pipe and waits; the child (`python -m ingest.web.painter`, one per
frontend worker, started on the first picture) draws at nice `NICENESS`, so the scheduler gives the
writers a core first. The child reads its requests from stdin and exits when that closes, so it
ends with its worker, however the worker ends.

Frames, both ways: a 4-byte big-endian length, then the payload. A request is the frequencies as
JSON; an answer is b"+" or b"-", the child's CPU seconds for it (8-byte double), then the PNG or
the error message.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time

from ..core.forksafe import PerProcess
from ..core.exitcodes import ExitCode

WORDCLOUD_TOP_N = 200  # a cloud of more words is unreadable, and the read stays cheap
WORDCLOUD_SIZE = (800, 400)
# a proportional face reads better than the package's bundled monospace one; used when installed
WORDCLOUD_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                   "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
NICENESS = 10         # the writers' requests come first; a picture waits for an idle moment
DRAW_TIMEOUT = 60.0   # seconds: a child that takes longer is killed and the next picture starts another
_LENGTH = struct.Struct(">I")
_CPU = struct.Struct(">d")


def render_wordcloud(frequencies: dict[str, int]) -> bytes:
    """PNG bytes; a publication without entities yet gets a quiet placeholder, not an error."""
    from PIL import Image, ImageDraw

    width, height = WORDCLOUD_SIZE
    if frequencies:
        from wordcloud import WordCloud

        cloud = WordCloud(
            width=width,
            height=height,
            background_color="white",
            colormap="Dark2",
            prefer_horizontal=0.9,
            max_words=WORDCLOUD_TOP_N,
            random_state=7,  # the same counts always give the same picture
            margin=4,
            font_path=next((f for f in WORDCLOUD_FONTS if os.path.exists(f)), None),
        ).generate_from_frequencies(frequencies)
        image = cloud.to_image()
    else:
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).text((width // 2, height // 2), "no entities yet", fill="#888", anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class PainterError(RuntimeError):
    pass


class Painter:
    """The parent's side: one child per process, started when first needed, restarted when lost.

    `draw` is called by the renderer threads (one per app), one picture at a time; each thread
    can read the child CPU seconds its own pictures cost in `cpu_spent()`, for its render budget."""

    def __init__(self, niceness: int = NICENESS, timeout: float = DRAW_TIMEOUT):
        self.niceness = niceness
        self.timeout = timeout
        # a forked copy (a gunicorn worker) must not talk on its parent's pipes: a child per process
        self._children = PerProcess(self._start, close=_stop)
        self._lock = threading.Lock()
        self._spent = threading.local()

    def cpu_spent(self) -> float:
        return getattr(self._spent, "seconds", 0.0)

    @property
    def child_pid(self) -> int | None:
        """The pid of this process's child, if one is running."""
        return self._children.get().pid if self._children.made() else None

    def draw(self, frequencies: dict[str, int]) -> bytes:
        request = json.dumps(frequencies).encode()
        with self._lock:
            child = self._running()
            try:
                _write_frame(child.stdin, request)
                answer = _read_frame(child.stdout.fileno(), time.monotonic() + self.timeout)
            except (OSError, EOFError, TimeoutError) as exc:
                self._children.drop()
                raise PainterError(f"the word-cloud painter failed ({exc!r}); the next picture starts another") from exc
        ok, cpu, payload = answer[:1] == b"+", _CPU.unpack_from(answer, 1)[0], answer[1 + _CPU.size:]
        self._spent.seconds = self.cpu_spent() + cpu
        if not ok:
            raise PainterError(payload.decode("utf-8", "replace"))
        return payload

    def close(self) -> None:
        with self._lock:
            self._children.drop()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ingest.web.painter", str(self.niceness)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)

    def _running(self) -> subprocess.Popen:
        child = self._children.get()
        if child.poll() is not None:  # it died (killed, out of memory): the next picture starts another
            self._children.drop()
            child = self._children.get()
        return child


def _stop(child: subprocess.Popen) -> None:
    for pipe in (child.stdin, child.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    try:
        child.wait(2)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _write_frame(pipe, payload: bytes) -> None:
    pipe.write(_LENGTH.pack(len(payload)) + payload)
    pipe.flush()


def _read_frame(fd: int, deadline: float) -> bytes:
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    return _read_exactly(fd, length, deadline)


def _read_exactly(fd: int, n: int, deadline: float) -> bytes:
    parts, left = [], n
    while left:
        if deadline != float("inf"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no picture in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the painter exited")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


_shared: Painter | None = None
_shared_lock = threading.Lock()


def shared_painter() -> Painter:
    """This process's painter (one child per frontend worker, whatever the number of apps)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Painter()
            atexit.register(_shared.close)  # stdin closes at exit anyway; this also waits for the child
        return _shared


def main(argv: list[str]) -> int:
    """The child: frames in on stdin, frames out on stdout, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent; EOF ends us
    os.nice(int(argv[0]) if argv else NICENESS)
    # the frames get a private copy of stdout; anything a library prints goes to stderr instead
    sink = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    source = sys.stdin.buffer.fileno()
    while True:
        try:
            request = _read_frame(source, float("inf"))
        except EOFError:
            return ExitCode.OK
        started = time.process_time()
        try:
            payload, mark = render_wordcloud(json.loads(request)), b"+"
        except Exception as exc:  # a bad font, a library error: the parent logs it, we go on
            payload, mark = f"{type(exc).__name__}: {exc}".encode(), b"-"
        try:
            _write_frame(sink, mark + _CPU.pack(time.process_time() - started) + payload)
        except BrokenPipeError:
            return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
