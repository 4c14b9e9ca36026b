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
                            store_url=f"firestore://{project}?layout={layout}",
                            env={"FIRESTORE_EMULATOR_HOST": emulator})
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


def test_three_backends_on_one_database_own_their_documents_and_write_each_at_most_once_per_interval(
        tmp_path, firestore_emulator, firestore_project, recount):
    """The packed layout's promise to a fleet: no document is written by two backends (no contention),
    and none more than once per flush interval (Firestore sustains about one write a second per
    document). Every commit is logged by the store (INGEST_TEST_WRITE_LOG) with when it started."""
    import json
    import time

    from tests.support import assert_store_equals_recount

    interval = 1.0
    log = tmp_path / "writes.jsonl"
    url = f"firestore://{firestore_project}?layout=packed"
    env = {"FIRESTORE_EMULATOR_HOST": firestore_emulator, "INGEST_TEST_WRITE_LOG": str(log)}
    posts = articles(150, seed=21)
    backends = []
    try:
        for i in range(3):
            (tmp_path / f"b{i}").mkdir()
            backends.append(start_backend(tmp_path / f"b{i}", "--workers", "1", "--flush-interval", str(interval),
                                          "--cache-size", "8", store_url=url, env=env))
        for start in range(0, len(posts), 10):  # the fleet shares the stream: every backend sees every outlet
            for i, backend in enumerate(backends):
                chunk = posts[start:start + 10][i::3]
                if chunk:
                    backend.client.put_many(chunk)
            time.sleep(0.1)
        for backend in backends:
            backend.wait_idle(180)
    finally:
        codes = [b.stop() for b in backends]
    assert codes == [0, 0, 0], [b.log()[-2000:] for b in backends]
    assert_store_equals_recount(url, posts, recount)

    commits = [json.loads(line) for line in log.read_text().splitlines()]
    writers: dict[str, set] = {}
    times: dict[str, list] = {}
    for c in commits:
        for path in c["docs"]:
            writers.setdefault(path, set()).add(c["writer"].rsplit("-", 1)[0])  # the backend, not the saver slot
            times.setdefault(path, []).append(c["started"])
    assert len({c["writer"] for c in commits}) == 3
    shared = {p: w for p, w in writers.items() if len(w) > 1}
    assert not shared, f"documents written by more than one backend: {shared}"
    gaps = [b - a for t in times.values() for a, b in zip(sorted(t), sorted(t)[1:], strict=False)]
    assert gaps, "some document must have been written twice for this to prove anything"
    # the arbiter hands a saver a batch at most once per interval; the commit starts after the saver
    # has planned it (the first one reads its documents first): allow that much jitter, no more
    assert min(gaps) >= interval - 0.25, f"a document written twice within {min(gaps):.2f}s"
    print(f"{len(commits)} commits, {len(writers)} documents, {len(gaps)} rewrites, shortest gap {min(gaps):.2f}s")


@pytest.mark.parametrize("layout", ["entities", "packed"])
def test_counts_over_http_and_straight_from_firestore_equal_a_recount(tmp_path, firestore_emulator, firestore_project,
                                                                       recount, layout):
    """POSTed over HTTP, read back over HTTP (publications, every entity page) and from the documents
    themselves (tests/firestore_emulator.firestore_counts): the same as an independent recount."""
    from urllib.parse import quote

    import httpx

    from ingest.core.rules import publication_key
    from tests.firestore_emulator import firestore_counts
    from tests.frontend_support import start_frontend
    from tests.support import expected_counts

    posts = articles(60, seed=31) + [("  the DAILY planet ", "Angela Merkel met Barack Obama in Paris.")]
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.5",
                            store_url=f"firestore://{firestore_project}?layout={layout}")
    try:
        frontend = start_frontend(tmp_path, backend.env)
        try:
            with httpx.Client(base_url=frontend.url, headers={"X-API-Key": frontend.api_key}, timeout=30) as http:
                for i in range(0, len(posts), 20):
                    r = http.post("/posts", json=[{"publication": p, "content": c} for p, c in posts[i:i + 20]])
                    assert r.status_code == 202
                backend.wait_idle(180)
                over_http = {}
                for row in http.get("/publications").json():
                    name = quote(row["publication"], safe="")
                    entities = [e for off in range(0, row["entities"] + 7, 7)
                                for e in http.get(f"/publications/{name}/entities?limit=7&offset={off}").json()]
                    assert len(entities) == row["entities"]
                    assert entities == sorted(entities, key=lambda e: (-e["mentions"], e["entity"]))
                    over_http[publication_key(row["publication"])] = (
                        row["articles"], {e["entity"]: (e["mentions"], e["articles"], e["label"]) for e in entities})
                    people = http.get(f"/publications/{name}/entities?label=person&limit=1000").json()
                    assert people == [e for e in entities if e["label"] == "PERSON"]
                    places = [e for off in range(0, row["entities"], 3)
                              for e in http.get(f"/publications/{name}/entities?label=GPE,LOC&limit=3&offset={off}")
                              .json()]
                    assert places == [e for e in entities if e["label"] in ("GPE", "LOC")]
                people_anywhere = sum(len(e) for e in (http.get(f"/publications/{quote(r['publication'], safe='')}"
                                                                "/entities?label=PERSON").json()
                                                       for r in http.get("/publications").json()))
                assert people_anywhere > 0, "no PERSON at all: the label filter proves nothing"
        finally:
            assert frontend.stop() == 0
    finally:
        assert backend.stop() == 0
    expected = expected_counts(recount, posts)
    assert over_http == expected
    assert firestore_counts(firestore_project) == expected


@pytest.mark.parametrize("layout", ["entities", "packed"])
def test_a_database_written_under_rules_v1_is_refused_with_one_line(tmp_path, firestore_emulator, firestore_project,
                                                                    layout):
    """Counts and no rules record (a database from before rules v2): the backend stops at boot, exit 3,
    one line naming both rules, and writes nothing."""
    from ingest.core.models import Aggregate, Delta
    from tests.firestore_emulator import firestore_counts

    old = FirestoreStore(project=firestore_project, layout=layout)
    old.apply(Delta.of("v1", [Aggregate.from_article("BBC", ["donald trump's"])]))  # as a v1 saver did
    old.close()
    before = firestore_counts(firestore_project)
    backend = start_backend(tmp_path, "--workers", "1", store_url=f"firestore://{firestore_project}",
                            env={"FIRESTORE_EMULATOR_HOST": firestore_emulator}, wait_ready=False)
    assert backend.proc.wait(120) == 3
    lines = [line for line in backend.log().splitlines() if "counting rules v1" in line]
    assert lines and "this backend counts under v2;" in lines[0] and "Traceback" not in backend.log()
    assert f"firestore://{firestore_project}" in lines[0]
    assert firestore_counts(firestore_project) == before


def test_counts_per_day_in_the_packed_layout_equal_a_recount_over_http_across_a_sigkill(
        tmp_path, firestore_emulator, firestore_project, recount):
    """Articles over 60 days (some without `published`, some late for an old day), the backend SIGKILLed
    after some were accepted: each day's counts over HTTP and from the store equal a recount, and their
    sum is the all-time list. The entities layout answers the same reads with a 409."""
    from tests.frontend_support import start_frontend
    from tests.support import kill_backend_group
    from tests.test_attention import assert_days_equal_a_recount, dated_posts

    posts = dated_posts(100, seed=23)
    early, late = posts[:80], posts[80:]
    for p in late:
        p["published"] = "2017-01-02"
    store_url = f"firestore://{firestore_project}?layout=packed"
    env = {"FIRESTORE_EMULATOR_HOST": firestore_emulator}
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "5", store_url=store_url, env=env)
    frontend = start_frontend(tmp_path, backend.env)
    key = {"X-API-Key": frontend.api_key}
    try:
        with frontend.client() as http:
            for start in range(0, 40, 20):
                assert http.post("/posts", json=early[start:start + 20], headers=key).status_code == 202
            kill_backend_group(backend)
            backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.2", store_url=store_url,
                                    env=env, port=backend.address[1], authkey=backend.authkey)
            for start in range(40, 80, 20):
                assert http.post("/posts", json=early[start:start + 20], headers=key).status_code == 202
            for p in late:
                assert http.post("/post/enqueue", json=p, headers=key).status_code == 202
            backend.wait_idle()
            days = assert_days_equal_a_recount(http, store_url, posts, recount)
            assert len(days) > 30
    finally:
        frontend.stop()
        assert backend.stop() == 0, backend.log()[-3000:]


def test_the_entities_layout_answers_the_time_reads_with_409(tmp_path, firestore_emulator, firestore_project):
    from tests.frontend_support import start_frontend

    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.2",
                            store_url=f"firestore://{firestore_project}?layout=entities",
                            env={"FIRESTORE_EMULATOR_HOST": firestore_emulator})
    frontend = start_frontend(tmp_path, backend.env)
    key = {"X-API-Key": frontend.api_key}
    try:
        with frontend.client() as http:
            post = {"publication": "BBC", "content": "Angela Merkel met Barack Obama in Paris.",
                    "published": "2017-01-01"}
            assert http.post("/posts", json=[post], headers=key).status_code == 202
            backend.wait_idle()
            for path in ("/publications/bbc/days", "/publications/bbc/entities?since=2017-01-01", "/entities",
                         "/rising", "/publications/bbc/rising", "/publications/bbc/entities/paris/days"):
                r = http.get(path, headers=key)
                assert r.status_code == 409 and r.json()["error"] == "not_in_this_layout", (path, r.text)
            assert "paris" in [e["entity"] for e in http.get("/publications/bbc/entities", headers=key).json()]
    finally:
        frontend.stop()
        assert backend.stop() == 0
