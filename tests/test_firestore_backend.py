"""The real `ingestiond --store firestore://PROJECT` against the emulator: counts equal a recount."""

from __future__ import annotations

import signal

import pytest

from ingest.stores.firestore import FirestoreStore
from tests.corpus import articles
from tests.support import start_backend

pytestmark = [pytest.mark.firestore, pytest.mark.slow]


def test_backend_counts_in_firestore_equal_a_recount(tmp_path, firestore_emulator, firestore_project, recount):
    posts = articles(40, seed=11)
    backend = start_backend(tmp_path, "--workers", "1", "--savers", "2", "--flush-interval", "0.5",
                            store_url=f"firestore://{firestore_project}",
                            env={"FIRESTORE_EMULATOR_HOST": firestore_emulator})
    try:
        backend.client.put_many(posts[:25])
        backend.wait_idle()
        backend.client.put_many(posts[25:])  # the rest is drained by SIGTERM
    finally:
        code = backend.stop(signal.SIGTERM)
    assert code == 0, backend.log()

    expected = recount(posts)
    store = FirestoreStore(project=firestore_project)
    try:
        stored = {(p.publication.lower(), p.articles, p.entities, p.mentions) for p in store.publications()}
        assert {(k, e.articles, len(e.mentions), e.total_mentions) for k, e in expected.items()} == {
            (" ".join(name.split()), a, n, m) for name, a, n, m in stored}
        for key, want in expected.items():
            got = store.entities(key, limit=1000)
            assert {(e.entity, e.mentions, e.articles) for e in got} == {
                (ent, want.mentions[ent], want.entity_articles[ent]) for ent in want.mentions}
    finally:
        store.close()
