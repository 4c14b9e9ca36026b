"""The shipped supervisord.conf and scripts/run.sh, run for real: both programs come up, take posts
over HTTP, and a SIGTERM to supervisord (or Ctrl-C, SIGINT to the terminal's process group) stops
the stack with every accepted article counted in the SQLite file."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests import corpus
from tests.support import BIN, ROOT, assert_store_equals_recount, free_port, wait_for

pytestmark = pytest.mark.slow


def stack_env(tmp_path: Path, **extra: str) -> dict:
    """A clean environment: nothing from the test runner's INGEST_* leaks in; free ports; temp dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "PROMETHEUS_"))}
    var = tmp_path / "var"
    env.update({
        "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "INGEST_VAR_DIR": str(var),
        "INGEST_LOG_DIR": str(var / "log"),
        "INGEST_BIND": f"127.0.0.1:{free_port()}",
        "INGEST_MANAGER_ADDRESS": f"127.0.0.1:{free_port()}",
        "INGEST_STORE": f"sqlite:///{tmp_path / 'stack.db'}",
        "INGEST_WORKERS": "1",
        "INGEST_SAVERS": "1",
        "INGEST_FRONTEND_WORKERS": "1",
        "INGEST_FLUSH_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def program_pids(env: dict) -> dict[str, int]:
    """Both programs' pids once supervisorctl (over the unix socket under INGEST_VAR_DIR) says RUNNING."""
    def running():
        out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(ROOT / "supervisord.conf"), "status"],
                             env=env, capture_output=True, text=True, timeout=30).stdout
        pids = {m.group(1): int(m.group(2)) for m in re.finditer(r"ingest:(\w+)\s+RUNNING\s+pid (\d+)", out)}
        return pids if set(pids) == {"backend", "frontend"} else None

    return wait_for(running, 30, 0.5, "supervisorctl to report both programs RUNNING")


def whole_tree(pids) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def kill_leftovers(procs: list[psutil.Process]) -> None:
    """Only processes this test started (their pids were recorded while they ran)."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def post_corpus(url: str, key: str, n: int) -> list[tuple[str, str]]:
    accepted = []
    posts = corpus.articles(n, seed=3)
    with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as http:
        for i in range(0, n, 25):
            chunk = posts[i:i + 25]
            r = http.post("/posts", json=[{"publication": p, "content": c} for p, c in chunk])
            assert r.status_code == 202, r.text
            accepted += chunk
        r = http.post("/post/enqueue", json={"publication": "Solo", "content": "Jacinda Ardern flew to Tokyo."},
                      headers={"access_token": key})
        assert r.status_code == 202, r.text
        accepted.append(("Solo", "Jacinda Ardern flew to Tokyo."))
    return accepted


def assert_db_equals_recount(db: Path, accepted, recount) -> None:
    assert_store_equals_recount(f"sqlite:///{db}", accepted, recount)


def wait_ready(url: str, proc: subprocess.Popen, logs: Path) -> None:
    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: " + "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs.glob("*.log")))
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, 0.2, "the stack to be ready")


def test_supervisord_conf_runs_both_programs_and_sigterm_loses_nothing(tmp_path, recount):
    env = stack_env(tmp_path, INGEST_API_KEYS="stack-key-" + os.urandom(6).hex())
    Path(env["INGEST_LOG_DIR"]).mkdir(parents=True)
    with open(tmp_path / "supervisord.out", "wb") as out:
        proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(ROOT / "supervisord.conf")], env=env,
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        url = "http://" + env["INGEST_BIND"]
        wait_ready(url, proc, Path(env["INGEST_LOG_DIR"]))
        tree = whole_tree([proc.pid])
        pids = program_pids(env)
        tree = whole_tree([proc.pid, *pids.values()])
        assert (Path(env["INGEST_VAR_DIR"]) / "supervisor.sock").is_socket()

        accepted = post_corpus(url, env["INGEST_API_KEYS"], 150)
        proc.send_signal(signal.SIGTERM)  # what systemd and `supervisorctl shutdown` do
        assert proc.wait(300) == 0
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], \
            "a process outlived supervisord"
        assert_db_equals_recount(tmp_path / "stack.db", accepted, recount)
        backend_log = (Path(env["INGEST_LOG_DIR"]) / "backend.log").read_text()
        supervisord_log = (Path(env["INGEST_LOG_DIR"]) / "supervisord.log").read_text()
        assert "drained" in backend_log
        assert "stopped: backend (exit status 0)" in supervisord_log
        assert "stopped: frontend (exit status 0)" in supervisord_log
        frontend_log = (Path(env["INGEST_LOG_DIR"]) / "frontend.log").read_text()
        assert env["INGEST_API_KEYS"] not in frontend_log and "Traceback" not in frontend_log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kill_leftovers(tree)


def make_fake_venv(tmp_path: Path) -> Path:
    """A venv whose install is already done: run.sh skips pip and uses the real programs."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "supervisord", "supervisorctl", "ingestiond", "ingest-frontend"):
        (venv / "bin" / name).symlink_to(BIN / name)
    (venv / ".installed").touch()
    return venv


def test_run_script_creates_a_key_prints_a_working_curl_and_ctrl_c_drains(tmp_path, recount):
    venv = make_fake_venv(tmp_path)
    env = stack_env(tmp_path, VENV=str(venv))
    del env["INGEST_STORE"]  # run.sh's default: var/ingest.db
    with open(tmp_path / "run.out", "wb") as out:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run.sh")], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        url = "http://" + env["INGEST_BIND"]
        wait_ready(url, proc, Path(env["INGEST_LOG_DIR"]))
        # the terminal says when the stack is ready
        wait_for(lambda: f"run: ready at {url} (dashboard" in (tmp_path / "run.out").read_text(), 30, 0.1,
                 "run.sh to say the stack is ready")
        printed = (tmp_path / "run.out").read_text()
        assert "1 NER workers" not in printed
        key_file = Path(env["INGEST_VAR_DIR"]) / "api_keys"
        key = key_file.read_text().strip()
        assert len(key) >= 32 and key in printed
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        tree = whole_tree([proc.pid])
        tree = whole_tree([proc.pid, *program_pids(env).values()])

        # the curl example, verbatim as printed
        command = re.search(r"(curl -s -X POST .*?-d '\{.*?\}')", printed, re.S).group(1)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and '"accepted":1' in done.stdout.replace(" ", ""), done
        accepted = [("The Daily Planet", "Lois Lane met Bruce Wayne in Metropolis.")]
        accepted += post_corpus(url, key, 100)

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground group
        assert proc.wait(300) == 0
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert_db_equals_recount(Path(env["INGEST_VAR_DIR"]) / "ingest.db", accepted, recount)
        # the terminal shows the drain, and none of supervisord's alarming-looking CRIT lines
        printed = (tmp_path / "run.out").read_text()
        assert "run: stopping (Ctrl-C)" in printed and "run: backend: draining: queue=" in printed \
            and "run: backend: drained: accepted=" in printed, printed
        assert "run: supervisord: stopped: backend (exit status 0)" in printed, printed
        assert "CRIT" not in printed and "waiting for backend to die" not in printed, printed
        supervisord_log = (Path(env["INGEST_LOG_DIR"]) / "supervisord.log").read_text()
        assert "stopped: backend (exit status 0)" in supervisord_log
        assert "stopped: frontend (exit status 0)" in supervisord_log
        frontend_log = (Path(env["INGEST_LOG_DIR"]) / "frontend.log").read_text()
        assert key not in frontend_log and "Traceback" not in frontend_log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_leftovers(tree)


def _stream_over_http(url: str, key: str, posts, acked: list, stop) -> None:
    """One article a request, each retried with its id until the stack answers 202 (across a restart)."""
    with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": key}) as http:
        for publication, content, ident in posts:
            while not stop.is_set():
                try:
                    r = http.post("/post/enqueue", json={"publication": publication, "content": content, "id": ident})
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if r.status_code == 202:
                    acked.append((publication, content))
                    break
                time.sleep(0.1)
            time.sleep(0.01)


def test_sigkill_of_everything_make_run_started_then_make_run_again_loses_nothing(tmp_path, recount):
    import threading

    venv = make_fake_venv(tmp_path)
    # workers hold what they counted for up to 30 s: the kill finds accepted articles not yet stored
    env = stack_env(tmp_path, VENV=str(venv), INGEST_FLUSH_INTERVAL="30", INGEST_CACHE_SIZE="1000")
    del env["INGEST_STORE"]
    url = "http://" + env["INGEST_BIND"]
    posts = [(f"Trace {i:04d}", c, f"id-{i}") for i, (_, c) in enumerate(corpus.articles(150, seed=8))]

    def run_sh(name):
        with open(tmp_path / name, "wb") as out:
            proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run.sh")], env=env, cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(url, proc, Path(env["INGEST_LOG_DIR"]))
        return proc

    proc = run_sh("run-1.out")
    tree: list[psutil.Process] = []
    acked: list = []
    stop = threading.Event()
    key = (Path(env["INGEST_VAR_DIR"]) / "api_keys").read_text().strip()
    streamer = threading.Thread(target=_stream_over_http, args=(url, key, posts, acked, stop), daemon=True)
    try:
        tree = whole_tree([proc.pid, *program_pids(env).values()])
        streamer.start()
        wait_for(lambda: len(acked) >= 40, 120, 0.05, "articles streaming in")
        # kill while the journal holds accepted articles not yet stored, so the second start must recover them
        wait_for(lambda: httpx.get(url + "/readyz", timeout=5).json().get("journal_articles", 0) > 0, 60, 0.01,
                 "accepted articles waiting in the journal")
        for p in whole_tree([proc.pid, *program_pids(env).values()]):  # supervisord, frontend, backend, children
            p.kill()
        proc.wait(30)
        wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 30,
                 what="every process of the first stack to be gone")
        proc = run_sh("run-2.out")
        tree = whole_tree([proc.pid, *program_pids(env).values()])
        streamer.join(300)
        assert not streamer.is_alive() and len(acked) == len(posts)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(300) == 0
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_leftovers(tree)
    assert_db_equals_recount(Path(env["INGEST_VAR_DIR"]) / "ingest.db", [(p, c) for p, c, _ in posts], recount)


def _port_free(address: str) -> bool:
    import socket

    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill-supervisord"])
def test_the_stack_never_outlives_its_supervisor_even_with_its_output_pipe_closed(tmp_path, how):
    venv = make_fake_venv(tmp_path)
    env = stack_env(tmp_path, VENV=str(venv))
    del env["INGEST_STORE"]
    url = "http://" + env["INGEST_BIND"]
    # `make run | head -c 1`: the pipe closes after one byte, long before the stack stops
    proc = subprocess.Popen(["bash", "-c", f"bash {ROOT / 'scripts' / 'run.sh'} | head -c 1 > /dev/null; sleep 600"],
                            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        wait_ready(url, proc, Path(env["INGEST_LOG_DIR"]))
        pids = program_pids(env)
        tree = whole_tree([proc.pid, *pids.values()])
        supervisord = next(p for p in tree if "supervisord" in " ".join(p.cmdline()))
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            supervisord.kill()  # what a broken pipe or the OOM killer did to it
        survivors = lambda: [p for p in tree if p.pid != proc.pid and p.is_running()  # noqa: E731
                             and p.status() != psutil.STATUS_ZOMBIE and "sleep" not in " ".join(p.cmdline())]
        wait_for(lambda: not survivors(), 120, 0.5, "every process of the stack to exit")
        assert _port_free(env["INGEST_BIND"]) and _port_free(env["INGEST_MANAGER_ADDRESS"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        kill_leftovers(tree)


def program_state(env: dict, name: str) -> str:
    out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(ROOT / "supervisord.conf"), "status", f"ingest:{name}"],
                         env=env, capture_output=True, text=True, timeout=30).stdout
    match = re.search(rf"ingest:{name}\s+([A-Z]+)", out)
    return match.group(1) if match else ""


def test_a_backend_boot_error_is_not_restarted_by_supervisord(tmp_path):
    """Exit 3 (boot error) after startsecs: a restart would fail the same way, so supervisord leaves the
    backend EXITED (autorestart=unexpected, exitcodes=0,2,3), instead of restarting it forever."""
    import sqlite3

    env = stack_env(tmp_path, INGEST_API_KEYS="stack-key-" + os.urandom(6).hex())
    log_dir = Path(env["INGEST_LOG_DIR"])
    log_dir.mkdir(parents=True)
    # a store another process holds locked: the saver's write check waits out SQLite's 30 s busy
    # timeout and fails, a boot error that comes well after supervisord's startsecs
    blocker = sqlite3.connect(tmp_path / "stack.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with open(tmp_path / "supervisord.out", "wb") as out:
        proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(ROOT / "supervisord.conf")], env=env,
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    supervisord_log = log_dir / "supervisord.log"
    spawned = lambda: supervisord_log.read_text().count("spawned: 'backend'") if supervisord_log.exists() else 0  # noqa: E731
    try:
        wait_for(lambda: program_state(env, "backend") == "RUNNING", 60, 0.5, "the backend to be RUNNING")
        tree = whole_tree([proc.pid])
        wait_for(lambda: "exited: backend (exit status 3" in supervisord_log.read_text(), 120, 0.5,
                 "the backend's boot error")
        wait_for(lambda: program_state(env, "backend") in ("EXITED", "FATAL") or spawned() > 1, 30, 0.2,
                 "supervisord to settle the backend")
        time.sleep(3)  # supervisord restarts on its next tick (1 s) when it is going to
        assert spawned() == 1, supervisord_log.read_text()
        assert program_state(env, "backend") == "EXITED"
        assert "stopping instead of respawning" in (log_dir / "backend.log").read_text()
    finally:
        blocker.rollback()
        blocker.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        kill_leftovers(tree)
