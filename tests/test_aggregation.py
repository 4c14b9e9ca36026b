"""Any split of a corpus into micro-batches, worker flushes and saver batches gives the same totals."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.backend.nlp import Processor
from ingest.core.models import Delta, merge
from ingest.stores.sqlite import SqliteStore
from tests.corpus import articles

CORPUS = articles(24, seed=3)


def _sum(posts):
    totals = merge({}, (p.copy() for p in posts))
    return {k: (v.articles, dict(v.mentions), dict(v.entity_articles)) for k, v in totals.items()}


def test_batch_size_does_not_change_entities(nlp):
    one = Processor(nlp=nlp, batch_size=1).process(CORPUS)
    many = Processor(nlp=nlp, batch_size=16).process(CORPUS)
    assert [p.mentions for p in one] == [p.mentions for p in many]
    assert sum(p.total_mentions for p in one) > 50  # the corpus really has entities


def test_pipeline_reload_keeps_counts_and_drops_accumulated_strings(nlp):
    """A worker reloads its pipeline every `reload_every` articles to bound memory: same entities."""
    reference = Processor(nlp=nlp, reload_every=0).process(CORPUS)
    reloading = Processor(nlp=nlp, batch_size=4, reload_every=10)
    got = []
    for start in range(0, len(CORPUS), 4):
        got.extend(reloading.process(CORPUS[start:start + 4]))
        if start == 4:
            grown = len(reloading.nlp.vocab.strings)
    assert reloading.reloads == 2  # after articles 12 and 24
    assert reloading.nlp is not nlp
    assert len(reloading.nlp.vocab.strings) < grown  # the fresh pipeline forgot the corpus's words
    assert [(p.key, p.mentions) for p in got] == [(p.key, p.mentions) for p in reference]


def test_failed_reload_keeps_the_working_pipeline(nlp):
    processor = Processor(model="no_such_pipeline_xyz", nlp=nlp, reload_every=5)
    posts = processor.process(CORPUS[:6])
    assert processor.reloads == 0 and processor.nlp is nlp and processor.since_load == 0
    assert [p.mentions for p in posts] == [p.mentions for p in Processor(nlp=nlp, reload_every=0).process(CORPUS[:6])]


@st.composite
def splits(draw):
    cuts = sorted(draw(st.sets(st.integers(1, len(CORPUS) - 1), max_size=8)))
    bounds = [0, *cuts, len(CORPUS)]
    flush_groups = [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    saver_every = draw(st.integers(1, 4))
    return flush_groups, saver_every


@settings(max_examples=40, deadline=None)
@given(splits())
def test_any_split_into_flushes_and_batches_gives_the_same_totals(per_article, tmp_path_factory, split):
    flush_groups, saver_every = split
    # worker caches: each flush group aggregated per publication
    flushes = []
    for group in flush_groups:
        cache = merge({}, (per_article[i].copy() for i in group))
        flushes.append(list(cache.values()))
    # savers coalesce several flushes into one batch, applied to a real SQLite store
    store = SqliteStore(tmp_path_factory.mktemp("agg") / "s.db")
    for start in range(0, len(flushes), saver_every):
        delta = Delta.of(f"b{start}", [post for flush in flushes[start:start + saver_every] for post in flush])
        store.apply(delta)
        store.apply(delta)  # a retried batch never double-counts
    expected = _sum(per_article)
    got = {}
    for summary in store.publications():
        key = summary.publication.lower()
        key = " ".join(key.split())
        rows = store.entities(summary.publication, limit=1000)
        got[key] = (summary.articles, {r.entity: r.mentions for r in rows}, {r.entity: r.articles for r in rows})
    store.close()
    assert got == expected


@pytest.fixture(scope="module")
def per_article(nlp):
    return Processor(nlp=nlp).process(CORPUS)
