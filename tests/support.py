"""Real processes for tests: the backend as a subprocess in its own process group, free ports, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ingest.client import BackendUnavailable, IngestClient

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60.0, group: bool = False) -> int:
    """Signal by PID (or its group), wait, then escalate to SIGKILL of the whole group."""
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)
    return proc.wait(10)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_backend_group(backend: "Backend") -> None:
    """What the OOM killer, `kill -9` of the group or a preempted VM does: every process at once,
    then wait until every one of them is gone."""
    import psutil

    members = [backend.proc.pid] + [p.pid for p in psutil.Process(backend.proc.pid).children(recursive=True)]
    kill_group(backend.proc)
    backend.proc.wait(30)
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in members), 30, what="the killed group to be gone")


@dataclass
class Backend:
    """A running `ingestiond`; `env` holds what a frontend needs to reach it and its store."""

    proc: subprocess.Popen
    address: tuple[str, int]
    authkey: str
    store_url: str
    env: dict = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def client(self) -> IngestClient:
        if "_client" not in self.__dict__:  # one connection per test: a new one costs ~0.2 s
            self.__dict__["_client"] = IngestClient(self.address, self.authkey.encode())
        return self.__dict__["_client"]

    def status(self) -> dict:
        return self.client.status()

    def wait_idle(self, timeout: float = 120.0) -> dict:
        """Until everything accepted has been processed and stored."""
        def idle():
            s = self.status()
            settled = s["processed"] + s["quarantined"] >= s["accepted"]  # quarantined: kept, never counted
            return s if s["depth"] == 0 and s["in_flight"] == 0 and s["unsaved"] == 0 and settled else None
        return wait_for(idle, timeout, 0.1, "backend to settle")

    def stop(self, sig=signal.SIGTERM, timeout: float = 120.0, group: bool = False) -> int:
        return stop_process(self.proc, sig, timeout, group)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def start_backend(tmp_path: Path, *args: str, store_url: str | None = None, env: dict | None = None,
                  ready_timeout: float = 120.0, wait_ready: bool = True, port: int | None = None,
                  authkey: str | None = None) -> Backend:
    """Start `ingestiond` with a temporary SQLite store (unless told otherwise) and wait until it serves.

    A restart gives the same `port` and `authkey` (and tmp_path: the same var dir and journal)."""
    port = port or free_port()
    authkey = authkey or "test-" + os.urandom(8).hex()
    store_url = store_url or f"sqlite:///{tmp_path / 'ingest.db'}"
    child_env = dict(os.environ)
    child_env.update({
        "INGEST_VAR_DIR": str(tmp_path / "var"),
        "INGEST_MANAGER_ADDRESS": f"127.0.0.1:{port}",
        "INGEST_AUTHKEY": authkey,
        "INGEST_STORE": store_url,
        "PYTHONUNBUFFERED": "1",
    })
    child_env.update(env or {})
    log_path = tmp_path / f"ingestiond-{port}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "ingestiond"), *args], env=child_env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    backend = Backend(proc, ("127.0.0.1", port), authkey, store_url,
                      env={k: child_env[k] for k in ("INGEST_MANAGER_ADDRESS", "INGEST_AUTHKEY", "INGEST_STORE",
                                                     "INGEST_VAR_DIR")},
                      log_path=log_path)
    if wait_ready:
        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"ingestiond exited with {proc.returncode}:\n{backend.log()}")
            try:
                return backend.status()["workers_ready"] >= 1
            except BackendUnavailable:
                return False
        try:
            wait_for(ready, ready_timeout, 0.1, "ingestiond to be ready")
        except BaseException:
            stop_process(proc, signal.SIGKILL)
            raise
    return backend


# -- the one "store equals recount" helper ------------------------------------------------------

def store_counts(url: str) -> dict:
    """{publication key: (articles, {entity: (mentions, articles, label)})} read back through the store's API."""
    from ingest.core.rules import publication_key
    from ingest.stores import open_store

    store = open_store(url, readonly=True)
    try:
        out = {}
        for summary in store.publications():
            rows = store.entities(summary.publication, limit=1000) or []
            assert len(rows) == summary.entities, "the maintained distinct-entity count is off"
            out[publication_key(summary.publication)] = (
                summary.articles, {r.entity: (r.mentions, r.articles, r.label) for r in rows})
        return out
    finally:
        store.close()


def expected_counts(recount, posts) -> dict:
    """The same shape from an independent recount of (publication, content[, id]) posts, under
    counting rules v2: each entity's label is the majority of its mentions' labels."""
    from ingest.core.naming import majority_label

    return {k: (p.articles, {e: (m, p.entity_articles[e], majority_label(p.labels[e])) for e, m in p.mentions.items()})
            for k, p in recount([(p[0], p[1]) for p in posts]).items()}


def assert_store_equals_recount(url: str, posts, recount) -> None:
    got = store_counts(url)
    assert sum(v[0] for v in got.values()) == len(posts), "articles lost or counted twice"
    assert got == expected_counts(recount, posts)
