"""The real `ingestiond --store firestore://PROJECT` against the emulator: counts equal a recount,
across a SIGTERM drain and a restart that must update the same documents."""

from __future__ import annotations

import signal

import pytest

from ingest.core.rules import doc_id
from ingest.stores.firestore import FirestoreStore
from tests.corpus import articles
from tests.firestore_emulator import stored, stored_packed
from tests.support import start_backend

pytestmark = [pytest.mark.firestore, pytest.mark.slow]


def _run_backend(tmp_path, emulator, project, first, rest, layout):
    """One life of the backend: `first` is settled while it runs, `rest` is left for the SIGTERM drain."""
    tmp_path.mkdir(exist_ok=True)
    backend = start_backend(tmp_path, "--workers", "1", "--savers", "2", "--flush-interval", "0.5",
                            store_url=f"firestore://{project}?layout={layout}", env={"FIRESTORE_EMULATOR_HOST": emulator})
    try:
        backend.client.put_many(first)
        backend.wait_idle()
        backend.client.put_many(rest)
    finally:
        code = backend.stop(signal.SIGTERM)
    assert code == 0, backend.log()
    assert "draining" in backend.log()


@pytest.mark.parametrize("layout", ["entities", "packed"])
def test_backend_counts_in_firestore_equal_a_recount_across_a_restart(tmp_path, firestore_emulator,
                                                                      firestore_project, recount, layout):
    posts, later = articles(40, seed=11), articles(20, seed=12)
    _run_backend(tmp_path / "one", firestore_emulator, firestore_project, posts[:25], posts[25:], layout)
    _run_backend(tmp_path / "one", firestore_emulator, firestore_project, later[:5], later[5:], layout)

    expected = recount(posts + later)
    if layout == "entities":
        # one document per publication key, at its stable id: the restart updated, never duplicated
        assert sorted(stored(firestore_project)) == sorted(doc_id(key) for key in expected)
    else:
        # per publication, one summary per saver (writer ids outlive the restart: the same journal) and shards
        docs = stored_packed(firestore_project)
        assert sorted(docs) == sorted(doc_id(key) for key in expected)
        writers = {w for d in docs.values() for w in d["sums"]}
        assert len(writers) <= 2 and all(w.endswith(("-0", "-1")) for w in writers), writers
        for d in docs.values():
            assert all(s["writer"] == w for w, s in d["sums"].items())
            assert all(shard_id.startswith(s["writer"] + "-") for shard_id, s in d["shards"].items())

    store = FirestoreStore(project=firestore_project)
    try:
        summaries = sorted((" ".join(p.publication.lower().split()), p.articles, p.entities, p.mentions)
                           for p in store.publications())
        assert summaries == sorted((k, e.articles, len(e.mentions), e.total_mentions) for k, e in expected.items())
        for key, want in expected.items():
            got = store.entities(key, limit=1000)
            assert sorted((e.entity, e.mentions, e.articles) for e in got) == sorted(
                (ent, want.mentions[ent], want.entity_articles[ent]) for ent in want.mentions)
    finally:
        store.close()
