"""The packed Firestore layout: planning without the emulator; writes, exactly once, stale writers,
several writers and the layout record against it."""

from __future__ import annotations

import pytest

from ingest.core.models import Aggregate, Delta, EntityCount, merge
from ingest.core.rules import doc_id
from ingest.stores import open_store
from ingest.stores.base import PermanentStoreError, StoreError
from ingest.stores.firestore import FirestoreStore
from ingest.stores.firestore.common import marker_base
from ingest.stores.firestore.packed import MAX_SHARDS, PART_ENTITIES, SHARD_ENTITIES, plan, slot
from tests.firestore_emulator import stored_packed

firestore = pytest.mark.firestore


def post(publication: str, *entity_lists: list[str]) -> Aggregate:
    [total] = merge({}, (Aggregate.from_article(publication, entities) for entities in entity_lists)).values()
    return total


def wide(publication: str, n: int, start: int = 0) -> Aggregate:
    return post(publication, [f"entity {i:06d}" for i in range(start, start + n)])


def delta(batch_id: str, *posts: Aggregate) -> Delta:
    return Delta.of(batch_id, posts)


def packed(project: str, writer: str = "w1", **kw) -> FirestoreStore:
    return FirestoreStore(project=project, timeout=10, layout="packed", writer=writer, **kw)


def counts(store: FirestoreStore, publication: str) -> dict:
    return {e.entity: (e.mentions, e.articles) for e in store.entities(publication, limit=10**6)}


# -- planning (no emulator) ------------------------------------------------

def test_the_plan_depends_on_the_delta_alone_and_keeps_each_commit_in_bounds():
    big, small = wide("Big", 2 * PART_ENTITIES + 5), post("small", ["x"])
    chunks = plan(delta("b", big, small), 500, marker_base)
    assert chunks == plan(delta("b", small, big), 500, marker_base)
    assert [c.marker_id for c in chunks] == ["b-0", "b-1"]
    assert [[(p.key, p.index, len(p.entities)) for p in c.parts] for c in chunks] == [
        [("big", 0, PART_ENTITIES)], [("big", 1, PART_ENTITIES), ("big", 2, 5), ("small", 0, 1)]]
    # a commit's documents: at most one summary and one shard per entity of each part, plus the marker
    for c in chunks:
        assert 1 + sum(1 + min(len(p.entities), MAX_SHARDS) for p in c.parts) <= 500


def test_a_batch_over_many_days_is_planned_in_day_parts_that_each_fit_a_commit():
    """A backfill: one publication's articles over 400 days, another's over 2. Day parts come after every
    entity part (a plan recorded before day documents existed indexes the same entity parts) and no part
    can need more than DAY_PART_DOCS day documents, so every commit fits 500 writes even at worst."""
    from datetime import date, timedelta

    from ingest.stores.firestore.packed import DAY_PART_DOCS, units, worst

    days = [(date(2016, 1, 1) + timedelta(n)).isoformat() for n in range(400)]
    long = merge({}, [Aggregate.from_article("Long", [f"e{n % 7}", "x"], d) for n, d in enumerate(days)])["long"]
    short = merge({}, [Aggregate.from_article("Short", ["y"], d) for d in days[:2]])["short"]
    parts = units(delta("b", long, short))
    assert [(p.key, p.index, bool(p.entities), len(p.days)) for p in parts][:2] == [("long", 0, True, 0),
                                                                                   ("short", 0, True, 0)]
    day_parts = parts[2:]
    assert sorted(d for p in day_parts for d, _ in p.days) == sorted(days + days[:2])
    assert all(worst(p)[0] <= 1 + DAY_PART_DOCS for p in day_parts) and len(day_parts) > 1
    chunks = plan(delta("b", short, long), 500, marker_base)
    assert chunks == plan(delta("b", long, short), 500, marker_base)
    assert all(1 + sum(worst(p)[0] for p in c.parts) <= 500 for c in chunks)


def test_entity_names_that_cannot_be_map_keys_are_keyed_by_their_digest():
    assert slot("Angela Merkel") == ("e", "Angela Merkel")
    assert slot("a.b`c") == ("e", "a.b`c")
    assert slot("__x__") == ("h", doc_id("__x__"))
    assert slot("é" * 600) == ("h", doc_id("é" * 600))  # 1,200 bytes


def test_a_layout_the_url_does_not_know_is_a_clear_error():
    from ingest.stores import StoreURLError

    with pytest.raises(StoreURLError, match="layout='flat'"):
        open_store("firestore://p?layout=flat")
    assert open_store("firestore://p?layout=entities").requested_layout == "entities"
    assert open_store("firestore://p").requested_layout is None and open_store("firestore://p").project == "p"


# -- against the emulator --------------------------------------------------

@firestore
def test_a_flush_is_one_write_per_publication_summary_and_touched_shard(firestore_project):
    store = packed(firestore_project)
    d = delta("b1", post("BBC", ["london", "may", "london"], ["london"]), post("CNN", ["usa"], ["usa", "ohio"]))
    assert store.apply(d) == 2 + 2 + 1  # two summaries, two shards, one marker
    docs = stored_packed(firestore_project)
    bbc = docs[doc_id("bbc")]
    assert bbc["sums"]["w1"] | {"first_at": None, "changed_at": None} == {
        "key": "bbc", "name": "BBC", "writer": "w1", "articles": 2, "mentions": 4, "entities": 2, "shards": 1,
        "sv": {"0": 1}, "version": 1, "first_at": None, "changed_at": None, "clock": "commit"}
    assert bbc["shards"]["w1-0"]["e"] == {"london": {"m": 3, "a": 2}, "may": {"m": 1, "a": 1}}
    assert store.apply(d) == 0, "a batch applied before changes nothing"
    assert stored_packed(firestore_project) == docs
    assert store.apply(delta("b2", post("bbc", ["london"]))) == 1 + 1 + 1
    assert counts(store, "BBC") == {"london": (4, 3), "may": (1, 1)}
    [cnn, bbc_row] = sorted(store.publications(), key=lambda p: p.publication)[::-1]
    assert (bbc_row.publication, bbc_row.articles, bbc_row.entities, bbc_row.mentions) == ("BBC", 3, 2, 5)


@firestore
def test_many_entities_fill_several_shards_and_a_restarted_writer_goes_on_where_it_was(firestore_project):
    store = packed(firestore_project)
    n = PART_ENTITIES + SHARD_ENTITIES + 10
    writes = store.apply(delta("wide", wide("Wide", n)))
    shards = -(-n // SHARD_ENTITIES)
    # one commit (planned from what the writer knows: a new publication touches only new shards)
    assert shards == 7 and writes == 7 + 1 + 1
    docs = stored_packed(firestore_project)[doc_id("wide")]
    assert sorted(docs["shards"]) == sorted(f"w1-{i}" for i in range(shards))
    assert all(len(s["e"]) <= SHARD_ENTITIES for s in docs["shards"].values())
    assert docs["sums"]["w1"]["entities"] == n
    store.close()

    again = packed(firestore_project)  # a new process under the same writer: reads its documents back
    assert again.apply(delta("wide", wide("Wide", n))) == 0
    assert again.apply(delta("more", wide("Wide", 3, start=n - 1))) == 1 + 1 + 1  # the last shard, summary, marker
    got = counts(again, "wide")
    assert len(got) == n + 2 and got["entity %06d" % (n - 1)] == (2, 2) and got["entity %06d" % 0] == (1, 1)
    [summary] = again.publications()
    assert (summary.articles, summary.entities, summary.mentions) == (2, n + 2, n + 3)


@firestore
def test_a_commit_that_applied_chunk_0_then_died_is_finished_once(firestore_project):
    store = packed(firestore_project)
    d = delta("part", wide("Alpha", 2 * PART_ENTITIES + 3), post("Beta", ["x"]))
    chunks = plan(d, 500, marker_base)
    assert len(chunks) == 2
    store.layout(record=True).commit(d, chunks[0], len(chunks))  # the first attempt died after its first commit
    fresh = packed(firestore_project)                 # the retry, from another process
    fresh.apply(d)
    assert fresh.apply(d) == 0
    got = counts(fresh, "alpha")
    assert len(got) == 2 * PART_ENTITIES + 3 and set(got.values()) == {(1, 1)}
    assert [(p.publication, p.articles) for p in fresh.publications()] == [("Alpha", 1), ("Beta", 1)]


@firestore
def apply_dying_after_its_first_commit(monkeypatch, writer, d) -> None:
    """writer.apply(d) in a process that dies (SystemExit) right after the batch's first commit."""
    from ingest.stores.firestore.packed import PackedLayout

    real, calls = PackedLayout.commit, []

    def dies_after_one(self, *args, **kw):
        if calls:
            raise SystemExit("killed")
        calls.append(1)
        return real(self, *args, **kw)

    monkeypatch.setattr(PackedLayout, "commit", dies_after_one)
    with pytest.raises(SystemExit):
        writer.apply(d)
    monkeypatch.setattr(PackedLayout, "commit", real)


def test_a_batch_that_died_after_its_first_commit_is_finished_with_the_plan_in_that_commits_marker(
        firestore_project, monkeypatch):
    """The plan depends on what the writer knew, so it rides in the first commit's marker; a retry in
    a fresh process (which knows more: the first commit is stored) follows it."""
    writer = packed(firestore_project)
    d = delta("died", *(wide(f"Pub {i}", 300, start=i) for i in range(4)))   # 4 x (1 summary + 1 shard)

    monkeypatch.setattr(writer.conn, "max_writes", 5)  # two publications per commit
    apply_dying_after_its_first_commit(monkeypatch, writer, d)
    retry = packed(firestore_project, max_writes=5)
    from google.cloud import firestore as gfs

    assert gfs.Client(project=firestore_project).collection("ingest_batches").document("died-0").get().get(
        "plan") == [0, 2]
    assert retry.apply(d) == 2 + 2 + 1 and retry.apply(d) == 0
    assert [(p.publication, p.articles, p.entities) for p in retry.publications()] == [
        (f"Pub {i}", 1, 300) for i in range(4)]


@firestore
def test_a_writer_with_a_stale_picture_fails_then_reloads_and_counts_exactly(firestore_project):
    """Two processes under one writer name (a saver thought dead, still running): the second's commit
    would overwrite the first's numbers; the summary's update_time precondition refuses it."""
    first, second = packed(firestore_project), packed(firestore_project)
    first.apply(delta("a", post("Pub", ["x"])))
    second.apply(delta("b", post("Pub", ["x", "y"])))   # reads what `first` wrote, then writes
    with pytest.raises(StoreError, match="reloading"):
        first.apply(delta("c", post("Pub", ["x"])))     # its picture predates b
    first.apply(delta("c", post("Pub", ["x"])))         # the saver's retry
    assert counts(first, "pub") == {"x": (3, 3), "y": (1, 1)}
    [summary] = first.publications()
    assert (summary.articles, summary.entities, summary.mentions) == (3, 2, 4)


@firestore
def test_several_writers_are_summed_and_their_entities_merged_exactly(firestore_project, tmp_path, monkeypatch):
    log = tmp_path / "writes.jsonl"
    monkeypatch.setenv("INGEST_TEST_WRITE_LOG", str(log))
    stores = [packed(firestore_project, writer=f"w{i}") for i in range(3)]
    stores[0].apply(delta("0", post("Shared", ["a", "b"]), post("Only Zero", ["z"])))
    stores[1].apply(delta("1", post("shared", ["b", "c"], ["c"])))
    stores[2].apply(delta("2", post("SHARED", ["a"])))
    reader = FirestoreStore(project=firestore_project)  # the frontend: the layout from the record
    rows = {p.publication: (p.articles, p.entities, p.mentions) for p in reader.publications()}
    assert rows == {"Shared": (4, 3, 6), "Only Zero": (1, 1, 1)}
    assert reader.summary(" shared ").entities == 3
    assert reader.entities("shared") == [EntityCount(entity="a", mentions=2, articles=2),
                                         EntityCount(entity="b", mentions=2, articles=2),
                                         EntityCount(entity="c", mentions=2, articles=2)]
    assert reader.entities("shared", limit=1, offset=2) == [EntityCount(entity="c", mentions=2, articles=2)]
    assert counts(reader, "shared") == {"a": (2, 2), "b": (2, 2), "c": (2, 2)}
    stores[1].apply(delta("3", post("Shared", ["c"])))  # the reader re-reads only what changed
    assert counts(reader, "shared")["c"] == (3, 3)
    # the listing is re-read incrementally (summaries changed since the last look): it sees the change
    assert reader.layout().reads.listed_at is not None
    rows = {p.publication: (p.articles, p.entities, p.mentions) for p in reader.publications()}
    assert rows == {"Shared": (5, 3, 7), "Only Zero": (1, 1, 1)}
    import json

    owners: dict = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        for path in entry["docs"]:
            owners.setdefault(path, set()).add(entry["writer"])
    assert owners and all(len(w) == 1 for w in owners.values()), "no document is written by two writers"


@firestore
def test_a_database_keeps_its_layout_and_refuses_the_other(firestore_project):
    packed(firestore_project).apply(delta("p", post("Pub", ["x"])))
    entities = FirestoreStore(project=firestore_project, layout="entities")
    with pytest.raises(PermanentStoreError, match="'packed' layout.*layout=entities"):
        entities.apply(delta("e", post("Pub", ["x"])))
    with pytest.raises(PermanentStoreError):
        entities.check()
    assert [p.articles for p in FirestoreStore(project=firestore_project).publications()] == [1]


@firestore
def test_a_database_from_before_layouts_is_read_and_written_as_entities(firestore_project):
    from google.cloud import firestore as gfs

    db = gfs.Client(project=firestore_project)  # what the first round wrote: no layout record
    db.collection("publications").document(doc_id("old")).set({"key": "old", "name": "Old", "count": 1, "mentions": 1})
    db.collection("publications").document(doc_id("old")).collection("ent").document(doc_id("x")).set(
        {"word": "x", "count": 1, "articles": 1})
    store = FirestoreStore(project=firestore_project)
    assert store.layout_name() == "entities"
    store.apply(delta("n", post("old", ["x"])))
    assert store.entities("old") == [EntityCount(entity="x", mentions=2, articles=2)]
    assert db.collection("ingest_meta").document("layout").get().get("layout") == "entities"
    with pytest.raises(PermanentStoreError):
        FirestoreStore(project=firestore_project, layout="packed").apply(delta("q", post("old", ["x"])))


@firestore
def test_a_summary_created_by_a_second_live_process_is_an_error_not_an_applied_batch(firestore_project):
    """Two live processes under one writer name, both new to a publication: the second's `create` of
    the summary fails with AlreadyExists. That is not "this batch's marker exists": the batch is
    not applied, the saver is told to retry (StoreError), and the retry counts it once."""
    first, second = packed(firestore_project), packed(firestore_project)
    first.layout(record=True).load("pub"), second.layout(record=True).load("pub")  # both know of no summary yet
    first.apply(delta("a", post("Pub", ["x"])))
    with pytest.raises(StoreError, match="created by someone else"):
        second.apply(delta("b", post("Pub", ["y"])))
    from google.cloud import firestore as gfs

    assert not gfs.Client(project=firestore_project).collection("ingest_batches").document("b-0").get().exists
    assert second.apply(delta("b", post("Pub", ["y"]))) > 0   # the saver's retry
    assert second.apply(delta("b", post("Pub", ["y"]))) == 0
    assert counts(second, "pub") == {"x": (1, 1), "y": (1, 1)}
    assert [(p.articles, p.entities) for p in second.publications()] == [(2, 2)]


@firestore
def test_a_summary_conflict_in_commit_0_never_applies_the_later_commits_under_another_plan(firestore_project):
    """A multi-commit batch whose commit 0 fails on a summary's AlreadyExists: its marker 0 is missing,
    so nothing of the batch may be applied (before: the worst-case plan's commits 1.. were applied,
    and the replay under a fresh plan counted some of them again)."""
    d = delta("multi", *(wide(f"Pub {i}", 300, start=i) for i in range(4)))   # 2 publications per commit
    other, writer = packed(firestore_project), packed(firestore_project, max_writes=5)
    for i in range(4):
        writer.layout(record=True).load(f"pub {i}")  # new to all four
    other.apply(delta("o", post("Pub 0", ["zzz"])))    # a second process creates Pub 0's summary
    with pytest.raises(StoreError):
        writer.apply(d)
    from google.cloud import firestore as gfs

    markers = [s.id for s in gfs.Client(project=firestore_project).collection("ingest_batches").stream()]
    assert sorted(markers) == ["o-0"], "nothing of the batch is stored while its marker 0 is missing"
    writer.apply(d)
    assert writer.apply(d) == 0
    rows = {p.publication: (p.articles, p.entities, p.mentions) for p in writer.publications()}
    assert rows == {"Pub 0": (2, 301, 301), **{f"Pub {i}": (1, 300, 300) for i in range(1, 4)}}


@pytest.fixture
def commit_limit(monkeypatch):
    """Firestore refuses a commit of more than 500 writes; the emulator does not: enforce it here
    (`limit["n"]` lowers it, with the store's max_writes, to build the case with few documents)."""
    from google.api_core.exceptions import InvalidArgument
    from google.cloud.firestore_v1.batch import WriteBatch

    limit, real = {"n": 500, "largest": 0}, WriteBatch.commit

    def commit(self, *a, **kw):
        writes = len(self._write_pbs)
        limit["largest"] = max(limit["largest"], writes)
        if writes > limit["n"]:
            raise InvalidArgument(f"maximum {limit['n']} writes allowed per request (got {writes})")
        return real(self, *a, **kw)

    monkeypatch.setattr(WriteBatch, "commit", commit)
    return limit


@firestore
def test_a_replay_whose_shards_changed_stays_within_the_commit_limit(firestore_project, monkeypatch, commit_limit):
    """Commit 1 was planned to fit 5 writes; before the replay another batch spread its entities over
    more shards, so the recorded commit now needs 7. The replay splits it (before: 'a commit of 7
    writes' forever, with commit 0 applied) and counts everything once."""

    monkeypatch.setattr("ingest.stores.firestore.packed.SHARD_ENTITIES", 2)
    commit_limit["n"] = 5
    d = delta("spread", post("A", ["x1", "x2", "x3"]), post("P", ["p1", "p2"]), post("Q", ["q1", "q2"]))
    writer = packed(firestore_project, max_writes=5)
    apply_dying_after_its_first_commit(monkeypatch, writer, d)
    from google.cloud import firestore as gfs

    assert gfs.Client(project=firestore_project).collection("ingest_batches").document("spread-0").get().get(
        "plan") == [0, 1]                                  # A, then P and Q in one commit of 5
    between = packed(firestore_project, max_writes=5)      # a later batch places p1/p2 and q1/q2 apart
    between.apply(delta("between", post("P", ["m1", "p1", "p2"]), post("Q", ["m2", "q1", "q2"])))
    retry = packed(firestore_project, max_writes=5)
    retry.apply(d)
    assert retry.apply(d) == 0 and commit_limit["largest"] <= 5
    assert counts(retry, "p") == {"p1": (2, 2), "p2": (2, 2), "m1": (1, 1)}
    assert counts(retry, "q") == {"q1": (2, 2), "q2": (2, 2), "m2": (1, 1)}
    assert counts(retry, "a") == {"x1": (1, 1), "x2": (1, 1), "x3": (1, 1)}
    assert {p.publication: p.articles for p in retry.publications()} == {"A": 1, "P": 2, "Q": 2}


@firestore
def test_a_publication_past_max_shards_stops_only_itself(firestore_project, monkeypatch, commit_limit):
    monkeypatch.setattr("ingest.stores.firestore.packed.SHARD_ENTITIES", 1)
    monkeypatch.setattr("ingest.stores.firestore.packed.MAX_SHARDS", 2)
    store = packed(firestore_project)
    d = delta("big", post("Big", ["a", "b", "c"]), post("Small", ["x"]), post("Zed", ["y"]))
    with pytest.raises(PermanentStoreError, match="'big'") as refused:
        store.apply(d)
    assert getattr(refused.value, "keys", None) == ["big"]   # the saver can report which
    with pytest.raises(PermanentStoreError, match="'big'"):
        packed(firestore_project).apply(d)                 # a replay: the same answer, nothing counted twice
    assert {p.publication: (p.articles, p.entities) for p in store.publications()} == {"Small": (1, 1), "Zed": (1, 1)}
    store.apply(delta("next", post("Big", ["a", "b"])))    # within the limit: stored
    assert counts(store, "big") == {"a": (1, 1), "b": (1, 1)}


# -- a fleet's batches merging several Pub/Sub groups -----------------------------------------

def merged(batch_id: str, groups: tuple, *posts: Aggregate) -> Delta:
    d = Delta.of(batch_id, posts)
    d.groups = groups
    return d


@firestore
@pytest.mark.parametrize("layout", ["packed", "entities"])
def test_a_batch_merging_groups_is_one_commit_with_a_marker_each_and_refused_whole_on_any_recorded_group(
        firestore_project, layout):
    """Each group counts once whether committed merged or alone, by whichever writer: its marker is
    the one its batch of its own would create first. A merged batch needing two commits is refused
    before any write (the backend then sends its groups one by one)."""
    from ingest.stores.base import GroupsRefused

    a = FirestoreStore(project=firestore_project, timeout=10, layout=layout, writer="w1")
    b = FirestoreStore(project=firestore_project, timeout=10, layout=layout, writer="w2")
    try:
        first = merged("m1", ("g1", "g2"), post("BBC", ["uk"]), post("BBC", ["uk", "paris"]))
        writes = a.apply(first)
        assert a.commits == 1 and writes >= 3 + 1, "the batch's marker, a marker per group, the counts"
        assert b.apply(delta("g2", post("BBC", ["uk", "paris"]))) == 0, "g2 alone, elsewhere: already counted"
        with pytest.raises(GroupsRefused) as refused:
            b.apply(merged("m2", ("g3", "g1"), post("BBC", ["uk"]), post("BBC", ["rome"])))
        assert refused.value.groups == ["g1"]
        assert a.apply(first) == 0, "a retry of the merged batch itself changes nothing"
        assert b.apply(delta("g3", post("BBC", ["rome"]))) > 0
        small = FirestoreStore(project=firestore_project, timeout=10, layout=layout, writer="w3", max_writes=4)
        try:
            with pytest.raises(GroupsRefused) as too_big:
                small.apply(merged("m3", ("g4", "g5"), post("CNN", ["usa"]), post("CNN", ["texas"])))
            assert too_big.value.groups == [] and small.commits == 0
        finally:
            small.close()
        summary = a.summary("bbc")
        assert (summary.articles, summary.mentions) == (3, 4)
        assert {e.entity: e.mentions for e in a.entities("bbc")} == {"uk": 2, "paris": 1, "rome": 1}
    finally:
        a.close()
        b.close()


# -- Firestore's limits, which the emulator does not enforce --------------------------------------

MIB = 1024 * 1024
INDEX_ENTRIES = 40_000
EXEMPT = {"shards": {"e", "h"}, "sums": {"sv"}}  # deploy/firestore-indexes.sh: no index on these maps


def value_bytes(value) -> int:
    """A value's size in Firestore's storage accounting (cloud.google.com/firestore/docs/storage-size)."""
    if isinstance(value, str):
        return len(value.encode("utf-8")) + 1
    if isinstance(value, dict):
        return sum(len(k.encode("utf-8")) + 1 + value_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    if value is None or isinstance(value, bool):
        return 1
    return 8  # integers, floats, timestamps


def document_bytes(path: str, data: dict) -> int:
    return sum(len(part.encode("utf-8")) + 1 for part in path.split("/")) + 16 + value_bytes(data) + 32


def index_entries(data: dict, exempt: set) -> int:
    """Single-field index entries: two (ascending, descending) per indexed leaf, a map's leaves included."""
    def leaves(value):
        return sum(leaves(v) for v in value.values()) if isinstance(value, dict) and value else 1
    return sum(2 * leaves(v) for k, v in data.items() if k not in exempt)


def assert_within_firestore_limits(project: str) -> int:
    """Every document of the packed layout under 1 MiB and 40,000 index entries; the largest's size."""
    from google.cloud import firestore as gfs

    db, largest = gfs.Client(project=project), 0
    for group, exempt in EXEMPT.items():
        for snap in db.collection_group(group).stream():
            data = snap.to_dict()
            size = document_bytes(snap.reference.path, data)
            assert size <= MIB, f"{snap.reference.path}: {size:,} bytes, over Firestore's 1 MiB"
            assert index_entries(data, exempt) <= INDEX_ENTRIES, snap.reference.path
            largest = max(largest, size)
    db.close()
    return largest


def test_the_size_accounting_of_the_limit_check():
    assert value_bytes({"m": 3, "a": 1, "l": {"PERSON": 3}}) == (2 + 8) * 2 + 2 + 7 + 8
    assert document_bytes("pubs/p/shards/w-0", {}) == 5 + 2 + 7 + 4 + 16 + 32
    assert index_entries({"writer": "w", "e": {"x": {"m": 1, "a": 1}}, "n": 0}, {"e"}) == 4
    assert index_entries({"e": {"x": {"m": 1, "a": 1}}}, set()) == 4


@firestore
def test_labels_that_grow_after_an_entity_was_placed_never_take_a_shard_past_1_mib(firestore_project):
    """Long names fill a shard to its byte budget with one label each; then every entity gets twelve more
    labels. Without moving entities out, shard 0 would be ~1.04 MB (checked below); with it, every
    document stays under 1 MiB and the counts and labels still equal the sum of what was written."""
    names = [f"{i:05d} " + "x" * 134 for i in range(3000)]
    first = post("Wide", [(n, "PERSON") for n in names])
    more = post("Wide", [(n, f"LABEL_{j:02d}") for n in names for j in range(12)], [(n, "PERSON") for n in names[:5]])
    store = packed(firestore_project)
    store.apply(delta("b1", first))
    assert len(stored_packed(firestore_project)[doc_id("wide")]["shards"]) == 2  # 600 KB budget: the rest in 1
    unmoved = document_bytes("pubs/x/shards/w1-0", {"e": {n: {"m": 1, "a": 1, "l": {"PERSON": 1, **{
        f"LABEL_{j:02d}": 1 for j in range(12)}}} for n in names[:2970]}})
    assert unmoved > MIB, "the test would prove nothing: shard 0 would fit anyway"
    store.apply(delta("b2", more))
    assert assert_within_firestore_limits(firestore_project) <= MIB
    total = merge({}, [first.copy(), more.copy()])["wide"]
    want = {e: (total.mentions[e], total.entity_articles[e]) for e in total.mentions}
    assert counts(store, "wide") == want
    rows = store.entities("wide", limit=10**6)
    assert {r.entity for r in rows if r.label == "PERSON"} == set(names[:5])  # 2 PERSON against 1 of each
    assert {r.label for r in rows if r.entity not in names[:5]} == {"LABEL_00"}  # ties: the first name
    again = packed(firestore_project)  # a restarted writer reads its shards back (entities in one place each)
    again.apply(delta("b3", post("Wide", [(n, "ORG") for n in names[-3:]])))
    assert assert_within_firestore_limits(firestore_project) <= MIB
    assert sum(e[0] for e in counts(again, "wide").values()) == total.total_mentions + 3
    assert len(counts(again, "wide")) == 3000
    from tests.firestore_emulator import firestore_counts

    assert firestore_counts(firestore_project)["wide"][1] == {r.entity: (r.mentions, r.articles, r.label)
                                                              for r in again.entities("wide", limit=10**6)}
    again.close()
    store.close()


# -- per-day counts (CONTRACT.md, "Time") ----------------------------------------------------------

def dated(publication: str, day: str, *entity_lists) -> Aggregate:
    [total] = merge({}, (Aggregate.from_article(publication, entities, day) for entities in entity_lists)).values()
    return total


def spread(publication: str, n_days: int, seed: int = 5) -> list[Aggregate]:
    """Articles over `n_days` days from 2017-01-01: a few a day, entities from a small pool with labels."""
    import random
    from datetime import date, timedelta

    rng = random.Random(seed)
    out = []
    for _ in range(n_days * 3):
        day = (date(2017, 1, 1) + timedelta(days=rng.randrange(n_days))).isoformat()
        out.append(dated(publication, day, [(f"name {rng.randrange(40)}", rng.choice(["PERSON", "ORG"]))
                                            for _ in range(rng.randrange(1, 6))]))
    return out


def day_recount(posts: list[Aggregate]) -> dict:
    """{day: (articles, mentions, {entity: (mentions, articles)})} summed from the aggregates themselves."""
    from ingest.core.days import merge_days

    days: dict = {}
    for p in posts:
        merge_days(days, p.days)
    return {d: (c.articles, c.mentions, {e: tuple(r) for e, r in c.entities.items()}) for d, c in days.items()}


def store_per_day(store: FirestoreStore, publication: str, since: str, until: str) -> dict:
    from ingest.core.days import Window

    _, series = store.days(publication, Window(since, until))
    return {row["day"]: (row["articles"], row["mentions"],
                         {r["entity"]: (r["mentions"], r["articles"])
                          for r in store.entities_in(publication, Window(row["day"], row["day"]), 1000)})
            for row in series if row["articles"]}


@firestore
def test_counts_per_day_equal_a_recount_and_sum_to_the_all_time_counts(firestore_project):
    """Articles over 60 days from two writers, in batches, one replayed: each day's counts equal the
    recount, exactly once; their sum is the all-time list; a window sums its days."""
    from ingest.core.days import Window

    posts = spread("Daily Planet", 60)
    one, two = packed(firestore_project, "w1"), packed(firestore_project, "w2")
    for i in range(0, len(posts), 20):
        store = one if i % 40 == 0 else two
        store.apply(delta(f"b{i}", *posts[i:i + 20]))
    assert one.apply(delta("b0", *posts[0:20])) == 0  # a replay changes nothing
    want = day_recount(posts)
    assert store_per_day(one, "daily planet", "2017-01-01", "2017-03-01") == want
    summed: dict = {}
    for _, _, entities in want.values():
        for e, (m, a) in entities.items():
            summed[e] = (summed.get(e, (0, 0))[0] + m, summed.get(e, (0, 0))[1] + a)
    assert counts(one, "daily planet") == summed
    window = one.entities_in("Daily Planet", Window("2017-01-10", "2017-01-19"), limit=1000)
    in_window = {}
    for day, (_, _, entities) in want.items():
        if "2017-01-10" <= day <= "2017-01-19":
            for e, (m, a) in entities.items():
                in_window[e] = (in_window.get(e, (0, 0))[0] + m, in_window.get(e, (0, 0))[1] + a)
    assert {r["entity"]: (r["mentions"], r["articles"]) for r in window} == in_window
    labels = {r.entity: r.label for r in one.entities("daily planet", limit=1000)}
    assert all(r["label"] == labels[r["entity"]] and r["publications"] == 1 for r in window)
    closed, series = one.days("daily planet")  # default: the 30 days ending with the latest day with data
    assert closed.until == max(want) and len(series) == 30
    entity = window[0]["entity"]
    _, per_day = one.entity_days("daily planet", entity, Window("2017-01-01", "2017-03-01"))
    assert {r["day"]: (r["mentions"], r["articles"]) for r in per_day if r["articles"]} == {
        d: entities[entity] for d, (_, _, entities) in want.items() if entity in entities}
    assert one.days("nobody") is None and one.entities_in("nobody", Window()) is None
    one.close()
    two.close()


@firestore
def test_a_window_reads_one_document_per_writer_and_day(firestore_project):
    from ingest.core.days import Window

    store = packed(firestore_project)
    store.apply(delta("b1", *spread("Metro", 60)))
    reads = store.layout().reads
    before = reads.doc_reads
    _, series = store.days("metro", Window("2017-01-01", "2017-01-30"))
    days_with_data = sum(1 for row in series if row["articles"])
    assert reads.doc_reads - before == days_with_data + 1  # + the publication's one summary
    store.close()


@firestore
def test_time_reads_across_publications_and_rising(firestore_project):
    from ingest.core.days import Window

    store = packed(firestore_project)
    posts = []
    for n in range(14):
        day = f"2017-03-{n + 1:02d}"
        for k in range(4):
            names = [("angela merkel", "PERSON")] + ([("zelda fitzgerald", "PERSON")] if n >= 7 and k < 3 else [])
            posts.append(dated("The Daily", day, names))
        posts.append(dated("Other", day, [("angela merkel", "PERSON")]))
    store.apply(delta("b1", *posts))
    found = store.rising("the daily", 7, "2017-03-14")
    assert (found["articles_now"], found["articles_before"]) == (28, 28)
    assert [(r["entity"], r["articles_now"], r["articles_before"]) for r in found["rows"]] == [
        ("zelda fitzgerald", 21, 0)]
    assert store.rising(None, 7, None)["rows"][0]["entity"] == "zelda fitzgerald"
    assert store.rising("nobody", 7, None) is None
    top = store.top_entities()
    assert [(r["entity"], r["label"], r["mentions"], r["publications"]) for r in top] == [
        ("angela merkel", "PERSON", 70, 2), ("zelda fitzgerald", "PERSON", 21, 1)]
    anywhere = store.entities_in(None, Window("2017-03-01", "2017-03-07"))
    assert [(r["entity"], r["articles"], r["publications"]) for r in anywhere] == [("angela merkel", 35, 2)]
    assert store.top_entities(labels=frozenset({"ORG"})) == []
    store.close()


@firestore
def test_the_entities_layout_answers_time_reads_with_not_in_this_layout(firestore_project):
    from ingest.core.days import Window
    from ingest.stores.base import NotInThisLayout

    store = FirestoreStore(project=firestore_project, layout="entities")
    store.apply(delta("b1", dated("BBC", "2017-01-01", ["x"])))
    for read in (lambda: store.days("bbc"), lambda: store.entities_in("bbc", Window()), store.top_entities,
                 lambda: store.rising(None, 7, None), lambda: store.entity_days("bbc", "x")):
        with pytest.raises(NotInThisLayout, match="entities layout keeps no per-day counts"):
            read()
    store.close()


@firestore
def test_a_backfill_over_600_days_takes_several_commits_and_counts_once(firestore_project):
    from datetime import date, timedelta

    from ingest.core.days import Window

    days = [(date(2016, 1, 1) + timedelta(n)).isoformat() for n in range(600)]
    posts = [dated("Long", d, [f"e{n % 7}", "x"]) for n, d in enumerate(days)]
    store = packed(firestore_project)
    d = delta("backfill", *posts)
    assert store.apply(d) > 600 and store.commits >= 2
    assert store.apply(d) == 0
    again = packed(firestore_project)  # a restarted writer reads its day documents back
    again.apply(delta("one more", dated("Long", days[10], ["e3"])))
    _, first = again.days("long", Window(days[0], days[365]))
    _, rest = again.days("long", Window(days[366], days[-1]))  # (a series answers at most 366 days)
    assert [r["articles"] for r in first + rest] == [2 if i == 10 else 1 for i in range(600)]
    assert sum(r["mentions"] for r in first + rest) == 1201
    _, e3 = again.entity_days("long", "e3", Window(days[0], days[365]))
    assert [r["day"] for r in e3 if r["articles"]] == [days[n] for n in range(366) if n % 7 == 3 or n == 10]
    assert {r.entity: r.mentions for r in again.entities("long", limit=100)}["x"] == 600
    again.close()
    store.close()
