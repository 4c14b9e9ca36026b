"""The packed layout's read path, shared by a frontend process's threads: forced interleavings never
serve counts older than the summary they are answered with, and a /publications with nothing changed
reads no document (against the Firestore emulator)."""

from __future__ import annotations

import threading

import pytest

from ingest.core.models import Aggregate, Delta, merge
from ingest.stores.firestore import packed as firestore_packed
from ingest.stores.firestore import FirestoreStore

pytestmark = pytest.mark.firestore


def post(publication: str, *entity_lists: list[str]) -> Aggregate:
    [total] = merge({}, (Aggregate.from_article(publication, entities) for entities in entity_lists)).values()
    return total


def writer(project: str, name: str = "w1") -> FirestoreStore:
    return FirestoreStore(project=project, timeout=10, layout="packed", writer=name)


def reader(project: str) -> FirestoreStore:
    return FirestoreStore(project=project, timeout=10)


def counts(rows) -> dict:
    return {e.entity: (e.mentions, e.articles) for e in rows}


@pytest.fixture
def document_reads(monkeypatch):
    """Documents the Firestore client hands back (queries and batched gets), whoever asks for them."""
    from google.cloud.firestore_v1.client import Client
    from google.cloud.firestore_v1.query import Query

    seen = {"docs": 0, "get_all": 0}
    real_stream, real_get_all = Query.stream, Client.get_all

    def stream(self, *a, **kw):
        for snap in real_stream(self, *a, **kw):
            seen["docs"] += 1
            yield snap

    def get_all(self, *a, **kw):
        seen["get_all"] += 1
        for snap in real_get_all(self, *a, **kw):
            seen["docs"] += 1
            yield snap

    monkeypatch.setattr(Query, "stream", stream)
    monkeypatch.setattr(Client, "get_all", get_all)
    return seen


def test_a_trim_by_another_thread_never_takes_shards_out_of_an_answer(firestore_project, monkeypatch):
    """Thread A reads a 3-shard publication; while it parses its last shard, thread B's read trims the
    shared shard cache. A still answers all 3 entities (before: 1 of 3)."""
    monkeypatch.setattr(firestore_packed, "SHARD_ENTITIES", 1)
    w = writer(firestore_project)
    w.apply(Delta.of("a", [post("Three", ["x", "y", "z"]), post("Other", ["o"])]))
    a, b = reader(firestore_project), reader(firestore_project)
    reads = a.layout().reads
    assert reads is b.layout().reads, "one process's readers share what they read"
    for i in range(5000):  # a cache past its bound: the next read trims it
        reads.shard_cache[("filler", "w", i)] = (1, {})
    real, parsed = firestore_packed.parse_shard, []

    def parse(data):
        parsed.append(data)
        if len(parsed) == 3:      # A's last shard: B reads (and trims) now
            b.entities("other")
        return real(data)

    monkeypatch.setattr(firestore_packed, "parse_shard", parse)
    assert counts(a.entities("three")) == {"x": (1, 1), "y": (1, 1), "z": (1, 1)}
    monkeypatch.setattr(firestore_packed, "parse_shard", real)
    assert counts(a.entities("three")) == {"x": (1, 1), "y": (1, 1), "z": (1, 1)}
    assert a.summary("three").entities == 3


def test_a_reader_of_older_documents_never_overwrites_newer_ones(firestore_project, monkeypatch):
    """B read version 1 of a publication's shards; A reads version 2 and, while A parses its second
    shard, B stores what it read. A answers version 2's counts, and so does every later read (before:
    the summary at version 2 with version-1 counts, cached until the next change)."""
    monkeypatch.setattr(firestore_packed, "SHARD_ENTITIES", 1)
    w = writer(firestore_project)
    w.apply(Delta.of("v1", [post("Pub", ["x", "y"])]))
    a, b = reader(firestore_project), reader(firestore_project)
    b_sums = b.layout().sums("pub")                      # B saw version 1
    assert b_sums[0]["version"] == 1
    go_b, b_done = threading.Event(), threading.Event()
    real, calls = firestore_packed.parse_shard, {"a": 0, "b": 0}

    def parse(data):
        if threading.current_thread().name == "reader-b":
            calls["b"] += 1
            if calls["b"] == 1:
                assert go_b.wait(20)               # B read its shards (version 1) and pauses here
        else:
            calls["a"] += 1
            if calls["a"] == 2:                    # A stored its first shard already: let B store its own now
                go_b.set()
                assert b_done.wait(20)
        return real(data)

    monkeypatch.setattr(firestore_packed, "parse_shard", parse)
    b_thread = threading.Thread(target=lambda: (b.layout().merge("pub", b_sums), b_done.set()), name="reader-b")
    b_thread.start()
    w.apply(Delta.of("v2", [post("Pub", ["x", "y"])]))     # version 2: both shards change
    try:
        got = counts(a.entities("pub"))
    finally:
        go_b.set()
        b_thread.join(20)
    monkeypatch.setattr(firestore_packed, "parse_shard", real)
    assert got == {"x": (2, 2), "y": (2, 2)}
    assert counts(a.entities("pub")) == {"x": (2, 2), "y": (2, 2)}
    assert counts(reader(firestore_project).entities("pub")) == {"x": (2, 2), "y": (2, 2)}


def test_publications_with_nothing_changed_reads_no_document(firestore_project, document_reads):
    """300 publications x 4 writers (every one multi-writer): the second /publications reads nothing
    and recomputes no union (before: every summary changed in the last 60 s was read again, and past
    64 multi-writer publications every union was merged again)."""
    pubs = 300
    for i in range(4):
        writer(firestore_project, f"w{i}").apply(
            Delta.of(f"b{i}", [post(f"Pub {p:03d}", ["shared", f"only {i}"]) for p in range(pubs)]))
    r = reader(firestore_project)
    first = r.publications()
    assert len(first) == pubs and {(p.articles, p.entities, p.mentions) for p in first} == {(4, 5, 8)}
    before = dict(document_reads)
    merged = []
    real_merge = type(r.layout()).merge
    type(r.layout()).merge = lambda self, *a: merged.append(1) or real_merge(self, *a)
    try:
        again = r.publications()
    finally:
        type(r.layout()).merge = real_merge
    assert again == first
    assert document_reads["docs"] - before["docs"] == 0, "no document read when nothing changed"
    assert document_reads["get_all"] == before["get_all"] and not merged
    # a change is still seen, and costs only what changed
    writer(firestore_project, "w1").apply(Delta.of("c", [post("Pub 007", ["new"])]))
    before = dict(document_reads)
    rows = {p.publication: (p.articles, p.entities) for p in r.publications()}
    assert rows["Pub 007"] == (5, 6) and rows["Pub 008"] == (4, 5)
    assert document_reads["docs"] - before["docs"] <= 1 + 2  # its summary, then w1's changed shard (+1 for w1's other)
