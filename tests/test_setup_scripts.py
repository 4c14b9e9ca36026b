"""What a newcomer meets before the stack runs: scripts/venv.sh (behind `make run` and `make test`)
checks the Python version before it makes anything, rebuilds a venv made with an older Python, and
installs only what running needs for `make run`; `make clean` leaves var/ (keys and counts) alone.

The interpreters here are fakes (shell scripts that answer the version question and record the
rest), so nothing is really installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  -c) echo "{version}"; exit 0 ;;
esac
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi
exit 0
"""


def fake_python(path: Path, version: str, log: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON.format(version=version, log=log))
    path.chmod(0o755)
    return path


def venv_sh(tmp_path: Path, what: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV")}
    full.update(VENV=str(tmp_path / "venv"), **env)
    return subprocess.run(["bash", str(ROOT / "scripts" / "venv.sh"), what], env=full, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_an_old_python3_is_refused_in_one_line_before_any_venv_is_made(tmp_path):
    log = tmp_path / "calls"
    fake_python(tmp_path / "bin" / "python3", "3.10", log)
    done = venv_sh(tmp_path, "run", PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert done.returncode == 1
    assert done.stderr.strip() == ("venv: error: Python >= 3.11 is needed; python3 is Python 3.10 "
                                   "(install python3.11 and set PYTHON=python3.11)"), done.stderr
    assert not (tmp_path / "venv").exists()
    assert "-m venv" not in log.read_text()


def test_a_venv_made_with_an_older_python_is_rebuilt_and_make_run_installs_no_test_tools(tmp_path):
    log = tmp_path / "calls"
    fake_python(tmp_path / "venv" / "bin" / "python", "3.10", tmp_path / "old-calls")
    (tmp_path / "venv" / ".installed").touch()
    python = fake_python(tmp_path / "bin" / "python3.11", "3.11", log)
    done = venv_sh(tmp_path, "run", PYTHON=str(python))
    assert done.returncode == 0, done.stderr
    assert "was made with Python 3.10; Python >= 3.11 is needed: rebuilding it" in done.stderr
    calls = log.read_text().splitlines()
    assert f"-m venv {tmp_path / 'venv'}" in calls
    installs = [c for c in calls if c.startswith("-m pip install") and "-e" in c.split()]
    assert installs and installs[-1].endswith("-e ."), calls  # no '.[dev]' for `make run`
    assert (tmp_path / "venv" / ".installed").exists() and not (tmp_path / "venv" / ".installed-dev").exists()

    # `make test` then adds the test tools, saying what they are
    done = venv_sh(tmp_path, "dev", PYTHON=str(python))
    assert done.returncode == 0, done.stderr
    assert "the test tools too (pytest" in done.stderr
    assert log.read_text().splitlines()[-1].endswith("-e .[dev]")
    # and once installed, nothing more
    before = log.read_text()
    assert venv_sh(tmp_path, "dev", PYTHON=str(python)).returncode == 0
    assert log.read_text().count("pip install") == before.count("pip install")


def _make(tmp_path: Path, target: str) -> subprocess.CompletedProcess:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return subprocess.run([make, "-s", "-f", str(ROOT / "Makefile"), target], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_make_clean_leaves_keys_and_data_and_clean_data_says_what_it_deletes(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "api_keys").write_text("secret\n")
    (tmp_path / "var" / "ingest.db").write_bytes(b"counts")
    for d in ("build", "test-artifacts", "ingestiond.egg-info"):
        (tmp_path / d).mkdir()
    done = _make(tmp_path, "clean")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var" / "api_keys").read_text() == "secret\n" and (tmp_path / "var" / "ingest.db").exists()
    assert not any((tmp_path / d).exists() for d in ("build", "test-artifacts", "ingestiond.egg-info"))

    done = _make(tmp_path, "clean-data")
    assert done.returncode == 0, done.stderr
    assert "deleting var/ (API keys" in done.stdout and not (tmp_path / "var").exists()


def test_system_deps_says_which_packages_it_installs_why_and_how_to_skip(tmp_path):
    if os.getuid() != 0:
        pytest.skip("scripts/system-deps.sh installs only as root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path / "apt"}"\n')
    (bin_dir / "apt-get").chmod(0o755)
    for name in ("id", "sort"):  # all the script needs: every package it looks for is missing
        (bin_dir / name).symlink_to(shutil.which(name))
    env = {**{k: v for k, v in os.environ.items() if k != "INGEST_SKIP_SYSTEM_DEPS"}, "PATH": str(bin_dir)}
    done = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "system-deps.sh")], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "system-deps:   chromium-driver  (for the dashboard's browser tests)" in done.stderr
    assert "system-deps:   podman  (for the container image's tests)" in done.stderr
    assert "INGEST_SKIP_SYSTEM_DEPS=1 make test" in done.stderr
    assert "install -y -qq --no-install-recommends podman" in (tmp_path / "apt").read_text()

    env["INGEST_SKIP_SYSTEM_DEPS"] = "1"
    done = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "system-deps.sh")], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and "installing nothing" in done.stderr
