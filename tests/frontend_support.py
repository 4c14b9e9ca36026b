"""`ingest-frontend` as a real subprocess on a free port, for tests that speak HTTP to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import BIN, ROOT, free_port, stop_process, wait_for

API_KEY = "test-api-key-" + os.urandom(6).hex()


@dataclass
class Frontend:
    proc: subprocess.Popen
    url: str
    api_key: str
    log_path: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def stop(self, sig=signal.SIGTERM, timeout: float = 40.0) -> int:
        return stop_process(self.proc, sig, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def frontend_command() -> list[str]:
    exe = BIN / "ingest-frontend"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ingest.web.cli"]


def start_frontend(tmp_path: Path, backend_env: dict, *, workers: int = 1, api_key: str = API_KEY,
                   env: dict | None = None, args: tuple[str, ...] = (), ready_timeout: float = 60.0) -> Frontend:
    """Start the frontend against a backend (its `Backend.env`) and wait until /healthz answers;
    `args` are more flags of ingest-frontend."""
    port = free_port()
    child_env = dict(os.environ)
    child_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the CLI makes its own temporary one
    child_env.update(backend_env)
    child_env.update({
        "INGEST_API_KEYS": api_key,
        "INGEST_API_KEYS_FILE": str(tmp_path / "no-api-keys-file"),
        "INGEST_FRONTEND_THREADS": "4",
        "INGEST_READ_RATE_LIMIT": "2000/second",  # the suites read fast from one address; test_hostile tests the limit
        "INGEST_PROBE_RATE_LIMIT": "2000/second",
        "INGEST_ANON_RATE_LIMIT": "2000/second",
        "PYTHONUNBUFFERED": "1",
    })
    child_env.update(env or {})
    log_path = tmp_path / f"frontend-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*frontend_command(), "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *args],
            env=child_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    frontend = Frontend(proc, f"http://127.0.0.1:{port}", api_key, log_path)

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"ingest-frontend exited with {proc.returncode}:\n{frontend.log()}")
        try:
            return httpx.get(frontend.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, ready_timeout, 0.1, "ingest-frontend /healthz")
    except BaseException:
        stop_process(proc, signal.SIGKILL)
        raise
    return frontend


@contextmanager
def running_stack(tmp_path: Path, *backend_flags: str, frontend_env: dict | None = None, workers: int = 1):
    """The one stack fixture: a real backend and a real frontend in front of it; both must stop cleanly."""
    from tests.support import start_backend

    backend = start_backend(tmp_path, *(backend_flags or ("--workers", "1")))
    try:
        frontend = start_frontend(tmp_path, backend.env, workers=workers, env=frontend_env)
    except BaseException:
        backend.stop()
        raise
    try:
        yield backend, frontend
    finally:
        try:
            code = frontend.stop()
            assert code == 0 and "Traceback" not in frontend.log(), frontend.log()[-3000:]
        finally:  # a frontend that failed must not leave its backend running
            assert backend.stop() == 0, backend.log()[-3000:]
