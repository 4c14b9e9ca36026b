"""What `make run` shows on the terminal while supervisord runs silently (scripts/run.sh starts this).

- `ready at URL` once GET /readyz answers 200;
- supervisord's own news that matters (a program exited, backing off, given up on), from its log;
- after Ctrl-C (run.sh sends SIGUSR1): the backend's drain progress, read from its status through
  the manager every second (queue depth, articles in flight, stored so far), and its last words.

Everything else stays in the log files. Exits when run.sh (its parent) is gone, or on SIGTERM after a last
look at the logs.

    python scripts/stack_watch.py URL LOG_DIR MANAGER_ADDRESS AUTHKEY_FILE
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request

SHOWN_SUPERVISORD = re.compile(r"\b(exited|gave up|FATAL|BACKOFF|stopped):")
SHOWN_BACKEND = re.compile(r"\b(draining:|drained:|drain took longer|not stored yet|ERROR|CRITICAL)")


def say(text: str) -> None:
    try:
        print(f"run: {text}", file=sys.stderr, flush=True)
    except OSError:  # the terminal is gone: nobody to tell
        pass


class Follow:
    """New lines of a file from where it ended when we started (it may not exist yet)."""

    def __init__(self, path: str):
        self.path = path
        self.pos = os.path.getsize(path) if os.path.exists(path) else 0
        self.rest = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.pos:  # rotated
                    self.pos = 0
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        complete, _, self.rest = (self.rest + data).rpartition(b"\n")  # a line half written waits
        return [line.decode("utf-8", "replace") for line in complete.split(b"\n") if line]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def backend_status(address: str, authkey_file: str) -> dict | None:
    try:
        from ingest.client import IngestClient

        host, _, port = address.rpartition(":")
        key = os.environ.get("INGEST_AUTHKEY", "").encode() or open(authkey_file, "rb").read().strip()
        return IngestClient((host.strip("[]"), int(port)), key).status()
    except Exception:  # not up, already gone, or no authkey: the log lines still say how it ended
        return None


def main(argv: list[str]) -> int:
    url, log_dir, address, authkey_file = argv
    parent = os.getppid()
    stopping = finishing = False

    def on_stop(signum, frame):
        nonlocal stopping
        stopping = True

    def on_term(signum, frame):  # one last look at the logs, within 2 s whatever happens
        nonlocal finishing
        finishing = True
        signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
        signal.alarm(2)

    signal.signal(signal.SIGUSR1, on_stop)
    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C reaches the whole foreground group, this process too: it means the same as run.sh's
    # SIGUSR1 (which covers a SIGTERM or SIGHUP sent to run.sh alone); run.sh does the stopping
    signal.signal(signal.SIGINT, on_stop)
    supervisord = Follow(os.path.join(log_dir, "supervisord.log"))
    backend = Follow(os.path.join(log_dir, "backend.log"))
    is_ready = announced_stop = False
    last_progress, last_line = 0.0, ""
    while os.getppid() == parent:
        last_pass = finishing
        for line in supervisord.lines():
            if SHOWN_SUPERVISORD.search(line) and not (stopping and "waiting for" in line):
                say("supervisord: " + line.split(" ", 3)[-1])
        if stopping:
            if not announced_stop:
                announced_stop = True
                say("stopping (Ctrl-C): the frontend finishes its requests, the backend stores every "
                    "accepted article before it exits (supervisord sends both SIGTERM)")
            for line in backend.lines():
                if SHOWN_BACKEND.search(line):
                    # "ingest.arbiter: SIGTERM: draining: ..." -> "draining: ..." (the SIGTERM is
                    # supervisord's, sent for the Ctrl-C)
                    say("backend: " + re.sub(r"^[\w.]+: (SIG[A-Z]+: )?", "", line.split("] ", 1)[-1]))
            now = time.monotonic()
            if now - last_progress >= 1.0 and not last_pass:
                last_progress = now
                status = backend_status(address, authkey_file)
                if status is not None:
                    text = (f"draining: queue={status.get('depth', '?')} in_flight={status.get('in_flight', '?')} "
                            f"processed={status.get('processed', '?')}")
                    if text != last_line:
                        last_line = text
                        say(text)
        else:
            backend.lines()  # keep up, so only the stop's lines are shown after Ctrl-C
            if not is_ready and ready(url):
                is_ready = True
                say(f"ready at {url} (dashboard {url}/, API docs {url}/docs)")
        if last_pass:
            break
        time.sleep(0.25 if stopping or not is_ready else 0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
