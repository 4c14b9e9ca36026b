"""Processes for the benchmark: every child in its own process group, all remembered, all stopped.

`Children` is the one registry: bench.py stops everything it holds in a `finally`, on Ctrl-C and
on SIGTERM alike (SIGTERM/SIGINT/SIGHUP first, then SIGKILL of the whole group after a grace time).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHILDREN_PY = Path(__file__).resolve().parent / "children.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Children:
    """Every process the benchmark starts; `stop_all` leaves nothing running."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Signal the process, wait, then SIGKILL whatever is left of its group."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of its group (our own group: setsid)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        if proc in self.procs:
            self.procs.remove(proc)
        return code

    def stop_all(self, timeout: float = 20.0) -> None:
        for proc in list(self.procs):
            self.stop(proc, signal.SIGTERM, timeout)


# -- children.py roles -------------------------------------------------------------------------------

def start_role(children: Children, env: dict, *args: str) -> subprocess.Popen:
    return children.popen([sys.executable, str(CHILDREN_PY), *args], env=env, cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_together(children: Children, procs: list[subprocess.Popen], timeout: float = 600.0,
                 before_go=None) -> list[dict]:
    """Wait until every child is ready, (call before_go,) release them together, collect their JSON results."""
    import json

    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"benchmark child {proc.args[2:]} failed before it was ready (exit "
                               f"{proc.poll()}): {line!r}")
    if before_go is not None:
        before_go()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"benchmark child {proc.args[2:]} died while measuring (exit {proc.poll()})")
        results.append(json.loads(line))
        children.stop(proc, timeout=max(1.0, deadline - time.monotonic()))
    return results


# -- the real stack ------------------------------------------------------------------------------------

@dataclass
class Stack:
    backend: subprocess.Popen
    frontend: subprocess.Popen | None
    address: tuple[str, int]
    authkey: str
    store_path: Path
    url: str
    api_key: str
    log_dir: Path
    client: object = field(default=None, repr=False)
    journal_name: str = "journal.db"  # a Pub/Sub backend's scratch journal is journal-pubsub.db

    @property
    def journal_path(self) -> Path:
        """The backend's journal: VAR_DIR/journal.db (INGEST_VAR_DIR is set per stack below)."""
        return self.log_dir / "var" / self.journal_name

    def journal_disk(self) -> dict:
        """Sizes on disk of the journal's files now: journal.db, its -wal and -shm (0 if absent)."""
        out = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                out["db" + suffix] = os.stat(f"{self.journal_path}{suffix}").st_size
            except OSError:
                out["db" + suffix] = 0
        out["bytes"] = out["db"] + out["db-wal"]  # what the journal holds on disk (the -shm is an index, mmapped)
        return out

    def status(self) -> dict:
        if self.client is None:
            from ingest.client import IngestClient

            self.client = IngestClient(self.address, self.authkey.encode())
        return self.client.status()

    def child_pids(self, role: str) -> list[int]:
        """PIDs of the backend's live children of a role: from status()["children"] or its log."""
        import psutil

        named = self.status().get("children")
        if isinstance(named, dict):
            return [pid for name, pid in named.items() if name.startswith(role + "-") and psutil.pid_exists(pid)]
        text = (self.log_dir / "ingestiond.log").read_text(errors="replace")
        pids = [int(p) for p in re.findall(rf"spawned {role} \d+ \(pid (\d+)\)", text)]
        return [p for p in pids if psutil.pid_exists(p)]


def start_stack(children: Children, workdir: Path, name: str, backend_args: list[str],
                frontend_workers: int = 2, ready_timeout: float = 180.0, env_extra: dict | None = None,
                frontend_env: dict | None = None, journal_name: str = "journal.db") -> Stack:
    """`ingestiond` (SQLite store under workdir) and `ingest-frontend` on free loopback ports.

    `env_extra` is added to both programs' environment last, e.g. another INGEST_STORE (the
    Firestore emulator's) with FIRESTORE_EMULATOR_HOST; `store_path` is then not the store.
    `frontend_env` goes to the frontend alone (INGEST_INTAKE=pubsub://PROJECT/TOPIC for (i))."""
    run_dir = workdir / name
    attempt = 1
    while run_dir.exists():  # a repeated (noisy) run gets a fresh store and journal, never the last one's
        attempt += 1
        run_dir = workdir / f"{name}-{attempt}"
    run_dir.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    authkey = "bench-" + os.urandom(12).hex()
    api_key = "bench-key-" + os.urandom(12).hex()
    store_path = run_dir / "ingest.db"
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)  # the backend sets its own; the benchmark must not help it
    env.update({
        "INGEST_VAR_DIR": str(run_dir / "var"),
        "INGEST_MANAGER_ADDRESS": f"127.0.0.1:{port}",
        "INGEST_AUTHKEY": authkey,
        "INGEST_STORE": f"sqlite:///{store_path}",
        "INGEST_API_KEYS": api_key,
        "INGEST_API_KEYS_FILE": str(run_dir / "no-api-keys-file"),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(env_extra or {})
    with open(run_dir / "ingestiond.log", "wb") as log:
        backend = children.popen([str(BIN / "ingestiond"), *backend_args], env=env, cwd=run_dir,
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    with open(run_dir / "frontend.log", "wb") as log:
        frontend = children.popen([str(BIN / "ingest-frontend"), "--bind", f"127.0.0.1:{http_port}",
                                   "--workers", str(frontend_workers)], env={**env, **(frontend_env or {})},
                                  cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = Stack(backend, frontend, ("127.0.0.1", port), authkey, store_path, f"http://127.0.0.1:{http_port}",
                  api_key, run_dir, journal_name=journal_name)
    workers = _flag(backend_args, "--workers", 1)

    def ready():
        for proc, what in ((backend, "ingestiond"), (frontend, "ingest-frontend")):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}; see {run_dir}")
        try:
            s = stack.status()
            if s["workers_ready"] < workers or s["savers_ready"] < 1:
                return False
            return httpx.get(stack.url + "/readyz", timeout=2).status_code == 200
        except Exception:
            return False

    wait_for(ready, ready_timeout, f"{name}: backend workers and frontend to be ready", 0.1)
    return stack


def stop_stack(children: Children, stack: Stack, drain: bool = True) -> dict:
    """Frontend first, then the backend (SIGTERM drains; otherwise SIGKILL of its group)."""
    codes = {}
    if stack.frontend is not None:
        codes["frontend"] = children.stop(stack.frontend, signal.SIGTERM, 30)
    codes["backend"] = children.stop(stack.backend, signal.SIGTERM if drain else signal.SIGKILL, 120)
    return codes


def _flag(args: list[str], name: str, default: int) -> int:
    return int(args[args.index(name) + 1]) if name in args else default
