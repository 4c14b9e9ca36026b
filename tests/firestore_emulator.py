"""Google's official Firestore emulator (Cloud SDK component) as pytest fixtures.

`firestore_emulator` (session): starts one emulator on a free loopback port in its own process
group and yields "127.0.0.1:PORT"; stopped by PID (SIGTERM, then SIGKILL of the group).
`firestore_project` (function): a fresh project id per test, FIRESTORE_EMULATOR_HOST set for the
test, its data deleted afterwards. Without Java or the jar, tests skip and say how to install them
(or fail, when INGEST_REQUIRE_FIRESTORE_EMULATOR is set, so CI cannot lose them silently).
`stored(project)`: every publication and entity document, read with the plain client (not our store).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import free_port

JAR_RELATIVE = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
INSTALL_HINT = (
    "install the Debian packages google-cloud-cli-firestore-emulator and a JRE "
    "(e.g. `apt-get install google-cloud-cli-firestore-emulator default-jre-headless`), "
    "or `gcloud components install cloud-firestore-emulator`"
)
FALLBACK_SDK_ROOTS = (Path("/usr/lib/google-cloud-sdk"), Path("/usr/share/google-cloud-sdk"),
                      Path("/opt/google-cloud-sdk"))


class EmulatorUnavailable(RuntimeError):
    """Java or the emulator jar is not installed here."""


@functools.lru_cache(maxsize=1)
def _sdk_roots() -> list[Path]:
    roots = []
    if shutil.which("gcloud"):
        try:
            out = subprocess.run(["gcloud", "info", "--format=value(installation.sdk_root)"],
                                 capture_output=True, text=True, timeout=60, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            roots.append(Path(out))
    return roots + [r for r in FALLBACK_SDK_ROOTS if r not in roots]


def find_java_and_jar(what: str, jars: list[Path], searched: str, hint: str,
                      unavailable: type[Exception]) -> tuple[str, Path]:
    """(java executable, the first jar that exists), or `unavailable` saying what is missing.
    Shared by the Firestore and the Pub/Sub emulators."""
    java = shutil.which(os.environ.get("JAVA") or "java")
    jar = next((j for j in jars if j.is_file()), None)
    missing = []
    if not java:
        missing.append("java (a JRE) is not on PATH")
    if jar is None:
        missing.append(f"the {what} jar was not found {searched}")
    if missing:
        raise unavailable(f"{what} unavailable: " + "; ".join(missing) + " — " + hint)
    return java, jar


def find_emulator() -> tuple[str, Path]:
    """(java executable, jar path), or EmulatorUnavailable saying what is missing."""
    jar_env = os.environ.get("FIRESTORE_EMULATOR_JAR")
    jars = [Path(jar_env)] if jar_env else [root / JAR_RELATIVE for root in _sdk_roots()]
    return find_java_and_jar("Firestore emulator", jars, "at " + ", ".join(map(str, jars)), INSTALL_HINT,
                             EmulatorUnavailable)


def _answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_java(what: str, command, answers, timeout: float = 60.0):
    """Runs `command(port)` (a Java emulator) in its own process group on a free loopback port until
    `answers(host)`; yields 'host:port'; stops it by PID. Shared by the Firestore and Pub/Sub emulators."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix=what.lower().replace(" ", "-").replace("/", "") + "-", suffix=".log",
                                      delete=False)
    proc = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not answers(host):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = Path(log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what} did not start on {host} (exit {proc.poll()}):\n{text}")
            time.sleep(0.1)
        yield host
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)


@contextmanager
def running_emulator(timeout: float = 60.0):
    """Runs one emulator for the duration of the block; yields 'host:port'."""
    java, jar = find_emulator()
    command = lambda port: [java, "-Xmx1g", "-Duser.language=en", "-cp", str(jar), MAIN_CLASS, "start",  # noqa: E731
                            "--host=127.0.0.1", f"--port={port}"]
    with running_java("Firestore emulator", command, _answers, timeout) as host:
        yield host


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the JVM may leave helpers in its group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def reset_project(host: str, project: str) -> None:
    """Deletes every document of `project` in the emulator (its documented reset endpoint)."""
    req = urllib.request.Request(
        f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents", method="DELETE")
    with urllib.request.urlopen(req, timeout=30):
        pass


def stored(project: str) -> dict:
    """Every publication and entity document, read straight from Firestore (not through the store)."""
    from google.cloud import firestore

    db = firestore.Client(project=project)
    out = {}
    for pub in db.collection("publications").stream():
        out[pub.id] = {"doc": pub.to_dict(),
                       "ent": {e.id: e.to_dict() for e in pub.reference.collection("ent").stream()}}
    db.close()
    return out


def stored_packed(project: str) -> dict:
    """The packed layout's documents, read straight from Firestore: {pub_id: {"sums": {...}, "shards": {...}}}."""
    from google.cloud import firestore

    db = firestore.Client(project=project)
    out: dict = {}
    for group in ("sums", "shards"):
        for snap in db.collection_group(group).stream():
            pub_id = snap.reference.parent.parent.id
            out.setdefault(pub_id, {"sums": {}, "shards": {}})[group][snap.id] = snap.to_dict()
    db.close()
    return out


def firestore_counts(project: str) -> dict:
    """{publication key: (articles, {entity: (mentions, articles, label)})} summed from the documents
    themselves, in whichever layout they are (independent of the store's read code); label: the
    majority of the entity's mentions per label (ties: alphabetically first)."""
    def majority(labels: dict) -> str:
        return sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] if labels else ""

    out: dict = {}
    for doc in stored(project).values():
        out[doc["doc"]["key"]] = (doc["doc"]["count"], {e["word"]: (e["count"], e["articles"],
                                                                    majority(e.get("labels") or {}))
                                                        for e in doc["ent"].values()})
    for docs in stored_packed(project).values():
        sums = list(docs["sums"].values())
        entities: dict = {}
        for shard in docs["shards"].values():
            items = ([(k, v) for k, v in (shard.get("e") or {}).items()]
                     + [(v["w"], v) for v in (shard.get("h") or {}).values()])
            for entity, v in items:
                m, a, labels = entities.get(entity, (0, 0, {}))
                for label, n in (v.get("l") or {}).items():
                    labels[label] = labels.get(label, 0) + n
                entities[entity] = (m + v["m"], a + v["a"], labels)
        out[sums[0]["key"]] = (sum(s["articles"] for s in sums),
                               {e: (m, a, majority(labels)) for e, (m, a, labels) in entities.items()})
    return out


@pytest.fixture(scope="session")
def firestore_emulator():
    """'127.0.0.1:PORT' of an emulator shared by the session; skips loudly when not installed."""
    try:
        find_emulator()
    except EmulatorUnavailable as exc:
        if os.environ.get("INGEST_REQUIRE_FIRESTORE_EMULATOR"):  # CI: a missing emulator is a failure
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    with running_emulator() as host:
        yield host


@pytest.fixture
def firestore_project(firestore_emulator, monkeypatch):
    """A fresh project id for one test, with FIRESTORE_EMULATOR_HOST pointing at the emulator."""
    project = "test-" + uuid.uuid4().hex[:12]
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    yield project
    try:
        reset_project(firestore_emulator, project)
    except (urllib.error.URLError, OSError):
        pass
