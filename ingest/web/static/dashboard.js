/* ingestiond dashboard: polls the JSON read API and draws what it answers.
 *
 * Everything user-supplied (publication and entity names) goes into the page through
 * textContent or attributes, never innerHTML. Entities are read one page at a time.
 */
(function () {
  "use strict";

  var body = document.body;
  var API = body.dataset.apiRoot || "";
  var CLOUD_URL = body.dataset.wordcloudUrl;
  var POLL_MS = Math.max(1, Number(body.dataset.pollSeconds) || 3) * 1000;
  var KEY_STORAGE = "ingest.readKey";
  // The page's own reads carry this signed token, so the server's pacing of keyless clients never
  // puts this page behind a crowd of them (pacing.py); it lasts 10 minutes and is renewed every 4.
  var viewerToken = body.dataset.viewerToken || "";
  var RENEW_URL = body.dataset.viewerRenewUrl;
  var RENEW_MS = 4 * 60 * 1000;
  var PUB_PAGE = 100;        // rows of the publications table; a page of the API, never the whole list
  var CLOUD_MIN_MS = 10000;  // while counts climb, re-render the same publication's cloud at most this often
  var fmt = new Intl.NumberFormat("en-US");

  var state = {
    publications: [],    // the table's page, and the chosen publication if it is on another page
    pubsJSON: null,
    pubOffset: 0,        // first row of the table's page
    pubMore: false,      // the API has rows after this page
    selected: null,      // display name of the chosen publication
    offset: 0,
    limit: 20,
    label: "",           // only entities of this type (PERSON, ORG, ...); "" for every type
    window: "",          // "7", "30", "90": the entity list counts that many days ending with the latest; "" all time
    latest: null,        // the chosen publication's latest day with data (YYYY-MM-DD)
    timeShown: null,     // what the chart and the rising list on screen were drawn for
    shown: null,         // "name|articles|mentions|offset|limit|label" of the page on screen
    topMentions: 1,      // mentions of the publication's #1 entity: the bars' full scale
    cloudFor: null,      // "name|articles-mentions" of the cloud on screen
    cloudObjectURL: null,
    cloudPub: null,      // publication of the cloud on screen, and when it was requested
    cloudAt: 0,
    seq: 0,
    timer: null,
    busy: false,
    again: false,
  };

  function $(id) { return document.getElementById(id); }

  function pubKey(name) {
    return String(name).trim().split(/\s+/).join(" ").toLowerCase();
  }

  /* One path segment for a publication. A segment that is "." or ".." (or starts with "/")
   * would be folded away by URL normalisation; a leading space keeps it intact and the
   * server ignores it, since publications are looked up by their whitespace-normalised key. */
  function pubSegment(name) {
    var s = encodeURIComponent(name);
    if (s === "." || s === ".." || s.indexOf("%2F") === 0) s = "%20" + s;
    return s;
  }

  function readKey() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
  }

  function headers() {
    var key = readKey();
    var h = key ? { "X-API-Key": key } : {};
    if (viewerToken) h["X-Viewer-Token"] = viewerToken;
    return h;
  }

  function renewViewerToken() {
    fetch(RENEW_URL, { headers: headers(), cache: "no-store" }).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (data) {
      if (data && data.token) viewerToken = data.token;
    }).catch(function () { /* the next renewal tries again; reads go on meanwhile */ });
  }

  function AuthError() { this.message = "unauthorized"; }

  function api(path) {
    return fetch(API + path, { headers: headers(), cache: "no-store" }).then(function (r) {
      if (r.status === 401) { showAuth(true); throw new AuthError(); }
      showAuth(false);
      return r.json().catch(function () { return null; }).then(function (data) {
        if (!r.ok) {
          var detail = data && (data.detail || data.error) ? (data.detail || data.error) : r.statusText;
          var err = new Error("HTTP " + r.status + ": " + detail);
          err.status = r.status;
          throw err;
        }
        return data;
      });
    });
  }

  function showAuth(on) {
    $("auth").hidden = !on;
    if (on) $("auth-why").textContent = readKey() ? "The key given was not accepted (401)." : "The read API answered 401 Unauthorized.";
  }

  function showError(text) {
    var box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function setStatus(text, ok) {
    $("status").textContent = text;
    $("live-dot").className = "dot" + (ok ? " ok" : " bad");
  }

  // ---- URL hash: #publication=NAME&offset=N&limit=N&pubs=N keeps the view across reloads ----
  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (p.has("publication")) state.selected = p.get("publication");
    var off = parseInt(p.get("offset"), 10);
    var lim = parseInt(p.get("limit"), 10);
    state.offset = off >= 0 ? off : 0;
    var pubs = parseInt(p.get("pubs"), 10);
    state.pubOffset = pubs >= 0 ? pubs - pubs % PUB_PAGE : 0;
    if ([10, 20, 50, 100].indexOf(lim) >= 0) state.limit = lim;
    $("page-size").value = String(state.limit);
    var win = p.get("window") || "";
    state.window = ["7", "30", "90"].indexOf(win) >= 0 ? win : "";
    $("window").value = state.window;
    var label = p.get("label") || "";
    state.label = $("label-filter").querySelector('option[value="' + label.replace(/[^A-Z_]/g, "") + '"]') ? label : "";
    $("label-filter").value = state.label;
  }

  function writeHash() {
    var p = new URLSearchParams();
    p.set("publication", state.selected);
    if (state.offset) p.set("offset", String(state.offset));
    if (state.limit !== 20) p.set("limit", String(state.limit));
    if (state.label) p.set("label", state.label);
    if (state.window) p.set("window", state.window);
    if (state.pubOffset) p.set("pubs", String(state.pubOffset));
    history.replaceState(null, "", "#" + p.toString());
  }

  // ---- publications table ----
  function renderPublications(pubs) {
    var json = JSON.stringify(pubs);
    if (json !== state.pubsJSON) {
      state.pubsJSON = json;
      var tbody = $("publications").tBodies[0];
      var rows = document.createDocumentFragment();
      pubs.forEach(function (p) {
        var tr = document.createElement("tr");
        tr.className = "pub";
        tr.dataset.publication = p.publication;
        tr.dataset.articles = p.articles;
        tr.dataset.entities = p.entities;
        tr.dataset.mentions = p.mentions;
        var td = document.createElement("td");
        var btn = document.createElement("button");
        btn.type = "button";
        btn.className = "pub-name";
        btn.textContent = p.publication;
        btn.title = p.publication;
        td.appendChild(btn);
        tr.appendChild(td);
        [p.articles, p.entities, p.mentions].forEach(function (n) {
          var c = document.createElement("td");
          c.className = "num";
          c.textContent = fmt.format(n);
          tr.appendChild(c);
        });
        rows.appendChild(tr);
      });
      tbody.replaceChildren(rows);
    }
    $("pubs-empty").hidden = pubs.length > 0 || state.pubOffset > 0;
    $("pubs-pager").hidden = state.pubOffset === 0 && !state.pubMore;
    $("pubs-prev").disabled = state.pubOffset === 0;
    $("pubs-next").disabled = !state.pubMore;
    $("pubs-range").textContent = pubs.length ? (state.pubOffset + 1) + "\u2013" + (state.pubOffset + pubs.length) : "none";
    markSelected();
  }

  function pubsStatus(pubs) {
    if (state.pubOffset === 0 && !state.pubMore) return pubs.length + " publications";
    return "publications " + (state.pubOffset + 1) + "\u2013" + (state.pubOffset + pubs.length) +
      (state.pubMore ? " of more" : "");
  }

  /* The table shows one page; the chosen publication may be on another one: ask for it by name. */
  function withSelected(pubs) {
    if (state.selected === null) return Promise.resolve(pubs);
    var key = pubKey(state.selected);
    if (pubs.some(function (p) { return pubKey(p.publication) === key; })) return Promise.resolve(pubs);
    return api("/publications?publication=" + encodeURIComponent(state.selected)).then(function (found) {
      return pubs.concat(found);
    });
  }

  function markSelected() {
    var rows = $("publications").tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var on = rows[i].dataset.publication === state.selected;
      rows[i].classList.toggle("selected", on);
      if (on) rows[i].setAttribute("aria-current", "true"); else rows[i].removeAttribute("aria-current");
    }
  }

  function findSelected() {
    if (state.selected === null) return null;
    var exact = state.publications.filter(function (p) { return p.publication === state.selected; })[0];
    if (exact) return exact;
    var key = pubKey(state.selected);
    return state.publications.filter(function (p) { return pubKey(p.publication) === key; })[0] || null;
  }

  // ---- the chosen publication: stats, bars, pager, cloud ----
  function renderDetail(pub, entities) {
    $("detail").hidden = false;
    $("detail-title").textContent = pub.publication;
    $("detail-title").title = pub.publication;
    $("stat-articles").textContent = fmt.format(pub.articles);
    $("stat-entities").textContent = fmt.format(pub.entities);
    $("stat-mentions").textContent = fmt.format(pub.mentions);

    var chart = $("chart");
    var frag = document.createDocumentFragment();
    var scale = Math.max(state.topMentions, entities.length ? entities[0].mentions : 1, 1);
    entities.forEach(function (e, i) {
      var row = document.createElement("div");
      row.className = "bar-row";
      row.setAttribute("role", "listitem");
      row.dataset.entity = e.entity;
      row.dataset.label = e.label || "";
      row.dataset.mentions = e.mentions;
      row.dataset.articles = e.articles;
      var rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = String(state.offset + i + 1);
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = e.entity;
      name.title = e.entity + (e.label ? " (" + e.label + ")" : "") + " — " + fmt.format(e.mentions) +
        " mentions in " + fmt.format(e.articles) + " articles";
      var who = document.createElement("span");  // the grid's name cell: the type, then the name
      who.className = "who";
      if (e.label) {
        var type = document.createElement("span");
        type.className = "type";
        type.textContent = e.label;
        who.appendChild(type);
      }
      who.appendChild(name);
      var track = document.createElement("span");
      track.className = "track";
      var bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.max(0.5, (100 * e.mentions) / scale).toFixed(2) + "%";
      track.appendChild(bar);
      var value = document.createElement("span");
      value.className = "value";
      value.textContent = fmt.format(e.mentions);
      var arts = document.createElement("span");
      arts.className = "articles";
      arts.textContent = fmt.format(e.articles);
      row.append(rank, who, track, value, arts);
      frag.appendChild(row);
    });
    chart.replaceChildren(frag);
    $("chart-empty").hidden = entities.length > 0;

    var first = entities.length ? state.offset + 1 : 0;
    var last = state.offset + entities.length;
    // filtered by type or a window, the total is not known: a full page may have a next one
    var total = state.label || state.window ? "" : " of " + fmt.format(pub.entities);
    $("range").textContent = entities.length ? fmt.format(first) + "–" + fmt.format(last) + total : "0" + total;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.label || state.window ? entities.length < state.limit
                                                     : state.offset + state.limit >= pub.entities;
    updateCloud(pub);
  }

  function updateCloud(pub) {
    var version = pub.articles + "-" + pub.mentions;
    var id = pub.publication + "|" + version;
    if (state.cloudFor === id) return;  // counts unchanged: keep the picture we have
    var now = Date.now();
    if (state.cloudPub === pub.publication && now - state.cloudAt < CLOUD_MIN_MS) return;  // a later poll catches up
    state.cloudFor = id;
    state.cloudPub = pub.publication;
    state.cloudAt = now;
    var img = $("wordcloud");
    var url = CLOUD_URL + "?publication=" + encodeURIComponent(pub.publication) + "&v=" + encodeURIComponent(version);
    img.alt = "Word cloud of the top entities of " + pub.publication;
    $("cloud-note").textContent = "as of " + fmt.format(pub.articles) + " articles, " + fmt.format(pub.mentions) + " mentions";
    var key = readKey();
    if (!key && !viewerToken) { img.dataset.version = version; img.src = url; return; }
    // An <img> cannot send a header: fetch the picture with the key (or token) and show it from a blob.
    fetch(url, { headers: headers() }).then(function (r) {
      if (!r.ok) throw new Error("word cloud: HTTP " + r.status);
      return r.blob();
    }).then(function (blob) {
      if (state.cloudFor !== id) return;
      if (state.cloudObjectURL) URL.revokeObjectURL(state.cloudObjectURL);
      state.cloudObjectURL = URL.createObjectURL(blob);
      img.dataset.version = version;  // the version on screen, once it is
      img.src = state.cloudObjectURL;
    }).catch(function (e) { state.cloudFor = state.cloudPub = null; showError(e.message); });
  }

  // ---- time: a window of days ending with the publication's latest day ----
  function addDays(day, n) {
    var d = new Date(day + "T00:00:00Z");
    d.setUTCDate(d.getUTCDate() + n);
    return d.toISOString().slice(0, 10);
  }

  function windowQuery(days) {
    if (!days || !state.latest) return "";
    return "&since=" + addDays(state.latest, 1 - Number(days)) + "&until=" + state.latest;
  }

  function latestDay(pub) {
    // the series' default window ends with the publication's latest day with data
    return api("/publications/" + pubSegment(pub.publication) + "/days").then(function (rows) {
      var last = rows.length ? rows[rows.length - 1].day : null;
      return last;
    });
  }

  function entitiesPath(name, limit, offset) {
    return "/publications/" + pubSegment(name) + "/entities?limit=" + limit + "&offset=" + offset +
      (state.label ? "&label=" + encodeURIComponent(state.label) : "") + windowQuery(state.window);
  }

  function loadDetail(pub, force) {
    var shown = [pub.publication, pub.articles, pub.mentions, state.offset, state.limit, state.label,
                 state.window].join("|");
    if (!force && shown === state.shown) return Promise.resolve();
    var seq = ++state.seq;
    return latestDay(pub).then(function (latest) {
      state.latest = latest;
      var page = api(entitiesPath(pub.publication, state.limit, state.offset));
      var top = state.offset > 0 ? api(entitiesPath(pub.publication, 1, 0)) : page;
      return Promise.all([page, top]);
    }).then(function (res) {
      if (seq !== state.seq) return;  // a newer choice was made while this was in flight
      state.topMentions = res[1].length ? res[1][0].mentions : 1;
      state.shown = shown;
      renderDetail(pub, res[0]);
      loadTime(pub, res[0], seq);
    });
  }

  // The chart: the daily articles of the page's top 5 entities over the window (all time: the 90 days
  // ending with the latest day); the rising list: the window's days against as many before (all time: 7).
  function loadTime(pub, entities, seq) {
    if (!state.latest) { $("timeline").replaceChildren(); $("rising").replaceChildren(); return; }
    var days = Number(state.window || 90);
    var since = addDays(state.latest, 1 - days);
    var top = entities.slice(0, 5);
    var base = "/publications/" + pubSegment(pub.publication);
    var series = top.map(function (e) {
      return api(base + "/entities/" + encodeURIComponent(e.entity) + "/days?since=" + since + "&until=" + state.latest);
    });
    var rising = api(base + "/rising?days=" + (state.window || 7) + "&until=" + state.latest + "&limit=10");
    Promise.all([Promise.all(series), rising]).then(function (res) {
      if (seq !== state.seq) return;
      var dayList = res[0].length ? res[0][0].map(function (r) { return r.day; }) : [];
      window.IngestTimeline.draw($("timeline"), dayList, res[0].map(function (rows, i) {
        return { name: top[i].entity, values: rows.map(function (r) { return r.articles; }) };
      }));
      $("timeline-note").textContent = "top entities, " + since + " to " + state.latest;
      renderRising(res[1]);
    }).catch(function (e) { if (!(e instanceof AuthError)) showError(e.message); });
  }

  function renderRising(rows) {
    var list = $("rising");
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) {
      var item = document.createElement("li");
      item.dataset.entity = r.entity;
      item.textContent = r.entity + " — " + fmt.format(r.articles_now) + " articles (before: " +
        fmt.format(r.articles_before) + ")";
      var score = document.createElement("span");
      score.className = "score";
      score.textContent = "z " + r.score.toFixed(1);
      item.appendChild(score);
      frag.appendChild(item);
    });
    list.replaceChildren(frag);
    $("rising-empty").hidden = rows.length > 0;
    $("rising-note").textContent = "last " + (state.window || 7) + " days vs the " + (state.window || 7) +
      " before, to " + state.latest;
  }

  // ---- the poll loop ----
  function refresh(force) {
    if (state.busy) { state.again = true; return Promise.resolve(); }  // run once more when done
    state.busy = true;
    var page;
    return api("/publications?limit=" + (PUB_PAGE + 1) + "&offset=" + state.pubOffset).then(function (rows) {
      state.pubMore = rows.length > PUB_PAGE;
      page = rows.slice(0, PUB_PAGE);
      if (state.selected === null && page.length) state.selected = page[0].publication;
      renderPublications(page);
      return withSelected(page);
    }).then(function (pubs) {
      state.publications = pubs;
      var pub = findSelected();
      if (pub) {
        state.selected = pub.publication;
        markSelected();
        return loadDetail(pub, force).then(function () {
          updateCloud(pub);  // a no-op unless the counts moved since the picture on screen
          showError("");
          setStatus("Updated " + new Date().toLocaleTimeString() + " · " + pubsStatus(page), true);
        });
      }
      if (state.selected !== null && (page.length || state.pubOffset)) {
        showError("Publication \u201c" + state.selected + "\u201d not found.");
      }
      $("detail").hidden = true;
      setStatus("Updated " + new Date().toLocaleTimeString() + " · " + pubsStatus(page), true);
    }).catch(function (e) {
      if (e instanceof AuthError) { setStatus("Waiting for an API key", false); return; }
      showError("Could not read counts: " + e.message + (e.status ? "" : " (is the frontend up?)"));
      setStatus("Read failed; retrying", false);
    }).then(function () {
      state.busy = false;
      if (state.again) { state.again = false; return refresh(true); }
    });
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(function () {
      var go = $("live").checked && !document.hidden;
      (go ? refresh(false) : Promise.resolve()).then(schedule);
    }, POLL_MS);
  }

  function choose(name) {
    state.selected = name;
    state.offset = 0;
    state.shown = null;
    writeHash();
    markSelected();
    var pub = findSelected();
    if (pub) loadDetail(pub, true).catch(function (e) { if (!(e instanceof AuthError)) showError(e.message); });
  }

  function page(delta) {
    var pub = findSelected();
    if (!pub) return;
    state.offset = Math.max(0, state.offset + delta * state.limit);
    writeHash();
    loadDetail(pub, true).catch(function (e) { if (!(e instanceof AuthError)) showError(e.message); });
  }

  // ---- wiring ----
  $("publications").addEventListener("click", function (ev) {
    var row = ev.target.closest("tr.pub");
    if (row) choose(row.dataset.publication);
  });
  function pubPage(delta) {
    state.pubOffset = Math.max(0, state.pubOffset + delta * PUB_PAGE);
    writeHash();
    refresh(true);
  }

  $("pubs-prev").addEventListener("click", function () { pubPage(-1); });
  $("pubs-next").addEventListener("click", function () { pubPage(1); });
  $("prev").addEventListener("click", function () { page(-1); });
  $("next").addEventListener("click", function () { page(1); });
  $("page-size").addEventListener("change", function () {
    state.limit = Number(this.value);
    state.offset = 0;
    writeHash();
    var pub = findSelected();
    if (pub) loadDetail(pub, true);
  });
  $("label-filter").addEventListener("change", function () {
    state.label = this.value;
    state.offset = 0;
    writeHash();
    var pub = findSelected();
    if (pub) loadDetail(pub, true).catch(function (e) { if (!(e instanceof AuthError)) showError(e.message); });
  });
  $("window").addEventListener("change", function () {
    state.window = this.value;
    state.offset = 0;
    writeHash();
    var pub = findSelected();
    if (pub) loadDetail(pub, true).catch(function (e) { if (!(e instanceof AuthError)) showError(e.message); });
  });
  $("live").addEventListener("change", function () { if (this.checked) refresh(false); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(false); });
  window.addEventListener("hashchange", function () { readHash(); state.shown = null; refresh(true); });
  $("auth-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    try { sessionStorage.setItem(KEY_STORAGE, $("auth-key").value); } catch (e) { /* private mode */ }
    state.cloudFor = state.cloudPub = null;
    refresh(true);
  });

  readHash();
  if (viewerToken && RENEW_URL) setInterval(renewViewerToken, RENEW_MS);
  refresh(true).then(schedule);
})();
