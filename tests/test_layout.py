"""The package's layout by process role: each process imports only what it runs, and no module
needs another to be imported first."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import ingest

MODULES = sorted(m.name for m in pkgutil.walk_packages(ingest.__path__, "ingest.") if not m.name.endswith("__main__"))


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_every_module_imports_on_its_own():
    """A fresh interpreter per module: an import cycle fails here, whatever the order elsewhere."""
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for m in MODULES}
    failed = {m: p.communicate(timeout=120)[1].strip().splitlines()[-1:] for m, p in procs.items()}
    assert {m: err for m, err in failed.items() if procs[m].returncode} == {}
    assert len(MODULES) > 30


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_a_gunicorn_worker_does_not_import_the_backend():
    loaded = _loaded_after("from ingest.config import FrontendSettings; from ingest.web.app import create_app; "
                           "create_app(FrontendSettings(api_keys='k'))")
    assert not {m for m in loaded if m.startswith("ingest.backend")}, "the web side imports the backend"
    assert "spacy" not in loaded and "ingest.tools.load" not in loaded


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_an_ner_worker_does_not_import_flask():
    loaded = _loaded_after("from ingest.backend.worker import Worker; from ingest.backend.nlp import Processor")
    assert "flask" not in loaded and not {m for m in loaded if m.startswith("ingest.web")}
    assert "google.cloud.firestore" not in loaded, "store clients are the savers' business"


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_the_load_tool_imports_neither_server_side():
    loaded = _loaded_after("import ingest.tools.load")
    assert not {m for m in loaded if m.startswith(("ingest.backend", "ingest.web", "ingest.stores"))}
    assert "ingest.config" not in loaded


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_the_painter_child_imports_neither_flask_nor_the_stores():
    """`python -m ingest.web.painter` draws pictures only; the gunicorn worker never draws them."""
    painter = _loaded_after("import ingest.web.painter")
    assert "flask" not in painter and not {m for m in painter if m.startswith(("ingest.stores", "ingest.backend"))}
    worker = _loaded_after("from ingest.config import FrontendSettings; from ingest.web.app import create_app; "
                           "create_app(FrontendSettings(api_keys='k'))")
    assert "wordcloud" not in worker and "matplotlib" not in worker


def _backend_imports(root=None) -> dict[str, set[str]]:
    """ingest.backend's modules and the ingest.backend modules each imports, at any depth of its
    code (an import inside a function makes a cycle too, only a later one)."""
    import ingest.backend

    return _package_imports(ingest.backend, root)


def _package_imports(package, root=None) -> dict[str, set[str]]:
    """`package`'s modules and the modules of that package each imports, at any depth of its code."""
    import ast
    from pathlib import Path

    root = Path(root or package.__path__[0])
    graph = {}
    for path in root.rglob("*.py"):
        parts = (*package.__name__.split("."), *path.relative_to(root).with_suffix("").parts)
        parent = parts[:-1]
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = list(parent[:len(parent) - node.level + 1]) if node.level else []
                module = ".".join(base + (node.module.split(".") if node.module else []))
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import wire`
        graph[name] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_backend_has_no_import_cycle():
    """Before: arbiter imported pubsub_intake (to build a fleet) and pubsub_intake the arbiter (for BootError)."""
    graph = _backend_imports()
    assert {"ingest.backend.errors", "ingest.backend.intakes", "ingest.backend.fleet.puller",
            "ingest.backend.fleet.batching", "ingest.backend.fleet.scratch", "ingest.backend.fleet.deadletters"} \
        <= set(graph)
    assert _cycles(graph) == []


def test_the_firestore_store_is_a_package_without_cycles_or_private_calls():
    """Before: firestore.py and firestore_packed.py imported each other, the packed layout called the
    store's private `_translated`, and "ingest_batches" was written in both."""
    import ast
    from pathlib import Path

    import ingest.stores.firestore as package

    graph = _package_imports(package)
    assert {"ingest.stores.firestore.common", "ingest.stores.firestore.entities",
            "ingest.stores.firestore.packed"} <= set(graph)
    assert _cycles(graph) == []
    for path in Path(package.__path__[0]).glob("*.py"):
        tree = ast.parse(path.read_text())
        private = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_")]
        assert private == [], f"{path.name} imports private names {private}"
        if path.name != "common.py":
            names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
            assert not names & {"ingest_batches", "ingest_meta", "ingest_writers", "pubs", "ent"}, \
                f"{path.name} names a collection itself"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_a_one_machine_backend_does_not_load_the_fleet():
    loaded = _loaded_after("import ingest.backend.arbiter, ingest.backend.intakes")
    assert not {m for m in loaded if m.startswith("ingest.backend.fleet")}
    assert not {m for m in loaded if m.startswith("google.cloud.pubsub")}


def test_the_fleet_is_a_seam_not_a_fork():
    """The fleet builds on the hub, the intake and the journal; the arbiter knows only intakes.build."""
    graph = _backend_imports()
    fleet = {m for m in graph if m.startswith("ingest.backend.fleet")}
    for module in fleet:
        assert "ingest.backend.arbiter" not in graph[module], module
    assert not graph["ingest.backend.arbiter"] & fleet
    assert not graph["ingest.backend.hub"] & fleet


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_the_health_file_is_the_only_link_between_a_backend_and_its_probe():
    """The backend writes facts (backend/health.py), the frontend judges them (web/backend_health.py)."""
    web = _loaded_after("import ingest.web.backend_health, ingest.web.server")
    assert not {m for m in web if m.startswith(("ingest.backend", "ingest.stores"))}
    backend = _loaded_after("import ingest.backend.health")
    assert not {m for m in backend if m.startswith("ingest.web")}


@pytest.mark.slow  # a fresh interpreter (or one per module): the fast tier keeps to one process
def test_the_dead_letters_command_loads_neither_spacy_nor_a_store_nor_the_web():
    """`ingestiond dead-letters` is an operator's tool: Pub/Sub and the message format, nothing else."""
    loaded = _loaded_after("import ingest.backend.fleet.deadletters")
    assert "spacy" not in loaded and not {m for m in loaded if m.startswith(("ingest.stores", "ingest.web"))}


def test_test_seams_are_read_in_one_documented_module():
    """Every INGEST_TEST_* variable is read in ingest/testing.py alone, each by a function that says what it does."""
    import inspect
    from pathlib import Path

    import ingest.testing as seams

    root = Path(ingest.__path__[0])
    elsewhere = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p != root / "testing.py" and "INGEST_TEST_" in p.read_text()]
    assert elsewhere == []
    variables = {value for name, value in vars(seams).items() if name.isupper()}
    readers = [f for f in vars(seams).values() if inspect.isfunction(f) and f.__module__ == seams.__name__]
    assert {f.__doc__.split(":", 1)[0] for f in readers} == variables and len(variables) >= 2


def test_exit_statuses_are_named():
    """No bare number leaves a process: sys.exit/os._exit/SystemExit and every `main` return an ExitCode."""
    import ast
    from pathlib import Path

    root = Path(ingest.__path__[0])
    bare = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "os._exit", "SystemExit"):
                values = node.args
            elif isinstance(node, ast.FunctionDef) and node.name == "main":
                values = [n.value for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None]
            else:
                continue
            bare += [f"{path.relative_to(root)}:{v.lineno}" for v in values
                     if isinstance(v, ast.Constant) and isinstance(v.value, int)]
    assert bare == []
