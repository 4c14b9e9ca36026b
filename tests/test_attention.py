"""Attention over time, as a user meets it: a post's day, per-day counts equal to a recount (over HTTP and
straight from the store), windows, series, top entities, rising, CSV, and every bad parameter a JSON 400."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date, datetime, timedelta, timezone

import httpx
import pytest

from ingest.core.days import Window
from ingest.core.models import Aggregate, Delta
from ingest.core.rules import publication_key
from tests import corpus
from tests.frontend_support import start_frontend
from tests.support import kill_backend_group, start_backend, wait_for

TODAY = datetime.now(timezone.utc).date()


# -- fast: the front door's and the reads' parameters --------------------------------------------

class NoBackend:
    """Every 400 below is answered before the backend is asked: asking it is the bug."""

    def put_many(self, posts, token=None):
        raise AssertionError(f"a refused request reached the backend: {posts}")


@pytest.fixture
def app(tmp_path):
    from ingest.frontend import create_app
    from ingest.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "ingest.db")
    store.apply(Delta.of("b1", [
        Aggregate.from_article("The Daily", [("merkel", "PERSON"), ("obama", "PERSON"), ("nato", "ORG")], "2017-01-01"),
        Aggregate.from_article("The Daily", [("merkel", "PERSON")], "2017-01-03")]))
    store.close()
    from ingest.config import FrontendSettings

    app = create_app(FrontendSettings(store=f"sqlite:///{tmp_path / 'ingest.db'}", api_keys=["k"]), client=NoBackend())
    app.testing = True
    return app


@pytest.mark.parametrize("published", [
    "yesterday", "2017-02-30", "2017-2-7", "1969-12-31", "1969-12-31T23:59:59Z", "2017-02-07T14:30:00",
    (TODAY + timedelta(days=2)).isoformat(), 20170207, "",
])
def test_a_malformed_early_or_future_published_is_a_400_and_nothing_is_queued(app, published):
    body = {"publication": "The Daily", "content": "Angela Merkel in Berlin.", "published": published}
    with app.test_client() as c:
        for path, payload in (("/post/enqueue", body), ("/posts", [body])):
            r = c.post(path, json=payload, headers={"X-API-Key": "k"})
            assert r.status_code == 400 and r.get_json()["error"] == "invalid_post", r.get_data(as_text=True)


@pytest.mark.parametrize("query", [
    "since=2017-01-05&until=2017-01-01", "since=2017-1-1", "until=tomorrow", "since=2017-02-30",
    "format=xml", "format=", "since=2015-01-01&until=2017-01-01",
])
def test_a_bad_window_or_format_is_a_json_400_on_every_read(app, query):
    paths = ["/publications/the%20daily/days", "/publications/the%20daily/entities/merkel/days"]
    if "2015" not in query:  # a window longer than 366 days is refused for a series only
        paths += ["/publications/the%20daily/entities", "/entities"]
    with app.test_client() as c:
        for path in paths:
            r = c.get(f"{path}?{query}")
            assert r.status_code == 400 and r.get_json()["error"] == "invalid_parameter", (path, r.get_data())


@pytest.mark.parametrize("query", ["days=0", "days=184", "days=x", "until=2017-13-01", "limit=0", "format=pdf"])
def test_a_bad_rising_parameter_is_a_json_400(app, query):
    with app.test_client() as c:
        for path in ("/rising", "/publications/the%20daily/rising"):
            r = c.get(f"{path}?{query}")
            assert r.status_code == 400 and r.get_json()["error"] == "invalid_parameter", (path, r.get_data())


def test_series_windows_and_csv(app):
    with app.test_client() as c:
        days = c.get("/publications/the%20daily/days").get_json()           # default: 30 days to the latest
        assert len(days) == 30 and days[-1] == {"day": "2017-01-03", "articles": 1, "mentions": 1}
        assert sum(d["articles"] for d in days) == 2 and days[-3]["mentions"] == 3
        r = c.get("/publications/the%20daily/entities/MERKEL/days?since=2017-01-01&until=2017-01-03&format=csv")
        assert r.status_code == 200 and r.content_type.startswith("text/csv")
        assert list(csv.reader(io.StringIO(r.get_data(as_text=True)))) == [
            ["day", "mentions", "articles"], ["2017-01-01", "1", "1"], ["2017-01-02", "0", "0"],
            ["2017-01-03", "1", "1"]]
        window = c.get("/publications/the%20daily/entities?since=2017-01-02&until=2017-01-31").get_json()
        assert [(e["entity"], e["label"], e["mentions"]) for e in window] == [("merkel", "PERSON", 1)]
        orgs = c.get("/entities?since=2017-01-01&until=2017-01-01&label=org").get_json()
        assert [(e["entity"], e["label"], e["publications"]) for e in orgs] == [("nato", "ORG", 1)]
        people = c.get("/publications/the%20daily/entities?since=2017-01-01&label=PERSON").get_json()
        assert [e["entity"] for e in people] == ["merkel", "obama"]
        assert [e["label"] for e in c.get("/entities").get_json()] == ["PERSON", "ORG", "PERSON"]
        assert c.get("/entities?label=ANIMAL").status_code == 400
        assert c.get("/publications/the%20daily/entities?format=csv",
                     headers={"Accept": "text/csv"}).get_data(as_text=True).startswith("entity,")
        assert c.get("/entities?until=2017-01-01").get_json()[0]["publications"] == 1
        assert c.get("/publications/nobody/days").status_code == 404


# -- slow: the whole stack, dates over 60 days, a SIGKILL, late articles --------------------------

def dated_posts(n: int, seed: int = 11) -> list[dict]:
    """Articles over 60 days of early 2017: bare dates, date-times with offsets that cross midnight UTC,
    and some without `published` (they count on the day they are accepted: today)."""
    rng = random.Random(seed)
    first = date(2017, 1, 1)
    out = []
    for i, (publication, content) in enumerate(corpus.articles(n, seed=seed)):
        post = {"publication": publication, "content": content, "id": f"a{i}"}
        kind = i % 5
        day = first + timedelta(days=rng.randrange(60))
        if kind in (0, 1):
            post["published"] = day.isoformat()
        elif kind == 2:
            post["published"] = f"{day.isoformat()}T23:30:00-02:00"       # the next UTC day
        elif kind == 3:
            post["published"] = f"{day.isoformat()}T00:15:00+01:00"       # the previous UTC day
        out.append(post)
    return out


def utc_day(post: dict) -> str:
    from ingest.core.days import day_of_post

    return day_of_post(post.get("published"), datetime.now(timezone.utc).timestamp())


def expected_days(recount, posts) -> dict:
    """{publication key: {day: (articles, mentions, {entity: (mentions, articles)})}} by an independent recount."""
    counted = recount([(p["publication"], p["content"], None, utc_day(p)) for p in posts])
    return {key: {d: (c.articles, c.mentions, {e: tuple(r) for e, r in c.entities.items()})
                  for d, c in agg.days.items()} for key, agg in counted.items()}


def spans(days: list[str]) -> list[tuple[str, str]]:
    """The sorted days cut into windows a series answers (at most 366 days each)."""
    out = []
    for day in sorted(days):
        if out and (date.fromisoformat(day) - date.fromisoformat(out[-1][0])).days < 366:
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def http_days(http: httpx.Client, publication: str, days: list[str]) -> dict:
    out = {}
    series = [row for since, until in spans(days) for row in http.get(
        f"/publications/{publication}/days", params={"since": since, "until": until}).raise_for_status().json()]
    for row in series:
        if not row["articles"]:
            continue
        rows = http.get(f"/publications/{publication}/entities",
                        params={"since": row["day"], "until": row["day"], "limit": 1000}).raise_for_status().json()
        out[row["day"]] = (row["articles"], row["mentions"],
                           {r["entity"]: (r["mentions"], r["articles"]) for r in rows})
    return out


def store_days(url: str, publication: str, days: list[str]) -> dict:
    from ingest.stores import open_store

    store = open_store(url, readonly=True)
    try:
        series = [row for since, until in spans(days) for row in store.days(publication, Window(since, until))[1]]
        return {row["day"]: (row["articles"], row["mentions"],
                             {r["entity"]: (r["mentions"], r["articles"])
                              for r in store.entities_in(publication, Window(row["day"], row["day"]), 1000)})
                for row in series if row["articles"]}
    finally:
        store.close()


def assert_days_equal_a_recount(http: httpx.Client, store_url: str, posts: list[dict], recount) -> list[str]:
    """Every publication's per-day counts, over HTTP and straight from the store, equal an independent recount,
    and sum to its all-time counts; every article is on one day. The days with data, sorted."""
    want = expected_days(recount, posts)
    days = sorted({d for per_pub in want.values() for d in per_pub})
    for pub_key, per_day in want.items():
        name = next(p["publication"] for p in posts if publication_key(p["publication"]) == pub_key)
        assert http_days(http, name, days) == per_day, pub_key
        assert store_days(store_url, name, days) == per_day, pub_key
        all_time = {r["entity"]: (r["mentions"], r["articles"]) for r in http.get(
            f"/publications/{name}/entities", params={"limit": 1000}).json()}
        summed: dict = {}
        for _, _, entities in per_day.values():
            for e, (m, a) in entities.items():
                summed[e] = (summed.get(e, (0, 0))[0] + m, summed.get(e, (0, 0))[1] + a)
        assert all_time == summed, "the sum over days is not the all-time count"
    assert sum(a for per_pub in want.values() for a, _, _ in per_pub.values()) == len(posts)
    return days


@pytest.mark.slow
def test_counts_per_day_equal_a_recount_over_http_and_in_the_store_across_a_sigkill_and_late_posts(
        tmp_path, recount):
    posts = dated_posts(150)
    early, late = posts[:120], posts[120:]
    for p in late:                                                          # late arrivals for an old day
        p["published"] = "2017-01-02"
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "5")
    frontend = start_frontend(tmp_path, backend.env)
    key = {"X-API-Key": frontend.api_key}
    try:
        with frontend.client() as http:
            for start in range(0, 60, 20):
                assert http.post("/posts", json=early[start:start + 20], headers=key).status_code == 202
            kill_backend_group(backend)                                    # accepted, not all counted yet
            backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.2",
                                    port=backend.address[1], authkey=backend.authkey)
            for start in range(60, 120, 20):
                assert http.post("/posts", json=early[start:start + 20], headers=key).status_code == 202
            for p in late:
                assert http.post("/post/enqueue", json=p, headers=key).status_code == 202
            backend.wait_idle()
            assert_days_equal_a_recount(http, backend.store_url, posts, recount)
            today = [p for p in posts if "published" not in p]
            assert today and all(utc_day(p) == TODAY.isoformat() for p in today)
    finally:
        frontend.stop()
        assert backend.stop() == 0, backend.log()[-3000:]


@pytest.mark.slow
def test_rising_over_http_ranks_a_new_name_first_and_not_a_flat_one(tmp_path):
    """Synthetic: 'Zelda Fitzgerald' appears only in the last 7 days, 'Angela Merkel' every day."""
    backend = start_backend(tmp_path, "--workers", "1", "--flush-interval", "0.2")
    frontend = start_frontend(tmp_path, backend.env)
    key = {"X-API-Key": frontend.api_key}
    first = date(2017, 3, 1)
    posts = []
    for n in range(14):
        day = (first + timedelta(days=n)).isoformat()
        for k in range(4):
            text = f"Angela Merkel spoke in Berlin on day {n}, report {k}."
            if n >= 7 and k < 3:
                text += " Zelda Fitzgerald wrote about it."
            posts.append({"publication": "The Daily", "content": text, "published": day})
    try:
        with frontend.client() as http:
            assert http.post("/posts", json=posts, headers=key).status_code == 202
            backend.wait_idle()
            wait_for(lambda: http.get("/publications/the%20daily/days",
                                      params={"since": "2017-03-01", "until": "2017-03-14"}
                                      ).json()[-1]["articles"] == 4,
                     30, 0.1, "the last day counted")
            rows = http.get("/publications/the%20daily/rising", params={"days": 7, "until": "2017-03-14"}).json()
            assert rows and rows[0]["entity"] == "zelda fitzgerald"
            assert rows[0]["articles_now"] == 21 and rows[0]["articles_before"] == 0
            assert rows[0]["total_now"] == 28 and rows[0]["total_before"] == 28
            assert "angela merkel" not in [r["entity"] for r in rows]
            assert http.get("/rising", params={"days": 7}).json()[0]["entity"] == "zelda fitzgerald"
            text = http.get("/rising", params={"days": 7, "format": "csv"}).text
            assert text.splitlines()[0] == "entity,articles_now,articles_before,total_now,total_before,score"
            assert json.loads(json.dumps(rows))  # plain JSON rows
    finally:
        frontend.stop()
        assert backend.stop() == 0, backend.log()[-3000:]
