"""The dashboard in headless Chromium, served by a real `ingest-frontend` process over a real SQLite file.

Needs the Debian packages `chromium` and `chromium-driver` and selenium from PyPI; without them the
test skips and says why. A screenshot lands in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from ingest.core.models import Aggregate, Delta

from ingest.stores.sqlite import SqliteStore
from tests.support import free_port, stop_process, wait_for
from tests.test_dashboard import ODD_NAMES, XSS_ENTITY, XSS_NAME, populate, publish

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 15  # seconds; the page polls every 3


def _need_browser():
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("SKIPPED LOUDLY: selenium is not installed (pip install selenium); "
                    "no browser test of the dashboard")
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"SKIPPED LOUDLY: {path} not found; apt-get install -y chromium chromium-driver ({pkg})")


def serve(tmp_path, fill=populate, **extra_env):
    """`ingest-frontend` (gunicorn) serving the app on a free loopback port; yields (base URL, the writable store)."""
    db = tmp_path / "ingest.db"
    store = SqliteStore(db)
    fill(store)
    port = free_port()
    env = {
        **os.environ,
        "INGEST_STORE": f"sqlite:///{db}",
        "INGEST_VAR_DIR": str(tmp_path / "var"),
        "INGEST_AUTHKEY": "dashboard-test-authkey",
        "INGEST_MANAGER_ADDRESS": f"127.0.0.1:{free_port()}",  # no backend: reads only
        "INGEST_READ_API_KEYS": "",
        "INGEST_READ_RATE_LIMIT": "2000/second",  # the test's own API calls come from the browser's address too
        "INGEST_PROBE_RATE_LIMIT": "2000/second",
        "INGEST_ANON_RATE_LIMIT": "2000/second",  # the browser loads page, script, styles and pictures at once
        **extra_env,
    }
    log_path = tmp_path / "frontend.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ingest-frontend"), "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise RuntimeError(f"ingest-frontend exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, what="ingest-frontend serving the dashboard")
        yield base, store
    finally:
        stop_process(proc, timeout=10)
        log.close()
        store.close()


@pytest.fixture
def server(tmp_path):
    _need_browser()
    yield from serve(tmp_path)


@pytest.fixture
def protected_server(tmp_path):
    _need_browser()
    yield from serve(tmp_path, INGEST_READ_API_KEYS="read-secret")


def ten_thousand(store: SqliteStore) -> None:
    """10,050 publications, each with its own article count (so the order is the API's, plainly)."""
    posts = []
    for i in range(10_050):
        post = Aggregate.from_article(f"Gazette {i:05d}", [])
        post.articles = 20_000 - i
        post.mentions = {f"topic {i % 7}": 1 + i % 3, "Shared": 1}
        post.entity_articles = dict.fromkeys(post.mentions, 1)
        posts.append(post)
    store.apply(Delta.of(uuid.uuid4().hex, posts))


@pytest.fixture
def crowded_server(tmp_path):
    _need_browser()
    yield from serve(tmp_path, fill=ten_thousand)


@pytest.fixture
def browser(tmp_path):
    _need_browser()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        pytest.skip(f"SKIPPED LOUDLY: Chromium would not start: {exc.msg}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def api(base, path, key=None):
    resp = httpx.get(base + path, timeout=10, headers={"X-API-Key": key} if key else {})
    assert resp.status_code == 200, resp.text
    return resp.json()


def segment(name):
    """Like the page's pubSegment: a leading space keeps '..' or a leading '/' from being folded away."""
    s = quote(name, safe="")
    return "%20" + s if s in (".", "..") or s.startswith("%2F") else s


def entities_api(base, name, limit, offset):
    return api(base, f"/publications/{segment(name)}/entities?limit={limit}&offset={offset}")


def until(driver, predicate, what, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate())
    except Exception as exc:
        raise AssertionError(f"the page did not show {what} within {timeout}s") from exc


def shown_publications(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#publications tbody tr.pub')).map(function (r) {"
        " return {publication: r.querySelector('.pub-name').textContent, articles: +r.dataset.articles,"
        " entities: +r.dataset.entities, mentions: +r.dataset.mentions,"
        " text: Array.from(r.cells).map(function (c) { return c.textContent; })}; })"
    )


def shown_entities(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#chart .bar-row')).map(function (r) {"
        " return {entity: r.querySelector('.name').textContent, mentions: +r.dataset.mentions,"
        " articles: +r.dataset.articles, value: r.querySelector('.value').textContent,"
        " width: parseFloat(r.querySelector('.bar').style.width)}; })"
    )


def text(driver, element_id):
    return driver.find_element("id", element_id).text


def chart_matches(driver, expected):
    rows = shown_entities(driver)
    return [(r["entity"], r["mentions"], r["articles"]) for r in rows] == [
        (e["entity"], e["mentions"], e["articles"]) for e in expected
    ]


def cloud_loaded(driver, version):
    return driver.execute_script(
        "var i = document.getElementById('wordcloud');"
        "return i.complete && i.naturalWidth === 800 && i.dataset.version === arguments[0];",
        version,
    )


def test_dashboard_in_chromium(server, browser):
    base, store = server
    driver = browser
    driver.get(base + "/")
    driver.execute_script("performance.setResourceTimingBufferSize(100000)")

    # the publications table is the read API, row for row, count for count
    publications = api(base, "/publications")
    until(driver,
          lambda: [p["publication"] for p in shown_publications(driver)] == [p["publication"] for p in publications],
          "the publications of GET /publications")
    for shown, expected in zip(shown_publications(driver), publications, strict=True):
        assert {k: shown[k] for k in expected} == expected
        assert shown["text"][1:] == [f"{expected[k]:,}" for k in ("articles", "entities", "mentions")]

    # the busiest publication is chosen first: its top entities as bars, scaled to the top one
    top = publications[0]
    assert top["publication"] == "The Daily Planet"
    first_page = entities_api(base, top["publication"], 20, 0)
    until(driver, lambda: chart_matches(driver, first_page), "the top 20 entities")
    bars = shown_entities(driver)
    assert bars[0]["width"] == 100 and bars[0]["value"] == f"{first_page[0]['mentions']:,}"
    assert 0 < bars[-1]["width"] < bars[0]["width"]
    assert text(driver, "detail-title") == top["publication"]
    assert text(driver, "stat-articles") == f"{top['articles']:,}"
    assert text(driver, "range") == f"1–20 of {top['entities']:,}"
    assert not driver.find_element("id", "next").get_attribute("disabled")
    assert driver.find_element("id", "prev").get_attribute("disabled")
    version = f"{top['articles']}-{top['mentions']}"
    until(driver, lambda: cloud_loaded(driver, version), "the word cloud")

    # paging: Next, Next, Prev — each page the read API's page at that offset
    for click, offset in (("next", 20), ("next", 40), ("prev", 20)):
        driver.find_element("id", click).click()
        expected = entities_api(base, top["publication"], 20, offset)
        until(driver, lambda expected=expected: chart_matches(driver, expected), f"entities {offset + 1}-{offset + 20}")
        assert text(driver, "range") == f"{offset + 1}–{offset + 20} of {top['entities']:,}"
        assert shown_entities(driver)[0]["width"] < 100  # still scaled to the #1 entity

    # a bigger page, then the last page: Next is disabled there
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "page-size")).select_by_visible_text("100")
    expected = entities_api(base, top["publication"], 100, 0)
    until(driver, lambda: chart_matches(driver, expected), "100 entities")

    # odd names (slashes, dots, unicode) and an XSS attempt are shown as text and read correctly
    for name in ODD_NAMES + [XSS_NAME]:
        row = next(r for r in driver.find_elements("css selector", "#publications tr.pub")
                   if r.get_attribute("data-publication") == name)
        row.find_element("css selector", ".pub-name").click()
        expected = entities_api(base, name, 100, 0)
        until(driver, lambda name=name, expected=expected:
              text(driver, "detail-title") == name and chart_matches(driver, expected), f"the entities of {name!r}")
        pub = next(p for p in publications if p["publication"] == name)
        until(driver, lambda pub=pub: cloud_loaded(driver, f"{pub['articles']}-{pub['mentions']}"),
              f"the cloud of {name!r}")
        assert driver.find_element("id", "error").get_attribute("hidden")
    assert XSS_ENTITY in [e["entity"] for e in shown_entities(driver)]
    assert driver.execute_script("return window.__xss === undefined")

    # live refresh: counts change while the page is open; table, stats and cloud follow
    driver.find_element("css selector", "#publications tr.pub .pub-name").click()  # The Daily Planet
    until(driver, lambda: text(driver, "detail-title") == "The Daily Planet", "The Daily Planet again")
    requests_before = cloud_requests(driver)
    publish(store, "The Daily Planet", [{"Breaking News Entity": 100000}])
    updated = next(p for p in api(base, "/publications") if p["publication"] == "The Daily Planet")
    until(driver, lambda: text(driver, "stat-articles") == f"{updated['articles']:,}", "the new article count")
    until(driver, lambda: shown_entities(driver)[0]["entity"] == "Breaking News Entity", "the new top entity")
    until(driver, lambda: cloud_loaded(driver, f"{updated['articles']}-{updated['mentions']}"), "the new word cloud",
          timeout=25)  # the page re-fetches one publication's cloud at most every 10 s
    assert cloud_requests(driver) == requests_before + 1
    # counts unchanged for two more polls: the cloud is not fetched again
    polls = publication_polls(driver)
    until(driver, lambda: publication_polls(driver) >= polls + 2, "two more polls")
    assert cloud_requests(driver) == requests_before + 1

    assert console_errors(driver) == []  # no script errors, no CSP violations

    driver.execute_script("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    driver.get_screenshot_as_file(str(ARTIFACTS / "dashboard.png"))


def console_errors(driver):
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]


def resource_urls(driver):
    return driver.execute_script("return performance.getEntriesByType('resource').map(function (e) { return e.name; })")


def cloud_requests(driver):
    return sum(1 for u in resource_urls(driver) if "/dashboard/wordcloud.png" in u)


def publication_polls(driver):
    return sum(1 for u in resource_urls(driver) if "/publications?limit=" in u)  # the table's page, each poll


def test_dashboard_asks_for_the_read_key(protected_server, browser):
    """Reads protected: the page says so, takes the key, and then shows what the API answers with it."""
    base, _ = protected_server
    driver = browser
    driver.get(base + "/")
    until(driver, lambda: driver.find_element("id", "auth").is_displayed(), "the API-key form")
    assert text(driver, "status") == "Waiting for an API key"
    assert not shown_publications(driver)

    driver.find_element("id", "auth-key").send_keys("wrong")
    driver.find_element("css selector", "#auth-form button").click()
    until(driver, lambda: text(driver, "auth-why") == "The key given was not accepted (401).", "the wrong key refused")
    assert not shown_publications(driver)
    field = driver.find_element("id", "auth-key")
    field.clear()
    field.send_keys("read-secret")
    driver.find_element("css selector", "#auth-form button").click()

    publications = api(base, "/publications", key="read-secret")
    until(driver,
          lambda: [p["publication"] for p in shown_publications(driver)] == [p["publication"] for p in publications],
          "the publications once the key is given")
    assert not driver.find_element("id", "auth").is_displayed()
    top = publications[0]
    expected = api(base, f"/publications/{segment(top['publication'])}/entities?limit=20&offset=0", key="read-secret")
    until(driver, lambda: chart_matches(driver, expected), "the top entities with the key")
    until(driver, lambda: cloud_loaded(driver, f"{top['articles']}-{top['mentions']}"),
          "the word cloud fetched with the key")
    assert driver.find_element("id", "wordcloud").get_attribute("src").startswith("blob:")
    # the two refused reads are the only errors on the console
    assert all("401" in message for message in console_errors(driver)), console_errors(driver)


def test_interactive_api_docs_render_under_their_content_security_policy(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = server
    spec = api(base, "/openapi.json")
    assert spec["openapi"].startswith("3.1") and "/post/enqueue" in spec["paths"]
    response = httpx.get(base + "/docs", timeout=10)
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    browser.get(base + "/docs")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    text = browser.find_element(By.CSS_SELECTOR, ".swagger-ui").text
    assert "ingestiond" in text and "/post/enqueue" in text and "/publications/{publication}/entities" in text
    violations = [e for e in browser.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert violations == [], violations
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "docs.png"))


def test_dashboard_with_10000_publications_pages_its_table(crowded_server, browser):
    """The page carries one page of the table (not 10,000 rows), pages through the API, and follows a
    publication chosen from deep in the list."""
    base, _ = crowded_server
    html = httpx.get(base + "/", timeout=10)
    assert html.status_code == 200 and len(html.content) < 100_000, f"{len(html.content):,} bytes of HTML"
    assert html.text.count('class="pub"') == 100
    driver = browser
    driver.get(base + "/")
    first = api(base, "/publications?limit=100&offset=0")
    until(driver, lambda: [p["publication"] for p in shown_publications(driver)] == [p["publication"] for p in first],
          "the first 100 publications")
    until(driver, lambda: "publications 1–100 of more" in text(driver, "status"), "the paged status")
    assert driver.find_element("id", "pubs-prev").get_attribute("disabled")
    driver.find_element("id", "pubs-next").click()
    second = api(base, "/publications?limit=100&offset=100")
    until(driver, lambda: [p["publication"] for p in shown_publications(driver)] == [p["publication"] for p in second],
          "publications 101-200")
    assert text(driver, "pubs-range") == "101–200"

    # a publication far down the list, chosen by its URL: shown with its own counts, off the table's page
    deep = api(base, "/publications?limit=1&offset=7321")[0]
    driver.get(base + "/#publication=" + quote(deep["publication"]))
    driver.refresh()
    until(driver, lambda: text(driver, "detail-title") == deep["publication"], "the deep publication's detail")
    until(driver, lambda: text(driver, "stat-articles") == f"{deep['articles']:,}", "its article count")
    expected = entities_api(base, deep["publication"], 20, 0)
    until(driver, lambda: chart_matches(driver, expected), "its entities")
    assert driver.find_element("id", "error").get_attribute("hidden")
    # the last page: Next is disabled
    driver.get(base + "/#pubs=10000")
    driver.refresh()
    last = api(base, "/publications?limit=100&offset=10000")
    until(driver, lambda: [p["publication"] for p in shown_publications(driver)] == [p["publication"] for p in last],
          "the last 50 publications")
    assert driver.find_element("id", "pubs-next").get_attribute("disabled")
    assert console_errors(driver) == []


class Crowd:
    """Sixteen keyless clients from 127.0.0.2-17, each looping on the read API (the next request as
    soon as the last is answered) until stopped: their statuses."""

    def __init__(self, base: str, paths):
        import asyncio
        import threading

        self.statuses: list[int] = []
        self.stop = threading.Event()

        async def client(source: str):
            transport = httpx.AsyncHTTPTransport(local_address=source)
            async with httpx.AsyncClient(base_url=base, timeout=10, transport=transport) as http:
                for i in itertools.count():
                    if self.stop.is_set():
                        return
                    self.statuses.append((await http.get(paths[i % len(paths)])).status_code)

        async def all_of_them():
            await asyncio.gather(*(client(f"127.0.0.{n}") for n in range(2, 18)))

        self.thread = threading.Thread(target=asyncio.run, args=(all_of_them(),), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def server_at_shipped_limits(tmp_path):
    _need_browser()
    from tests.test_hostile import shipped_limits

    yield from serve(tmp_path, INGEST_API_KEYS="write-secret", **shipped_limits())


def test_the_dashboard_loads_with_no_error_banner_while_16_keyless_clients_hammer_the_read_api(
        server_at_shipped_limits, browser, tmp_path):
    """The dashboard's own viewer is not one of the crowd: its page loads in a line of its own, and
    its reads carry the page's viewer token, so none is refused while sixteen keyless clients loop
    on the read API and are held and refused by the anonymous bounds (before: a red 429 banner)."""
    base, _ = server_at_shipped_limits
    driver = browser
    crowd = Crowd(base, ("/publications", "/publications/The%20Daily%20Planet/entities?limit=20"))
    try:
        wait_for(lambda: crowd.statuses.count(429) >= 16, timeout=30, what="the crowd to be refused")
        driver.get(base + "/")
        until(driver, lambda: text(driver, "detail-title") == "The Daily Planet", "the busiest publication")
        until(driver, lambda: len(shown_entities(driver)) == 20, "its top 20 entities")
        # the page keeps polling: wait for three more of its reads of /publications to be answered
        log = tmp_path / "frontend.log"
        answered = lambda: len(re.findall(r'127\.0\.0\.1 "GET /publications\?\S* HTTP/1\.1" 200 ', log.read_text()))  # noqa: E731
        seen = answered()
        until(driver, lambda: answered() >= seen + 3, "three more polls answered", timeout=30)
        refused_meanwhile = crowd.statuses.count(429)
    finally:
        crowd.close()
    assert driver.find_element("id", "error").get_attribute("hidden") is not None, text(driver, "error")
    network = [e["message"] for e in driver.get_log("browser") if "status of" in e["message"]]
    assert not network, network  # no 429 (nor a 404 for /favicon.ico) in the browser's console
    assert refused_meanwhile > 16, "the crowd was really refused while the page polled"


def typed(store: SqliteStore) -> None:
    """One publication whose entities have types: 25 people, 5 organisations, one place named like a person."""
    mentions = [(f"person {i:02d}", "PERSON") for i in range(25) for _ in range(1 + i % 4)]
    mentions += [(f"org {i}", "ORG") for i in range(5) for _ in range(3)]
    mentions += [("washington", "GPE")] * 9 + [("washington", "PERSON")] * 2
    store.apply(Delta.of(uuid.uuid4().hex, [Aggregate.from_article("Typed Times", mentions)]))


@pytest.fixture
def typed_server(tmp_path):
    _need_browser()
    yield from serve(tmp_path, fill=typed)


def test_the_dashboard_shows_each_entity_type_and_filters_by_it(typed_server, browser):
    from selenium.webdriver.support.ui import Select

    base, _ = typed_server
    driver = browser
    driver.get(base + "/")

    def rows():
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('#chart .bar-row')).map(function (r) {"
            " var t = r.querySelector('.type'); return [r.querySelector('.name').textContent,"
            " t ? t.textContent : '', +r.dataset.mentions]; })")

    every = api(base, "/publications/Typed%20Times/entities?limit=20")
    until(driver, lambda: rows() == [[e["entity"], e["label"], e["mentions"]] for e in every],
          "the entities with types")
    assert rows()[0] == ["washington", "GPE", 11]

    Select(driver.find_element("id", "label-filter")).select_by_visible_text("PERSON")
    people = api(base, "/publications/Typed%20Times/entities?limit=20&label=PERSON")
    assert len(people) == 20 and {e["label"] for e in people} == {"PERSON"}
    until(driver, lambda: rows() == [[e["entity"], "PERSON", e["mentions"]] for e in people], "only people")
    assert text(driver, "range") == "1–20" and not driver.find_element("id", "next").get_attribute("disabled")
    driver.find_element("id", "next").click()
    rest = api(base, "/publications/Typed%20Times/entities?limit=20&offset=20&label=PERSON")
    until(driver, lambda: rows() == [[e["entity"], "PERSON", e["mentions"]] for e in rest], "the other people")
    assert len(rest) == 5 and driver.find_element("id", "next").get_attribute("disabled")
    assert "label=PERSON" in driver.current_url  # a reload keeps the filter

    Select(driver.find_element("id", "label-filter")).select_by_visible_text("ORG")
    until(driver, lambda: [r[1] for r in rows()] == ["ORG"] * 5, "the organisations")
    assert console_errors(driver) == []


def dated(store: SqliteStore) -> None:
    """One publication over 28 days: Angela Merkel every day, Zelda Fitzgerald only in the last 7."""
    from datetime import date, timedelta

    aggregates = []
    for n in range(28):
        day = (date(2017, 2, 1) + timedelta(days=n)).isoformat()
        for k in range(4):
            mentions = [("angela merkel", "PERSON"), ("berlin", "GPE")]
            if n >= 21 and k < 3:
                mentions.append(("zelda fitzgerald", "PERSON"))
            aggregates.append(Aggregate.from_article("Dated Daily", mentions, day))
    store.apply(Delta.of(uuid.uuid4().hex, aggregates))


@pytest.fixture
def dated_server(tmp_path):
    _need_browser()
    yield from serve(tmp_path, fill=dated)


def test_the_dashboard_shows_a_window_the_daily_chart_and_what_rose(dated_server, browser):
    """The window selector narrows the entity list to days ending with the publication's latest day;
    the chart draws the top entities' daily articles; the rising list puts the new name first."""
    from selenium.webdriver.support.ui import Select

    base, _ = dated_server
    driver = browser
    driver.get(base + "/")
    lines = "return Array.from(document.querySelectorAll('#timeline polyline')).map(l => l.dataset.entity)"
    until(driver, lambda: driver.execute_script(lines) == ["angela merkel", "berlin", "zelda fitzgerald"],
          "the daily chart of the top entities")
    points = driver.execute_script("return document.querySelector('#timeline polyline').getAttribute('points')")
    assert len(points.split()) == 90, "all time draws the 90 days ending with the latest day"
    rising = "return Array.from(document.querySelectorAll('#rising li')).map(l => l.dataset.entity)"
    until(driver, lambda: driver.execute_script(rising)[:1] == ["zelda fitzgerald"], "the rising list")
    assert "angela merkel" not in driver.execute_script(rising)

    Select(driver.find_element("id", "window")).select_by_visible_text("7 days")
    want = api(base, "/publications/Dated%20Daily/entities?since=2017-02-22&until=2017-02-28")
    assert [e["mentions"] for e in want] == [28, 28, 21]
    until(driver, lambda: [r[2] for r in driver.execute_script(
        "return Array.from(document.querySelectorAll('#chart .bar-row')).map(r => [r.dataset.entity, r.dataset.label,"
        " +r.dataset.mentions])")] == [28, 28, 21], "the 7-day window's counts")
    until(driver, lambda: len(driver.execute_script(
        "return document.querySelector('#timeline polyline').getAttribute('points')").split()) == 7, "a 7-day chart")
    assert "window=7" in driver.current_url and text(driver, "range") == "1–3"
    driver.get_screenshot_as_file(str(ARTIFACTS / "dashboard-time.png"))
    assert console_errors(driver) == []
