import os

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/spaCy load in this process
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Google's Firestore emulator, started once per session (skips loudly without Java or the jar)
from tests.firestore_emulator import firestore_emulator, firestore_project  # noqa: E402,F401


@pytest.fixture(scope="session")
def nlp():
    """The NER-only pipeline, loaded once per test session for recounts."""
    from ingest.backend.nlp import load_ner

    return load_ner()


@pytest.fixture(scope="session")
def recount(nlp):
    """recount(posts) -> {publication key: Aggregate}: the independent reference count."""
    from ingest.backend.nlp import recount as _recount

    return lambda posts: _recount(posts, nlp=nlp)


def pytest_collection_modifyitems(config, items):
    """Tests that need the Firestore emulator belong to the slow tier too (`pytest -m "not slow"`)."""
    for item in items:
        if item.get_closest_marker("firestore") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
