"""The container image, built and run with podman: articles posted over HTTP are all counted, a
`podman stop -t DRAIN` drains them and exits 0, a new container on the same volume has the same
counts and the same key, and after a SIGKILL of the container the next one counts what was accepted.

No image registry is reachable here, so the base is a Debian root file system made by
scripts/container-base.sh (mmdebstrap + podman import, cached by a hash of its recipe) and passed as
the Dockerfile's BASE. podman's settings for these machines are docker/containers.conf (runc, no
default ulimits) and --network=host; the stack listens on free loopback ports.

Measurements (build time, image size, time to the first /readyz) go to test-artifacts/container.json.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.corpus import articles
from tests.support import ROOT, expected_counts, free_port, wait_for

PODMAN = shutil.which("podman")
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
IMAGE = "localhost/ingestiond:test"
# The stop timeout the README and compose.yaml give: above supervisord's stopwaitsecs for the backend
# (660), itself above the backend's --drain-timeout (600). `podman stop` returns as soon as it exits.
DRAIN = 700
ARTIFACT = ROOT / "test-artifacts" / "container.json"


def _env() -> dict:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([PODMAN, "--runtime", "runc", *args], env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited "
                             f"{proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _record(**values) -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    data = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    data.update(values)
    ARTIFACT.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def image() -> str:
    if not PODMAN:
        pytest.skip("CONTAINER TEST SKIPPED: podman is not installed. `apt-get install podman runc mmdebstrap` "
                    "(scripts/system-deps.sh does it as root) to build and run the image")
    started = time.monotonic()
    base = subprocess.run(["bash", str(ROOT / "scripts" / "container-base.sh")], env=_env(), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    if base.returncode != 0 and not shutil.which("mmdebstrap"):
        pytest.skip("CONTAINER TEST SKIPPED: mmdebstrap is not installed and no base image is cached "
                    f"(apt-get install mmdebstrap): {base.stderr.strip()[-500:]}")
    assert base.returncode == 0, f"scripts/container-base.sh failed:\n{base.stderr[-3000:]}"
    base_tag = base.stdout.strip().splitlines()[-1]
    base_seconds = time.monotonic() - started

    started = time.monotonic()
    args = ["build", "--format", "docker", "--network=host", "--build-arg", f"BASE={base_tag}", "-t", IMAGE]
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if Path(cert).is_file():  # a TLS-inspecting proxy's CA, if the host's pip needs one; a build secret only
        args += ["--secret", f"id=pip_cert,src={cert}"]
    podman(*args, ".", timeout=1800)
    build_seconds = time.monotonic() - started
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    _record(base_image=base_tag, base_seconds=round(base_seconds, 1), build_seconds=round(build_seconds, 1),
            image_bytes=size, image_mb=round(size / 1e6))
    return IMAGE


class Container:
    """One `podman run -d` of the image on a volume, on free loopback ports; removed by cleanup()."""

    def __init__(self, image: str, volume: str, *extra: str):
        self.port, self.manager_port = free_port(), free_port()
        self.name = f"ingestiond-test-{os.getpid()}-{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        podman("run", "-d", "--name", self.name, "--network=host", "--stop-timeout", str(DRAIN),
               "-e", f"INGEST_BIND=127.0.0.1:{self.port}",
               "-e", f"INGEST_MANAGER_ADDRESS=127.0.0.1:{self.manager_port}",
               "-e", "INGEST_WORKERS=1",
               "-v", f"{volume}:/var/lib/ingestiond", *extra, image)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        return podman("inspect", self.name, "--format", "{{.State.Running}}", check=False).stdout.strip() == "true"

    def wait_ready(self, timeout: float = 180) -> float:
        def ready():
            if not self.running():
                raise AssertionError(f"the container exited before /readyz:\n{self.logs()[-4000:]}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, timeout, 0.1, "/readyz 200 from the container")
        return time.monotonic() - self.started

    def stop(self) -> int:
        podman("stop", "-t", str(DRAIN), self.name, timeout=DRAIN + 60)
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.strip())

    def cleanup(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def volume():
    name = f"ingestiond-test-{os.getpid()}-{os.urandom(4).hex()}"
    podman("volume", "create", name)
    containers: list[Container] = []
    try:
        yield name, containers
    finally:
        for c in containers:
            c.cleanup()
        # and any container on this volume that failed half-way through its `podman run`
        leftover = podman("ps", "-a", "-q", "--filter", f"volume={name}", check=False).stdout.split()
        if leftover:
            podman("rm", "-f", "-t", "0", *leftover, check=False)
        podman("volume", "rm", "-f", name, check=False)


def http_counts(url: str, key: str) -> dict:
    """{publication key: (articles, {entity: (mentions, articles)})}, read over the HTTP API only."""
    headers = {"X-API-Key": key}  # a valid key lifts the read rate limit
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        answer = client.get("/publications", params={"limit": 1000})
        assert answer.status_code == 200, answer.text
        out = {}
        for pub in answer.json():
            rows, offset = [], 0
            while True:
                page = client.get(f"/publications/{urllib.parse.quote(pub['publication'], safe='')}/entities",
                                  params={"limit": 1000, "offset": offset})
                assert page.status_code == 200, page.text
                rows += page.json()
                if len(page.json()) < 1000:
                    break
                offset += 1000
            assert len(rows) == pub["entities"]
            key_ = " ".join(pub["publication"].split()).lower()
            out[key_] = (pub["articles"], {r["entity"]: (r["mentions"], r["articles"], r["label"]) for r in rows})
        return out


def wait_counted(url: str, key: str, n: int, timeout: float = 180) -> dict:
    def counted():
        got = http_counts(url, key)
        return got if sum(v[0] for v in got.values()) >= n else None
    return wait_for(counted, timeout, 0.5, f"{n} articles counted over HTTP")


def generated_key(logs: str) -> str | None:
    found = re.search(r"X-API-Key header:\s*\n\s*\n\s+(\S+)", logs)
    return found.group(1) if found else None


@pytest.mark.slow
def test_container_counts_every_article_across_stop_restart_and_kill(image, volume, recount):
    volume_name, containers = volume
    first = Container(image, volume_name)
    containers.append(first)
    ready_seconds = first.wait_ready()

    key = generated_key(first.logs())
    assert key, f"the first start prints the key it generated:\n{first.logs()[-3000:]}"
    assert podman("healthcheck", "run", first.name, check=False).returncode == 0, "HEALTHCHECK on /readyz"

    corpus = articles(200, seed=15)
    a_single, a_batch, b_batch = corpus[:10], corpus[10:40], corpus[40:]
    with httpx.Client(base_url=first.url, timeout=30) as client:
        refused = client.post("/post/enqueue", json={"publication": "x", "content": "Angela Merkel"},
                              headers={"X-API-Key": "not-" + key})
        assert refused.status_code == 401, refused.text
        for i, (pub, text) in enumerate(a_single):
            answer = client.post("/post/enqueue", json={"publication": pub, "content": text, "id": f"a-{i}"},
                                 headers={"X-API-Key": key})
            assert answer.status_code == 202 and answer.json() == {"accepted": 1, "duplicates": 0}, answer.text
        answer = client.post("/posts", headers={"X-API-Key": key},
                             json=[{"publication": p, "content": t} for p, t in a_batch])
        assert answer.status_code == 202 and answer.json()["accepted"] == len(a_batch), answer.text
        first_counted = time.monotonic() - first.started

        posted = a_single + a_batch
        assert wait_counted(first.url, key, len(posted)) == expected_counts(recount, posted)

        # more articles, and the stop right behind them: the drain counts what is still queued
        answer = client.post("/posts", headers={"X-API-Key": key},
                             json=[{"publication": p, "content": t} for p, t in b_batch])
        assert answer.status_code == 202 and answer.json()["accepted"] == len(b_batch), answer.text
        backlog = client.get("/readyz").json()
    posted += b_batch

    started = time.monotonic()
    code = first.stop()
    stop_seconds = time.monotonic() - started
    logs = first.logs()
    assert code == 0, f"podman stop -t {DRAIN}: exit code {code}\n{logs[-4000:]}"
    assert "stopped: backend (exit status 0)" in logs and "stopped cleanly" in logs, logs[-4000:]
    assert logs.count(key) == 1, "the generated key is printed once, at the first start"

    # a new container on the same volume: the same counts, the same key, not printed again
    second = Container(image, volume_name)
    containers.append(second)
    second.wait_ready()
    assert generated_key(second.logs()) is None and "from /var/lib/ingestiond/api_keys" in second.logs()
    assert wait_counted(second.url, key, len(posted)) == expected_counts(recount, posted)
    with httpx.Client(base_url=second.url, timeout=30) as client:
        # the journal's dedup memory is in the volume too: a retried post is not counted again
        pub, text = a_single[0]
        again = client.post("/post/enqueue", json={"publication": pub, "content": text, "id": "a-0"},
                            headers={"X-API-Key": key})
        assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 1}, again.text
        # and a SIGKILL of the whole container loses nothing accepted: the journal is in the volume
        c_batch = articles(60, seed=152)
        answer = client.post("/posts", headers={"X-API-Key": key},
                             json=[{"publication": p, "content": t} for p, t in c_batch])
        assert answer.status_code == 202 and answer.json()["accepted"] == len(c_batch), answer.text
    podman("kill", "-s", "KILL", second.name)
    posted += c_batch

    third = Container(image, volume_name)
    containers.append(third)
    third.wait_ready()
    assert wait_counted(third.url, key, len(posted)) == expected_counts(recount, posted)
    assert third.stop() == 0, third.logs()[-4000:]

    _record(ready_seconds=round(ready_seconds, 2), first_post_accepted_seconds=round(first_counted, 2),
            drain_backlog_at_stop=backlog, stop_seconds=round(stop_seconds, 2), articles=len(posted))


@pytest.mark.slow
def test_container_takes_its_keys_from_a_secret_file(image, volume, tmp_path):
    """INGEST_API_KEYS_FILE (a mounted secret) is used as is: nothing generated, nothing printed;
    a named file that is missing is a clear error (exit 2) rather than a new key."""
    volume_name, containers = volume
    secret = tmp_path / "api_keys"
    secret.write_text("# write keys\nsecret-key-" + os.urandom(8).hex() + "\n")
    secret.chmod(0o644)  # readable by the image's non-root user inside
    key = secret.read_text().splitlines()[1]

    missing = podman("run", "--rm", "--network=host", "-e", "INGEST_API_KEYS_FILE=/run/secrets/nothing-here",
                     "-v", f"{volume_name}:/var/lib/ingestiond", image, check=False, timeout=60)
    assert missing.returncode == 2 and "INGEST_API_KEYS_FILE" in missing.stderr, missing.stderr

    c = Container(image, volume_name, "-e", "INGEST_API_KEYS_FILE=/run/secrets/api_keys",
                  "-v", f"{secret}:/run/secrets/api_keys:ro")
    containers.append(c)
    c.wait_ready()
    logs = c.logs()
    assert generated_key(logs) is None and key not in logs and "from /run/secrets/api_keys" in logs
    with httpx.Client(base_url=c.url, timeout=30) as client:
        ok = client.post("/post/enqueue",
                         json={"publication": "Gotham Gazette", "content": "Bruce Wayne met Lois Lane."},
                         headers={"X-API-Key": key})
        assert ok.status_code == 202, ok.text
    assert podman("run", "--rm", "--network=host", "--entrypoint", "ls", "-v", f"{volume_name}:/var/lib/ingestiond",
                  image, "/var/lib/ingestiond", timeout=60).stdout.split().count("api_keys") == 0
    assert c.stop() == 0, c.logs()[-4000:]


def _programs(path: Path) -> dict:
    parser = configparser.RawConfigParser()
    parser.read(path)
    keys = ("programs", "command", "priority", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup",
            "autorestart", "startsecs", "startretries")
    return {s: {k: parser.get(s, k, fallback=None) for k in keys} for s in parser.sections()
            if s.startswith(("program:", "group:"))}


def test_container_supervisord_conf_runs_the_same_programs_as_make_run():
    """docker/supervisord.conf differs from supervisord.conf only in where output goes."""
    assert _programs(ROOT / "docker" / "supervisord.conf") == _programs(ROOT / "supervisord.conf")


@pytest.mark.slow
@pytest.mark.firestore
def test_container_stores_into_the_firestore_emulator(image, volume, firestore_emulator, firestore_project, recount):
    """compose.yaml's firestore profile in miniature: the image with INGEST_STORE=firestore://PROJECT and
    FIRESTORE_EMULATOR_HOST (here the emulator the suite runs on the host's loopback)."""
    volume_name, containers = volume
    key = "firestore-key-" + os.urandom(8).hex()
    c = Container(image, volume_name, "-e", f"INGEST_STORE=firestore://{firestore_project}",
                  "-e", f"FIRESTORE_EMULATOR_HOST={firestore_emulator}",
                  "-e", f"GOOGLE_CLOUD_PROJECT={firestore_project}", "-e", f"INGEST_API_KEYS={key}")
    containers.append(c)
    c.wait_ready()
    assert generated_key(c.logs()) is None, "a key given in INGEST_API_KEYS: nothing generated"
    posted = articles(30, seed=151)
    with httpx.Client(base_url=c.url, timeout=30) as client:
        answer = client.post("/posts", headers={"X-API-Key": key},
                             json=[{"publication": p, "content": t} for p, t in posted])
        assert answer.status_code == 202 and answer.json()["accepted"] == len(posted), answer.text
    assert wait_counted(c.url, key, len(posted)) == expected_counts(recount, posted)
    assert c.stop() == 0, c.logs()[-4000:]


def _seconds(duration) -> float:
    """A compose duration: 700, "700s", "11m40s", "1h"."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration.strip())
    assert parts and duration.strip(), f"not a duration: {duration!r}"
    h, m, s = parts.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)


def test_compose_file_gives_a_drain_the_time_it_needs():
    """compose.yaml: every stack service waits DRAIN seconds on stop (compose's default is 10 s), is
    published on the host's loopback only and keeps its state in a volume; the firestore profile's
    stack points at the emulator service. The Dockerfile documents the same stop timeout."""
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    stacks = {name: s for name, s in services.items() if "INGEST" in json.dumps(s) and name != "firestore"}
    assert set(stacks) == {"ingestiond", "ingestiond-firestore"}
    for name, service in stacks.items():
        assert _seconds(service["stop_grace_period"]) >= DRAIN, name
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), name
        assert any(str(v).endswith(":/var/lib/ingestiond") for v in service["volumes"]), name
    assert "profiles" not in services["ingestiond"]
    assert services["firestore"]["profiles"] == services["ingestiond-firestore"]["profiles"] == ["firestore"]
    env = services["ingestiond-firestore"]["environment"]
    assert env["FIRESTORE_EMULATOR_HOST"] == "firestore:8080" and env["INGEST_STORE"].startswith("firestore://")
    assert f'io.ingestiond.stop-timeout="{DRAIN}"' in (ROOT / "Dockerfile").read_text()
    stopwaitsecs = configparser.RawConfigParser()
    stopwaitsecs.read(ROOT / "supervisord.conf")
    assert DRAIN > stopwaitsecs.getint("program:backend", "stopwaitsecs")
