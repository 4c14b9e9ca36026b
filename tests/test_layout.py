"""The package's layout by process role: each process imports only what it runs, and no module
needs another to be imported first."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import ingest

MODULES = sorted(m.name for m in pkgutil.walk_packages(ingest.__path__, "ingest.") if not m.name.endswith("__main__"))


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_every_module_imports_on_its_own():
    """A fresh interpreter per module: an import cycle fails here, whatever the order elsewhere."""
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for m in MODULES}
    failed = {m: p.communicate(timeout=120)[1].strip().splitlines()[-1:] for m, p in procs.items()}
    assert {m: err for m, err in failed.items() if procs[m].returncode} == {}
    assert len(MODULES) > 30


def test_a_gunicorn_worker_does_not_import_the_backend():
    loaded = _loaded_after("from ingest.web.app import create_app; create_app({'api_keys': 'k'})")
    assert not {m for m in loaded if m.startswith("ingest.backend")}, "the web side imports the backend"
    assert "spacy" not in loaded and "ingest.tools.load" not in loaded


def test_an_ner_worker_does_not_import_flask():
    loaded = _loaded_after("from ingest.backend.worker import Worker; from ingest.backend.nlp import Processor")
    assert "flask" not in loaded and not {m for m in loaded if m.startswith("ingest.web")}
    assert "google.cloud.firestore" not in loaded, "store clients are the savers' business"


def test_the_load_tool_imports_neither_server_side():
    loaded = _loaded_after("import ingest.tools.load")
    assert not {m for m in loaded if m.startswith(("ingest.backend", "ingest.web", "ingest.stores"))}
    assert "ingest.config" not in loaded


def test_the_painter_child_imports_neither_flask_nor_the_stores():
    """`python -m ingest.web.painter` draws pictures only; the gunicorn worker never draws them."""
    painter = _loaded_after("import ingest.web.painter")
    assert "flask" not in painter and not {m for m in painter if m.startswith(("ingest.stores", "ingest.backend"))}
    worker = _loaded_after("from ingest.web.app import create_app; create_app({'api_keys': 'k'})")
    assert "wordcloud" not in worker and "matplotlib" not in worker
