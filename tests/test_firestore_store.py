"""FirestoreStore against Google's Firestore emulator; chunk planning and error mapping without it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from ingest.core.models import Aggregate, Delta, EntityCount, merge
from ingest.core.rules import doc_id
from ingest.stores import open_store
from ingest.stores.base import PermanentStoreError, StoreError
from ingest.stores.firestore import FirestoreStore
from ingest.stores.firestore.common import MAX_WRITES, marker_base, translated
from ingest.stores.firestore.entities import EntityWrite, PublicationWrite, plan_chunks
from tests.firestore_emulator import stored
from tests.support import free_port

firestore = pytest.mark.firestore  # needs the emulator


def post(publication: str, *entity_lists: list[str]) -> Aggregate:
    """The aggregate of one article per entity list, as a worker would build it."""
    [total] = merge({}, (Aggregate.from_article(publication, entities) for entities in entity_lists)).values()
    return total


def delta(batch_id: str, *posts: Aggregate) -> Delta:
    return Delta.of(batch_id, posts)


def big_post(publication: str, n: int) -> Aggregate:
    return post(publication, [f"entity {i:04d}" for i in range(n)] + ["entity 0000"])


@pytest.fixture
def store(firestore_project):
    """The entities layout (the course's), whose documents these tests read directly."""
    s = FirestoreStore(project=firestore_project, timeout=10, layout="entities")
    yield s
    s.close()


@pytest.fixture(params=["entities", "packed"])
def any_store(request, firestore_project):
    """Either layout: the read API must answer the same from both."""
    s = FirestoreStore(project=firestore_project, timeout=10, layout=request.param)
    yield s
    s.close()


# -- planning (no emulator) ------------------------------------------------

def test_plan_splits_deterministically_within_the_commit_limit():
    a, b = big_post("Zeta News", 700), big_post("alpha times", 300)
    chunks = plan_chunks(delta("batch-7", a, b))
    again = plan_chunks(delta("batch-7", b, a))  # another insertion order, same plan
    assert chunks == again
    assert [c.marker_id for c in chunks] == ["batch-7-0", "batch-7-1", "batch-7-2"]
    assert all(1 <= len(c.writes) <= MAX_WRITES - 1 for c in chunks)
    writes = [w for c in chunks for w in c.writes]
    assert writes[:2] == [PublicationWrite("alpha times", "alpha times", 1, 301),
                          PublicationWrite("zeta news", "Zeta News", 1, 701)]
    ents = [(w.pub_key, w.entity) for w in writes[2:]]
    assert ents == sorted(ents) and len(set(ents)) == 1000
    assert EntityWrite("alpha times", "entity 0000", 2, 1) in writes


def test_plan_exactly_full_chunk_and_small_limit():
    one = plan_chunks(delta("b", big_post("p", MAX_WRITES - 2)))  # 1 publication + 498 entities
    assert len(one) == 1 and len(one[0].writes) == MAX_WRITES - 1
    two = plan_chunks(delta("b", big_post("p", MAX_WRITES - 1)))
    assert [len(c.writes) for c in two] == [MAX_WRITES - 1, 1]
    small = plan_chunks(delta("b", big_post("p", 4)), max_writes=3)
    assert [len(c.writes) for c in small] == [2, 2, 1]
    assert plan_chunks(Delta("empty")) == []


def test_marker_ids_are_valid_for_any_batch_id():
    assert marker_base("saver-3-17") == "saver-3-17"
    for weird in ("a/b", "..", "__x__", "", "é" * 300):
        base = marker_base(weird)
        assert "/" not in base and not base.startswith("__") and len(base) < 100
        assert base == marker_base(weird)
    assert marker_base("a/b") != marker_base("a_b")


def test_google_errors_map_to_store_errors():
    from google.api_core import exceptions as gexc

    for exc, expected in [(gexc.ServiceUnavailable("x"), StoreError), (gexc.DeadlineExceeded("x"), StoreError),
                          (gexc.Aborted("x"), StoreError), (gexc.ResourceExhausted("x"), StoreError),
                          (gexc.InternalServerError("x"), StoreError), (ConnectionResetError(), StoreError),
                          (gexc.InvalidArgument("x"), PermanentStoreError),
                          (gexc.PermissionDenied("x"), PermanentStoreError)]:
        with pytest.raises(expected):
            with translated("test"):
                raise exc
    with pytest.raises(KeyError):  # our own bugs are not disguised as store errors
        with translated("test"):
            raise KeyError("x")


def test_open_store_and_pickle_make_no_client(monkeypatch):
    import pickle

    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    s = open_store("firestore://my-proj")
    assert isinstance(s, FirestoreStore) and s.project == "my-proj" and s.conn.pid is None
    assert pickle.loads(pickle.dumps(s)).project == "my-proj"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-proj")
    assert open_store("firestore").project == "env-proj"


# -- against the emulator --------------------------------------------------

@firestore
def test_apply_writes_the_documented_layout(store, firestore_project):
    d = delta("b1", post("BBC  News", ["london", "may", "london"], ["london"]), post("cnn", ["usa"]))
    assert store.apply(d) == 2 + 3 + 1  # two publications, three entities, one marker
    docs = stored(firestore_project)
    assert set(docs) == {doc_id("bbc news"), doc_id("cnn")}
    bbc = docs[doc_id("bbc news")]
    assert bbc["doc"] == {"name": "BBC  News", "key": "bbc news", "count": 2, "mentions": 4}
    assert bbc["ent"] == {doc_id("london"): {"word": "london", "count": 3, "articles": 2},
                          doc_id("may"): {"word": "may", "count": 1, "articles": 1}}
    assert docs[doc_id("cnn")]["ent"] == {doc_id("usa"): {"word": "usa", "count": 1, "articles": 1}}

    from google.cloud import firestore

    marker = firestore.Client(project=firestore_project).collection("ingest_batches").document("b1-0").get()
    expires = marker.get("expires_at")
    # outlives any journal replay
    assert timedelta(days=29) < expires - datetime.now(timezone.utc) <= timedelta(days=30)


@firestore
def test_second_apply_of_a_batch_changes_nothing(store, firestore_project):
    d = delta("b1", post("bbc", ["london"]))
    assert store.apply(d) == 3
    before = stored(firestore_project)
    assert store.apply(d) == 0
    assert FirestoreStore(project=firestore_project).apply(d) == 0  # another process, same answer
    assert stored(firestore_project) == before
    assert store.apply(delta("b2", post("bbc", ["london"]))) == 3
    assert store.entities("bbc") == [EntityCount(entity="london", mentions=2, articles=2)]


@firestore
def test_delta_over_the_commit_limit_is_split_and_applied_once(store, firestore_project):
    d = delta("big", big_post("alpha", 700), big_post("beta", 400))
    writes = 2 + 1100
    assert store.apply(d) == writes + 3  # three chunks, three markers
    assert store.apply(d) == 0
    assert store.commits == 3
    pubs = {p.publication: p for p in store.publications()}
    assert (pubs["alpha"].articles, pubs["alpha"].entities, pubs["alpha"].mentions) == (1, 700, 701)
    assert (pubs["beta"].articles, pubs["beta"].entities, pubs["beta"].mentions) == (1, 400, 401)
    top = store.entities("alpha", limit=2)
    assert top == [EntityCount(entity="entity 0000", mentions=2, articles=1),
                   EntityCount(entity="entity 0001", mentions=1, articles=1)]


@firestore
def test_partial_failure_then_retry_counts_everything_once(store, firestore_project):
    d = delta("part", big_post("alpha", 600), post("beta", ["x", "y"]))
    chunks = plan_chunks(d)
    assert len(chunks) == 2
    # the first attempt committed chunk 0 and died before chunk 1
    first = store.layout(record=True).commit_chunk(d.batch_id, chunks[0], len(chunks), {"alpha", "beta"})
    assert first == len(chunks[0].writes) + 1
    assert store.apply(d) == len(chunks[1].writes) + 1
    assert store.apply(d) == 0
    docs = stored(firestore_project)
    alpha = docs[doc_id("alpha")]
    assert alpha["doc"]["count"] == 1 and alpha["doc"]["mentions"] == 601
    assert len(alpha["ent"]) == 600
    assert sum(e["count"] for e in alpha["ent"].values()) == 601
    assert all(e["articles"] == 1 for e in alpha["ent"].values())
    assert docs[doc_id("beta")]["doc"]["count"] == 1


@firestore
def test_reads_are_sorted_and_paged(any_store):
    store = any_store
    store.apply(delta("b1", post("Small", ["a"]),
                      post("Big", ["zed", "zed", "bob"], ["bob", "amy"], ["amy", "carl"]),
                      post("Tie A", ["q"], ["q"]), post("tie b", ["r"], ["r"])))
    pubs = store.publications()
    assert [(p.publication, p.articles, p.entities, p.mentions) for p in pubs] == [
        ("Big", 3, 4, 7), ("Tie A", 2, 1, 2), ("tie b", 2, 1, 2), ("Small", 1, 1, 1)]
    everything = store.entities("  BIG ")
    assert [(e.entity, e.mentions, e.articles) for e in everything] == [
        ("amy", 2, 2), ("bob", 2, 2), ("zed", 2, 1), ("carl", 1, 1)]
    assert store.entities("big", limit=2, offset=1) == everything[1:3]
    assert store.entities("big", limit=10, offset=10) == []


@firestore
def test_unknown_publication_is_none(any_store):
    store = any_store
    assert store.publications() == []
    assert store.entities("nobody") is None
    store.apply(delta("b1", post("somebody", ["x"])))
    assert store.entities("nobody") is None
    assert store.entities("SOMEBODY") == [EntityCount(entity="x", mentions=1, articles=1)]


@firestore
def test_weird_keys_are_stored_and_read_back(any_store):
    store = any_store
    long_entity = "é" * 1000  # 2,000 UTF-8 bytes: beyond Firestore's id limit, fine as a field
    odd = ["..", "__x__", long_entity, "a/b", "a.b", "`tick`", "x\\y", "日本", "*", "__"]
    d = delta("a/b", post("a/b", odd), post("..", ["x"]), post("__x__", ["y"]))
    # entities: 3 publications + 12 entities + the marker; packed: 3 summaries + 3 shards + the marker
    assert store.apply(d) == (3 + 12 + 1 if store.requested_layout == "entities" else 3 + 3 + 1)
    assert store.apply(d) == 0
    assert {p.publication for p in store.publications()} == {"a/b", "..", "__x__"}
    assert {e.entity for e in store.entities("a/b")} == set(odd)
    again = FirestoreStore(project=store.project, layout=store.requested_layout, writer=store.writer)
    assert again.apply(delta("a/b 2", post("a/b", odd))) > 0  # a restarted writer reads its documents back
    assert {(e.entity, e.mentions) for e in again.entities("a/b")} == {(e, 2) for e in odd}
    again.close()
    assert store.entities("..") == [EntityCount(entity="x", mentions=1, articles=1)]
    assert store.entities("__x__") == [EntityCount(entity="y", mentions=1, articles=1)]


@firestore
def test_a_fresh_instance_updates_the_same_documents(firestore_project):
    first = FirestoreStore(project=firestore_project, layout="entities")
    first.apply(delta("s1-1", post("Reuters", ["paris"])))
    first.close()
    second = open_store(f"firestore://{firestore_project}")  # a restarted saver: the layout recorded
    assert second.apply(delta("s1-1", post("Reuters", ["paris"]))) == 0
    second.apply(delta("s2-1", post("REUTERS", ["paris", "rome"])))
    [summary] = second.publications()
    assert (summary.publication, summary.articles, summary.entities, summary.mentions) == ("Reuters", 2, 2, 3)
    assert second.entities("reuters")[0] == EntityCount(entity="paris", mentions=2, articles=2)
    assert len(stored(firestore_project)) == 1
    second.close()


@pytest.mark.slow
def test_unreachable_firestore_is_a_transient_error(monkeypatch):
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    s = FirestoreStore(project="nowhere", timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreError):
        s.apply(delta("b", post("p", ["x"])))
    with pytest.raises(StoreError):
        s.publications()
    assert time.monotonic() - started < 10
    s.close()


@firestore
def test_a_full_500_write_delta_is_one_commit(store, firestore_project):
    """499 increments + the marker fill one commit exactly; one more write would need a second."""
    d = delta("full", big_post("full", MAX_WRITES - 2))
    assert store.apply(d) == MAX_WRITES
    assert store.commits == 1
    docs = stored(firestore_project)
    assert len(docs[doc_id("full")]["ent"]) == MAX_WRITES - 2


# -- counting rules v2: labels and the rules record -------------------------

@firestore
def test_labels_are_kept_per_entity_and_read_as_the_majority(any_store):
    """Mentions per (entity, label) summed over batches; the row's label is the majority (ties: the
    alphabetically first), and `labels=` keeps only the entities whose majority label is one of them."""
    store = any_store
    store.apply(delta("b1", post("BBC", [("washington", "GPE"), ("washington", "PERSON"), ("nato", "ORG")]),
                      post("BBC", [("washington", "GPE"), ("paris", "GPE"), ("paris", "PERSON")])))
    rows = store.entities("bbc")
    assert [(r.entity, r.label, r.mentions, r.articles) for r in rows] == [
        ("washington", "GPE", 3, 2), ("paris", "GPE", 2, 1), ("nato", "ORG", 1, 1)]  # paris: a tie, GPE < PERSON
    store.apply(delta("b2", post("BBC", [("paris", "PERSON"), ("washington", "PERSON"), ("washington", "PERSON")])))
    assert {r.entity: r.label for r in store.entities("bbc")} == {"washington": "PERSON", "paris": "PERSON",
                                                                  "nato": "ORG"}
    assert [r.entity for r in store.entities("bbc", labels=frozenset({"ORG"}))] == ["nato"]
    assert [r.entity for r in store.entities("bbc", labels=frozenset({"ORG", "PERSON"}), limit=2)] == \
        ["washington", "paris"]
    assert [r.entity for r in store.entities("bbc", labels=frozenset({"ORG", "PERSON"}), limit=2, offset=1)] == \
        ["paris", "nato"]
    assert store.entities("bbc", labels=frozenset({"LAW"})) == []
    assert store.entities("nobody", labels=frozenset({"ORG"})) is None
    reader = FirestoreStore(project=store.project, writer="reader")  # another process: the layout recorded
    assert [(r.entity, r.label) for r in reader.entities("BBC", labels=frozenset({"ORG"}))] == [("nato", "ORG")]
    reader.close()


@firestore
def test_the_label_filter_pages_through_a_long_ranking(any_store):
    """A rare label far down a ranking of 1,500 entities: the filter reads on until the page is full."""
    store = any_store
    mentions = [(f"org {i:04d}", "ORG") for i in range(1500)] + [("rare law", "LAW")] * 1 + [("top law", "LAW")] * 3
    mentions += [(f"org {i:04d}", "ORG") for i in range(10)]  # the first ten rank above the rest
    store.apply(delta("b1", post("Gazette", mentions)))
    assert [(r.entity, r.mentions) for r in store.entities("gazette", labels=frozenset({"LAW"}))] == [
        ("top law", 3), ("rare law", 1)]
    assert [r.entity for r in store.entities("gazette", labels=frozenset({"LAW"}), offset=1)] == ["rare law"]
    orgs = store.entities("gazette", labels=frozenset({"ORG"}), limit=5, offset=1200)
    assert [r.entity for r in orgs] == [f"org {i:04d}" for i in range(1200, 1205)]
    everything = store.entities("gazette", limit=2000)
    assert [r for r in everything if r.label == "ORG"][1200:1205] == orgs


@firestore
def test_the_database_records_its_counting_rules_and_refuses_others(any_store):
    from ingest.stores.base import RulesRefused

    store = any_store
    store.check()
    store.claim_rules("v2+aliases:aaaa")
    store.claim_rules("v2+aliases:aaaa")  # the same rules again: fine
    store.apply(delta("b1", post("BBC", [("uk", "GPE")])))
    other = FirestoreStore(project=store.project, writer="other")
    with pytest.raises(RulesRefused, match=r"counting rules v2\+aliases:aaaa, this backend counts under v2;") as exc:
        other.claim_rules("v2")
    assert "\n" not in str(exc.value) and f"firestore://{store.project}" in str(exc.value)
    other.close()


@firestore
@pytest.mark.parametrize("layout", ["entities", "packed"])
def test_a_database_with_counts_and_no_rules_record_was_made_under_v1_and_is_refused(firestore_project, layout):
    """A database written before rules v2 (counts, no `ingest_meta/rules`): refused, in one line; a
    frontend still reads it (no labels to show or match); an empty database takes the first rules."""
    from ingest.stores.base import RulesRefused

    old = FirestoreStore(project=firestore_project, layout=layout)
    old.apply(delta("v1-batch", post("BBC", ["donald trump's", "donald trump's"])))  # v1 keys, no labels
    old.close()
    reader = FirestoreStore(project=firestore_project)
    assert [(r.entity, r.label, r.mentions) for r in reader.entities("bbc")] == [("donald trump's", "", 2)]
    assert reader.entities("bbc", labels=frozenset({"PERSON"})) == []
    with pytest.raises(RulesRefused, match="counting rules v1, this backend counts under v2") as exc:
        reader.claim_rules("v2")
    assert "\n" not in str(exc.value)
    reader.close()

    from google.cloud import firestore as gfs

    assert not gfs.Client(project=firestore_project).collection("ingest_meta").document("rules").get().exists
    fresh = FirestoreStore(project=firestore_project + "-new", layout=layout)
    fresh.claim_rules("v2")  # nothing stored yet: it takes the rules it is first written with
    assert gfs.Client(project=firestore_project + "-new").collection("ingest_meta").document("rules").get() \
        .get("rules") == "v2"
    fresh.close()
