import os
import signal

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/spaCy load in this process
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests send Ctrl-C (SIGINT) to programs they start: ingest-load, run.sh's shell. A test run started
# as a background job inherits SIGINT *ignored*, and an ignored signal stays ignored across exec:
# Python then installs no KeyboardInterrupt and bash cannot trap INT, so the interrupt did nothing
# (a clean-clone run in the background saw `ingest-load` finish with 0 instead of 130). A handler
# (not SIG_IGN) here makes every child start with the default disposition, as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Google's Firestore emulator, started once per session (skips loudly without Java or the jar)
from tests.firestore_emulator import firestore_emulator, firestore_project  # noqa: E402,F401
# Google's Pub/Sub emulator, likewise (fixtures here, not imported by test modules: an imported fixture
# is a parameter that shadows its import, and a session fixture imported by a module starts once per module)
from tests.pubsub_emulator import pubsub_emulator, pubsub_topic  # noqa: E402,F401


@pytest.fixture(scope="session")
def nlp():
    """The NER-only pipeline, loaded once per test session for recounts."""
    from ingest.backend.nlp import load_ner

    return load_ner()


@pytest.fixture(scope="session")
def recount(nlp):
    """recount(posts, aliases=None) -> {publication key: Aggregate}: the independent reference count,
    under counting rules v2 (labels per entity in each Aggregate's `labels`)."""
    from ingest.backend.nlp import recount as _recount

    return lambda posts, aliases=None: _recount(posts, nlp=nlp, aliases=aliases)


EMULATOR_FIXTURES = frozenset({"firestore_emulator", "firestore_project", "pubsub_emulator", "pubsub_topic"})


def pytest_collection_modifyitems(config, items):
    """Tests that need an emulator belong to the slow tier (`pytest -m "not slow"` starts none): those
    marked `firestore`, and any that asks for an emulator's fixture."""
    for item in items:
        needs_emulator = item.get_closest_marker("firestore") or EMULATOR_FIXTURES & set(item.fixturenames)
        if needs_emulator and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
