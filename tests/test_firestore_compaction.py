"""Retiring writers of the packed layout (ingest/stores/firestore/compaction.py) on the Firestore emulator:
churned writers folded into one archive per publication, counts exact, reads bounded by the writers still
active; a compaction SIGKILLed between commits and run again; a writer committing meanwhile."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from ingest.core.models import Aggregate, Delta, EntityCount, PublicationSummary, merge
from ingest.core.naming import majority_label
from ingest.stores.base import StoreError
from ingest.stores.firestore import FirestoreStore
from ingest.stores.firestore import packed as packed_layout
from ingest.stores.firestore.compaction import Compaction, compact

firestore = pytest.mark.firestore
PUBS = ["Daily Planet", "Gotham Gazette", "Metro News"]
LABELS = ["GPE", "ORG", "PERSON"]  # each churned mention gets one: the archive must fold the label counts too


def post(publication: str, *entity_lists: list[str]) -> Aggregate:
    [total] = merge({}, (Aggregate.from_article(publication, entities) for entities in entity_lists)).values()
    return total


def writer(project: str, name: str, **kw) -> FirestoreStore:
    return FirestoreStore(project=project, timeout=10, layout="packed", writer=name, **kw)


class Recount:
    """What every store answer must equal: the posts' own sum."""

    def __init__(self):
        self.totals: dict[str, Aggregate] = {}

    def apply(self, store: FirestoreStore, batch_id: str, *posts: Aggregate) -> None:
        store.apply(Delta.of(batch_id, posts))
        merge(self.totals, (p.copy() for p in posts))

    def publications(self) -> list[PublicationSummary]:
        rows = sorted(self.totals.values(), key=lambda a: (-a.articles, a.key))
        return [PublicationSummary(publication=a.name, articles=a.articles, entities=len(a.mentions),
                                   mentions=a.total_mentions) for a in rows]

    def entities(self, publication: str) -> list[EntityCount]:
        a = next(a for a in self.totals.values() if a.name == publication)
        return [EntityCount(entity=e, label=majority_label(a.labels.get(e, {})), mentions=a.mentions[e],
                            articles=a.entity_articles[e])
                for e in sorted(a.mentions, key=lambda e: (-a.mentions[e], e))]

    def check(self, reader: FirestoreStore) -> None:
        assert reader.publications() == self.publications()
        for publication in PUBS:
            if any(a.name == publication for a in self.totals.values()):
                assert reader.entities(publication, limit=10**6) == self.entities(publication), publication


def churn(project: str, recount: Recount, names: list[str], rng: random.Random, pubs=PUBS) -> None:
    """Each writer (a VM the autoscaler made) claims its name, writes two batches, and stops cleanly."""
    for name in names:
        store = writer(project, name)
        lease = store.claim_writer(name)
        touched = rng.sample(pubs, min(2, len(pubs)))
        for b in range(2):
            posts = [post(p, *[[(f"e{rng.randrange(60)}", rng.choice(LABELS)) for _ in range(4)] for _ in range(3)])
                     for p in touched]
            recount.apply(store, f"{name}-b{b}", *posts)
        lease.release()
        store.close()


@firestore
def test_twenty_churned_writers_fold_into_one_archive_per_publication_and_reads_stay_bounded(
        firestore_project, monkeypatch):
    rng, recount = random.Random(25), Recount()
    churn(firestore_project, recount, [f"vm{i:02d}" for i in range(20)], rng)
    active = [writer(firestore_project, f"live{i}") for i in range(2)]   # this fleet's VMs: leases live
    for i, store in enumerate(active):
        store.claim_writer(store.writer)
        recount.apply(store, f"live{i}-b0", *(post(p, ["e1", "e2"], [f"only{i}"]) for p in PUBS))
    frontend = FirestoreStore(project=firestore_project, timeout=10)
    recount.check(frontend)                                   # lists every writer before
    reads = frontend.layout().reads
    assert len(reads.listing) == 20 * 2 + 2 * 3

    assert compact(writer(firestore_project, "ops"), older_than=3600).absorbed == 0   # nobody idle an hour
    report = compact(writer(firestore_project, "ops"), older_than=0)
    assert report.absorbed == 40 and report.publications == 3
    assert sorted(w for _, w, _ in report.left) == ["live0", "live0", "live0", "live1", "live1", "live1"]

    recount.check(frontend)                                   # the same frontend, listing incrementally
    assert len(reads.listing) == 3 * (2 + 1), "its listing holds the active writers and the archives only"
    monkeypatch.setattr(packed_layout, "LIST_FULL_EVERY", 0.0)  # every listing reads every summary
    before = reads.doc_reads
    assert frontend.publications() == recount.publications()
    assert reads.doc_reads - before == 3 * (2 + 1), "a /publications read: active writers + 1 archive each"
    before = reads.doc_reads
    assert frontend.entities("Metro News", limit=10**6) == recount.entities("Metro News")
    assert reads.doc_reads - before <= 2 * (2 + 1), "its summaries and at most one shard each"

    recount.apply(active[0], "live0-b1", post("Metro News", ["e1", "late"]))  # the fleet goes on
    churn(firestore_project, recount, ["vm20", "vm21"], rng)
    assert compact(writer(firestore_project, "ops"), older_than=0).absorbed == 4   # the archive grows
    recount.check(frontend)
    recount.check(FirestoreStore(project=firestore_project, timeout=10))
    for store in active:
        store.lease.release()


COMPACT_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    from ingest.stores.firestore import FirestoreStore, compaction

    real, done = compaction.Compaction.commit, []

    def commit(self, key, group):
        real(self, key, group)
        done.append(key)
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGKILL)   # between two commits of one publication

    compaction.Compaction.commit = commit
    compaction.compact(FirestoreStore(project=sys.argv[1], timeout=10, max_writes=int(sys.argv[2])), older_than=0)
""")


@firestore
def test_a_compaction_sigkilled_between_commits_is_finished_by_the_next_run_exactly(firestore_project, tmp_path,
                                                                                   monkeypatch):
    log = tmp_path / "writes.jsonl"
    monkeypatch.setenv("INGEST_TEST_WRITE_LOG", str(log))
    rng, recount = random.Random(26), Recount()
    churn(firestore_project, recount, [f"vm{i}" for i in range(6)], rng, pubs=["Metro News"])
    log.write_text("")
    # 5 writes a commit: its marker, the archive's summary and shard, one writer's summary and shard
    died = subprocess.run([sys.executable, "-c", COMPACT_THEN_DIE, firestore_project, "5"], timeout=120)
    assert died.returncode == -signal.SIGKILL
    reader = FirestoreStore(project=firestore_project, timeout=10)
    recount.check(reader)                                      # half folded: still exact
    assert len(reader.layout().sums("metro news")) == 1 + 4

    rerun = subprocess.run([sys.executable, "-m", "ingest.backend.cli", "compact", "--store",
                            f"firestore://{firestore_project}", "--older-than", "0"],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "compacted: 4 writer summaries folded into 1 archive(s)" in rerun.stdout
    recount.check(reader)
    recount.check(FirestoreStore(project=firestore_project, timeout=10))
    assert [s["writer"] for s in reader.layout().sums("metro news")] == ["archive"]
    commits = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(commits) == 2 + 1 and all(len(c["docs"]) <= 5 for c in commits[:2]), \
        "one writer a commit while max_writes is 5; the rerun's 500"


@firestore
def test_a_writer_that_commits_while_it_is_being_folded_is_left_and_nothing_is_lost(firestore_project, monkeypatch):
    rng, recount = random.Random(27), Recount()
    churn(firestore_project, recount, ["vm0", "vm1"], rng, pubs=["Metro News"])
    real = Compaction.read_idle

    def read_then_vm0_wakes(self, key, writers):
        found = real(self, key, writers)
        recount.apply(writer(firestore_project, "vm0"), "vm0-late", post("Metro News", ["late"]))
        return found

    monkeypatch.setattr(Compaction, "read_idle", read_then_vm0_wakes)
    report = compact(writer(firestore_project, "ops"), older_than=0)
    assert report.absorbed == 0 and {w for _, w, why in report.left if why == "changed meanwhile"} == {"vm0", "vm1"}
    recount.check(FirestoreStore(project=firestore_project, timeout=10))
    monkeypatch.setattr(Compaction, "read_idle", real)
    assert compact(writer(firestore_project, "ops"), older_than=0).absorbed == 2
    recount.check(FirestoreStore(project=firestore_project, timeout=10))


def test_compact_refuses_what_is_not_a_firestore_store_in_one_line(tmp_path):
    for args in (["--store", f"sqlite:///{tmp_path / 'x.db'}"], ["--store", "firestore://p?layout=bad"],
                 ["--store", "firestore://p", "--older-than", "-1"], []):
        done = subprocess.run([sys.executable, "-m", "ingest.backend.cli", "compact", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("ingestiond compact: error:"), done.stderr
    assert not (tmp_path / "x.db").exists(), "a refused store URL creates nothing"


@firestore
def test_a_stalled_writer_that_wakes_after_it_was_folded_starts_afresh_and_counts_stay_exact(firestore_project):
    """Its lease expired while it stalled, so it was folded; its picture of its documents is stale: the
    next commit fails (a StoreError, which the saver retries), it reads its documents again (none) and
    writes from zero beside the archive."""
    recount = Recount()
    stalled = writer(firestore_project, "vm0")
    recount.apply(stalled, "a", post("Metro News", ["x"], ["y"]))
    assert compact(writer(firestore_project, "ops"), older_than=0).absorbed == 1
    with pytest.raises(StoreError, match="reloading"):
        stalled.apply(Delta.of("b", [post("Metro News", ["x", "z"])]))
    recount.apply(stalled, "b", post("Metro News", ["x", "z"]))
    recount.check(FirestoreStore(project=firestore_project, timeout=10))


@firestore
def test_one_compaction_at_a_time(firestore_project):
    held = writer(firestore_project, "ops").claim_writer("compactor")   # a compaction running in this process
    try:
        second = subprocess.run([sys.executable, "-m", "ingest.backend.cli", "compact", "--store",
                                 f"firestore://{firestore_project}"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith("ingestiond compact: another compaction is running")
    finally:
        held.release()
    assert compact(writer(firestore_project, "ops")).absorbed == 0


@firestore
def test_compaction_folds_the_day_documents_too(firestore_project):
    """Per-day counts of folded writers move into the archive's day documents: every day's counts and
    the all-time counts are the same before and after, and the writers' day documents are gone."""
    from google.cloud import firestore as gfs

    from ingest.core.days import Window

    recount = Recount()
    for name, days in (("vm1", range(1, 20)), ("vm2", range(10, 30))):
        store = writer(firestore_project, name)
        posts = [merge({}, [Aggregate.from_article("Metro News", [(f"e{d % 7}", "ORG"), ("x", "GPE")],
                                                   f"2017-01-{d:02d}")])["metro news"] for d in days]
        recount.apply(store, f"{name}-b", *posts)
        store.close()
    reader = FirestoreStore(project=firestore_project, timeout=10)

    def per_day():
        _, series = reader.days("metro news", Window("2017-01-01", "2017-01-31"))
        return [(row["day"], row["articles"], row["mentions"],
                 reader.entities_in("metro news", Window(row["day"], row["day"]), 100)) for row in series]
    before = per_day()
    assert sum(a for _, a, _, _ in before) == 39
    assert compact(writer(firestore_project, "ops"), older_than=0).absorbed == 2
    assert per_day() == before
    recount.check(reader)
    days = list(gfs.Client(project=firestore_project).collection_group("days").stream())
    assert days and {d.get("writer") for d in days} == {"archive"}
    reader.close()
