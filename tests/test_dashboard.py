"""The dashboard through Flask's test client, over a real SQLite store filled by SqliteStore.apply."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from PIL import Image

from ingest.config import FrontendSettings
from ingest.web import appstate, wordcloud
from ingest.web.painter import WORDCLOUD_SIZE, WORDCLOUD_TOP_N, render_wordcloud
from ingest.core.models import Delta, Aggregate
from ingest.stores.sqlite import SqliteStore

XSS_NAME = '<img src=x onerror="window.__xss=1">'
XSS_ENTITY = "<script>window.__xss=2</script>"
ODD_NAMES = ["a/../b", "..", "Zürich Zeitung ✓", "/leading slash"]


def publish(store: SqliteStore, publication: str, articles: list[dict[str, int]]) -> None:
    """Apply one saver batch holding these articles (each a mapping entity -> mentions)."""
    posts = []
    for mentions in articles:
        post = Aggregate.from_article(publication, [])
        post.mentions = dict(mentions)
        post.entity_articles = dict.fromkeys(mentions, 1)
        posts.append(post)
    store.apply(Delta.of(uuid.uuid4().hex, posts))


def populate(store: SqliteStore) -> None:
    """A big publication (3,272 entities), odd names, an XSS attempt, one without entities."""
    big = [{f"entity {i:04d}": 1 + (i * 7 + a) % 5 for i in range(a * 30, a * 30 + 300)} for a in range(100)]
    big.append({"Anna Karenina": 900, "Moscow": 450})
    publish(store, "The Daily Planet", big)
    publish(store, XSS_NAME, [{XSS_ENTITY: 3, "fine entity": 1}, {XSS_ENTITY: 1}])
    for n, name in enumerate(ODD_NAMES):
        publish(store, name, [{"shared": 2, f"only {n}": 1}] * (n + 2))
    publish(store, "Silent Times", [{}])


def build_app(db_path, **settings):
    """The real app (ingest.frontend.create_app) reading this SQLite file."""
    from ingest.frontend import create_app

    # no render budget unless a test asks for one: these tests count renders, not CPU
    settings = {"wordcloud_refresh": 0, "wordcloud_share": 1.0, **settings}
    return create_app(FrontendSettings(store=f"sqlite:///{db_path}", **settings))


def renders(app) -> int:
    return appstate.of(app).wordclouds.cache.renders


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "ingest.db"
    store = SqliteStore(path)
    populate(store)
    yield store, path
    store.close()


@pytest.fixture
def client(db):
    app = build_app(db[1])
    with app.test_client() as c:
        c.application = app
        yield c


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data)).size


def cloud(client, publication, **params):
    return client.get("/dashboard/wordcloud.png", query_string={"publication": publication, **params})


def test_page_lists_every_publication_with_its_counts(client, db):
    resp = client.get("/")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    assert resp.headers["Cache-Control"] == "no-cache"
    html = resp.get_data(as_text=True)
    planet = next(p for p in db[0].publications() if p.publication == "The Daily Planet")
    assert planet.entities == 3272
    for text in ("The Daily Planet", f"{planet.articles:,}", "3,272", f"{planet.mentions:,}", "Zürich Zeitung ✓"):
        assert text in html
    assert html.count('<tr class="pub"') == len(db[0].publications()) == 3 + len(ODD_NAMES)


def test_page_escapes_publication_names(client):
    html = client.get("/").get_data(as_text=True)
    assert XSS_NAME not in html
    assert "&lt;img src=x onerror=&#34;window.__xss=1&#34;&gt;" in html
    csp = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp


def test_page_assets_are_served_locally(client):
    html = client.get("/").get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched from elsewhere
    for asset, mimetype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        assert f"/dashboard/static/{asset}" in html
        resp = client.get(f"/dashboard/static/{asset}")
        assert resp.status_code == 200 and resp.mimetype == mimetype
        assert b"http://" not in resp.data and b"https://" not in resp.data
        resp.close()


def test_empty_store_renders_an_empty_page(tmp_path):
    path = tmp_path / "empty.db"
    SqliteStore(path).close()
    with build_app(path).test_client() as c:
        resp = c.get("/")
        assert resp.status_code == 200
        assert "No publications yet" in resp.get_data(as_text=True)


@pytest.mark.slow  # draws in the painter child process
def test_wordcloud_is_a_png_cached_until_the_counts_change(client, db):
    store, _ = db
    first = cloud(client, "The Daily Planet")
    assert first.status_code == 200 and first.mimetype == "image/png"
    assert png_size(first.data) == WORDCLOUD_SIZE
    assert renders(client.application) == 1

    again = cloud(client, "the   DAILY planet")  # same key, other spelling
    assert again.data == first.data and again.headers["ETag"] == first.headers["ETag"]
    assert renders(client.application) == 1  # served from the cache

    not_modified = client.get(
        "/dashboard/wordcloud.png",
        query_string={"publication": "The Daily Planet"},
        headers={"If-None-Match": first.headers["ETag"]},
    )
    assert not_modified.status_code == 304 and not not_modified.data

    publish(store, "The Daily Planet", [{"Brand New Entity": 5000}])
    changed = cloud(client, "The Daily Planet")
    assert changed.status_code == 200
    assert changed.headers["ETag"] != first.headers["ETag"]
    assert changed.data != first.data
    cache = appstate.of(client.application).wordclouds.cache
    assert cache.renders == 2
    assert len(cache) == 1  # the stale picture was dropped, not kept beside the new one


@pytest.mark.slow  # draws in the painter child process
def test_a_cloud_drawn_a_moment_ago_is_served_while_the_counts_move_on(db):
    """A publication written all the time is not redrawn per request: its last picture serves for
    the refresh interval, marked as not current (no ETag, no-cache), and then it is redrawn. A request
    that names the current counts (the dashboard's) gets them drawn at once."""
    store, path = db
    app = build_app(path, wordcloud_refresh=1.5)
    with app.test_client() as c:
        first = cloud(c, "The Daily Planet")
        publish(store, "The Daily Planet", [{"Brand New Entity": 5000}])
        stale = cloud(c, "The Daily Planet")
        assert stale.status_code == 200 and stale.data == first.data
        assert "ETag" not in stale.headers and "no-cache" in stale.headers["Cache-Control"]
        assert renders(app) == 1
        time.sleep(1.6)
        redrawn = cloud(c, "The Daily Planet")
        assert redrawn.data != first.data and "ETag" in redrawn.headers
        assert renders(app) == 2
        publish(store, "The Daily Planet", [{"Another Entity": 9000}])
        planet = next(p for p in store.publications() if p.publication == "The Daily Planet")
        named = cloud(c, "The Daily Planet", v=f"{planet.articles}-{planet.mentions}")
        assert named.data != redrawn.data and "ETag" in named.headers
        assert renders(app) == 3


@pytest.mark.slow  # draws in the painter child process
def test_the_renderer_rests_so_drawing_takes_its_share_of_a_core():
    """Without credit, after a picture of t CPU seconds the renderer rests about t * (1/share - 1):
    with share 0.25, two pictures of ~0.2 s each are at least ~0.6 s apart, whoever asks for them."""
    renderer = wordcloud.WordcloudRenderer(wordcloud.WordcloudCache(8), share=0.25, burst=0)
    finished = []

    def burn():
        started = time.thread_time()
        while time.thread_time() - started < 0.2:
            pass
        finished.append(time.monotonic())
        return b"png"

    first, second = renderer.request(("a", 1, 1), burn), renderer.request(("b", 1, 1), burn)
    assert first.wait(10) and second.wait(10)
    assert finished[1] - finished[0] >= 0.55, f"pictures {finished[1] - finished[0]:.2f}s apart"
    assert renderer.cache.get(("a", 1, 1)) == renderer.cache.get(("b", 1, 1)) == b"png"


@pytest.mark.slow  # draws in the painter child process
def test_wordcloud_cache_control_follows_the_version_in_the_url(client, db):
    planet = next(p for p in db[0].publications() if p.publication == "The Daily Planet")
    current = cloud(client, "The Daily Planet", v=f"{planet.articles}-{planet.mentions}")
    assert "max-age=86400" in current.headers["Cache-Control"]
    stale = cloud(client, "The Daily Planet", v="1-1")
    assert stale.status_code == 200
    assert "no-cache" in stale.headers["Cache-Control"]
    assert "no-cache" in cloud(client, "The Daily Planet").headers["Cache-Control"]


def test_wordcloud_unknown_publication_is_404(client):
    for name in ("nobody", "", "   "):
        resp = cloud(client, name)
        assert resp.status_code == 404
        assert resp.get_json()["error"] == "unknown_publication"
    assert client.get("/dashboard/wordcloud.png").status_code == 404


@pytest.mark.parametrize("name", ODD_NAMES + [XSS_NAME, "Silent Times"])
def test_wordcloud_for_odd_names_and_empty_publications(client, name):
    resp = cloud(client, name)
    assert resp.status_code == 200
    assert png_size(resp.data) == WORDCLOUD_SIZE


def test_wordcloud_cache_is_capped(db):
    app = build_app(db[1], wordcloud_cache=2)
    with app.test_client() as c:
        for name in ODD_NAMES[:3]:
            assert cloud(c, name).status_code == 200
        cache = appstate.of(app).wordclouds.cache
        assert (len(cache), cache.renders) == (2, 3)
        assert cloud(c, ODD_NAMES[0]).status_code == 200  # evicted first: rendered again
        assert renders(app) == 4


@pytest.mark.slow  # draws in the painter child process
def test_wordcloud_renders_top_entities_only(db, monkeypatch):
    """Thousands of entities: the render reads one page of WORDCLOUD_TOP_N, not everything."""
    store, path = db
    app = build_app(path)
    real = appstate.of(app).store
    seen = []

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def entities(self, publication, limit=20, offset=0):
            seen.append((limit, offset))
            return real.entities(publication, limit, offset)

    appstate.of(app).store = Recording()
    with app.test_client() as c:
        assert cloud(c, "The Daily Planet").status_code == 200
    assert seen == [(WORDCLOUD_TOP_N, 0)]


def test_render_wordcloud_draws_words():
    """A real cloud has ink; the placeholder for a publication without entities has almost none."""
    png = render_wordcloud({"alpha": 1000})
    image = Image.open(io.BytesIO(png)).convert("L")
    inked = sum(1 for px in image.get_flattened_data() if px < 200)
    assert inked > 0.05 * image.width * image.height
    blank = Image.open(io.BytesIO(render_wordcloud({}))).convert("L")
    assert sum(1 for px in blank.get_flattened_data() if px < 200) < inked / 10


@pytest.mark.slow  # draws in the painter child process
def test_protected_reads_keep_counts_off_the_page_and_the_cloud(db):
    """With INGEST_READ_API_KEYS set the shell still loads; the data needs the key, like the API."""
    app = build_app(db[1], read_api_keys="read-secret")
    with app.test_client() as c:
        page = c.get("/")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert "The Daily Planet" not in html and "Reads need an API key" in html
        assert c.get("/publications").status_code == 401
        for headers in ({}, {"X-API-Key": "wrong"}):
            resp = c.get("/dashboard/wordcloud.png", query_string={"publication": "The Daily Planet"}, headers=headers)
            assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
        ok = c.get("/dashboard/wordcloud.png", query_string={"publication": "The Daily Planet"},
                   headers={"X-API-Key": "read-secret"})
        assert ok.status_code == 200 and ok.mimetype == "image/png"
        assert ok.headers["Cache-Control"].startswith("private")


def test_the_renderers_credit_lets_a_few_pictures_through_then_charges_the_rest():
    renderer = wordcloud.WordcloudRenderer(wordcloud.WordcloudCache(8), share=0.25, burst=0.3)
    assert renderer._charge(0.2) == 0.0  # a user clicking through publications: no wait
    assert renderer._charge(0.2) == pytest.approx(0.4, abs=0.05)  # 0.1 s in debt at 0.25 of a core


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow  # draws in the painter child process
def test_clouds_are_drawn_by_a_low_priority_child_of_the_app_process(db):
    """The app's picture is the painter child's, drawn at nice 10, and equals the in-process one."""
    import os

    from ingest.web.painter import NICENESS, shared_painter

    app = build_app(db[1])
    with app.test_client() as c:
        resp = cloud(c, "The Daily Planet")
    assert resp.status_code == 200
    child = shared_painter().child_pid
    assert child is not None and _alive(child)
    assert os.getpriority(os.PRIO_PROCESS, child) == min(os.getpriority(os.PRIO_PROCESS, 0) + NICENESS, 19)
    top = {e.entity: e.mentions for e in db[0].entities("The Daily Planet", limit=WORDCLOUD_TOP_N)}
    assert resp.data == render_wordcloud(top)


@pytest.mark.slow  # draws in the painter child process
def test_the_painter_reports_its_cpu_survives_errors_and_a_killed_child():
    import os
    import signal

    from ingest.web.painter import Painter, PainterError

    painter = Painter()
    try:
        assert png_size(painter.draw({"alpha": 3, "beta": 1})) == WORDCLOUD_SIZE
        assert painter.cpu_spent() > 0.01, "the child's CPU counts against this thread's render budget"
        with pytest.raises(PainterError, match="TypeError|ValueError"):
            painter.draw({"alpha": "many"})  # the child's error, as a message; the child goes on
        first = painter.child_pid
        assert png_size(painter.draw({"gamma": 2})) == WORDCLOUD_SIZE and painter.child_pid == first
        os.kill(first, signal.SIGKILL)
        while _alive(first):  # until it is a zombie: the painter has not reaped it yet
            time.sleep(0.01)
        assert png_size(painter.draw({"delta": 2})) == WORDCLOUD_SIZE  # a new child
        assert painter.child_pid not in (first, None)
    finally:
        painter.close()
    assert painter.child_pid is None


@pytest.mark.slow  # draws in the painter child process
def test_the_painter_child_ends_with_its_parent_however_the_parent_ends(tmp_path):
    """SIGKILL the parent: the child sees its stdin close and exits, none is left running."""
    import subprocess
    import sys

    script = ("import os, signal, sys\n"
              "from ingest.web.painter import Painter\n"
              "p = Painter(); p.draw({'alpha': 1})\n"
              "print(p.child_pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert parent.returncode == -9, parent.stderr
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the painter outlived its parent"


@pytest.mark.slow  # draws in the painter child process
def test_the_page_hands_its_viewer_a_token_good_for_that_address_and_a_while(db):
    """The token the page carries (data-viewer-token) is what pacing.py lets past the anonymous
    lines: valid for the viewer's address only, for VIEWER_TTL seconds, with any worker that has the
    same API keys (the secret is derived from them), and renewable at /dashboard/viewer-token."""
    import asyncio
    import re

    from ingest.web.pacing import VIEWER_TTL, ReadPacer

    app = build_app(db[1], api_keys="k1,k2")
    with app.test_client() as c:
        html = c.get("/", environ_base={"REMOTE_ADDR": "10.1.2.3"}).get_data(as_text=True)
        renewed = c.get("/dashboard/viewer-token", environ_base={"REMOTE_ADDR": "10.1.2.3"}).get_json()
    token = re.search(r'data-viewer-token="([^"]+)"', html).group(1)
    assert renewed["expires_in"] == VIEWER_TTL and renewed["token"]
    assert 'rel="icon"' in html  # no 404 for /favicon.ico on every load

    pacer = appstate.of(app).pacer
    other_worker = ReadPacer("20/second", ["k2", "k1"], "20/10seconds", "50/second")
    header = lambda t: [(b"x-viewer-token", t.encode())]  # noqa: E731
    for p in (pacer, other_worker):
        assert p.viewer(header(token), "10.1.2.3") and p.viewer(header(renewed["token"]), "10.1.2.3")
        assert p.viewer(header(token), "10.9.9.9") is None, "another address cannot use it"
    assert pacer.viewer(header(token.replace(".", ".0", 1)[:len(token)]), "10.1.2.3") is None
    expired = pacer.viewer_token("10.1.2.3", now=time.time() - VIEWER_TTL - 1)
    assert pacer.viewer(header(expired), "10.1.2.3") is None
    assert ReadPacer("20/second", ["another key"]).viewer(header(token), "10.1.2.3") is None

    # a viewer with its token is admitted at once while the anonymous bound is spent
    spent = ReadPacer("100/second", ["k1", "k2"], "1/minute")

    async def both():
        assert await spent.admit("10.1.2.3", "/publications") is None  # the minute's one anonymous read
        refusal = await spent.admit("10.7.7.7", "/publications")
        viewer = await spent.admit("10.1.2.3", "/publications", header(spent.viewer_token("10.1.2.3")))
        return refusal, viewer

    refusal, viewer = asyncio.run(both())
    assert refusal is not None and refusal.limit == "1/minute in all" and viewer is None


def test_entities_carry_their_type_and_filter_by_it_over_http(db):
    """Rows carry `label` (the majority of the mentions' labels); ?label= keeps those types, repeated or
    comma-separated, any case; an unknown label is a 400 in the API's JSON error shape."""
    store, path = db
    store.apply(Delta.of("typed", [Aggregate.from_article("Typed Times", [
        ("washington", "GPE"), ("washington", "GPE"), ("washington", "PERSON"), ("nato", "ORG"),
        ("angela merkel", "PERSON"), ("paris", "GPE"), ("paris", "PERSON")])]))
    with build_app(path).test_client() as c:
        everything = c.get("/publications/typed times/entities").get_json()
        assert [(e["entity"], e["label"], e["mentions"]) for e in everything] == [
            ("washington", "GPE", 3), ("paris", "GPE", 2), ("angela merkel", "PERSON", 1), ("nato", "ORG", 1)]
        people = c.get("/publications/Typed Times/entities?label=PERSON").get_json()
        assert [e["entity"] for e in people] == ["angela merkel"]
        for query in ("label=PERSON&label=ORG", "label=person,org", "label=ORG, PERSON"):
            rows = c.get(f"/publications/typed times/entities?{query}").get_json()
            assert [e["entity"] for e in rows] == ["angela merkel", "nato"], query
        assert c.get("/publications/typed times/entities?label=LAW").get_json() == []
        for bad in ("label=PEOPLE", "label=PERSON,", "label="):
            resp = c.get(f"/publications/typed times/entities?{bad}")
            assert resp.status_code == 400, bad
            assert resp.get_json()["error"] == "invalid_parameter" and "PERSON" in resp.get_json()["detail"]
        assert c.get("/publications/nobody/entities?label=PERSON").status_code == 404
        spec = c.get("/openapi.json").get_json()
        [label] = [p for p in spec["paths"]["/publications/{publication}/entities"]["get"]["parameters"]
                   if p["name"] == "label"]
        assert "PERSON" in label["schema"]["items"]["enum"] and "label" in spec["components"]["schemas"][
            "EntityCount"]["properties"]


def test_the_dashboard_offers_a_type_filter_and_shows_each_entity_type(client):
    html = client.get("/").get_data(as_text=True)
    assert '<select id="label-filter">' in html and '<option value="PERSON">PERSON</option>' in html
