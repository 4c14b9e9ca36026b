"""Reads over time in the packed layout (CONTRACT.md, "Time"): the writers' day documents, by window.

`pubs/{pub}/days/{writer}-{day}[-{n}]` (written by packed.py in the same commits as the shards) hold
what one writer added to one publication on one UTC day. A window of one publication is one range
query on `day` in its `days` collection; across publications, the same on the collection group. Each
document read is counted in the process's `Reads.doc_reads` (Firestore bills each). The answers have
the shapes of the SQLite store's (stores/sqlite.py): a label is the entity's all-time majority label
(naming.majority_label), in that publication or summed over all of them.
"""

from __future__ import annotations

from ...core.days import Window, rising_score, rising_windows, series_window
from ...core.naming import majority_label
from ...core.rules import publication_key
from .common import DAYS, translated
from .packed import PackedLayout, parse_day, slot

DAY_FIELDS = ["key", "writer", "day", "n", "articles", "mentions"]


def _range(query, window: Window):
    from google.cloud.firestore_v1.base_query import FieldFilter

    if window.since is not None:
        query = query.where(filter=FieldFilter("day", ">=", window.since))
    if window.until is not None:
        query = query.where(filter=FieldFilter("day", "<=", window.until))
    return query


def _ranked(totals: dict, labels: dict, wanted: frozenset[str] | None, limit: int, offset: int) -> list[dict]:
    """Rows by mentions desc, entity asc; `wanted` keeps the labels asked for; then the page."""
    rows = [{"entity": e, "label": majority_label(labels.get(e) or {}), "mentions": m, "articles": a,
             "publications": len(pubs)} for e, (m, a, pubs) in totals.items()]
    if wanted is not None:
        rows = [r for r in rows if r["label"] in wanted]
    rows.sort(key=lambda r: (-r["mentions"], r["entity"]))
    return rows[offset:offset + limit]


class DayReads:
    """The time reads of one PackedLayout (the store hands them here)."""

    def __init__(self, layout: PackedLayout):
        self.layout = layout

    @property
    def conn(self):
        return self.layout.conn

    def docs(self, key: str | None, window: Window, fields: list[str] | None = None) -> list[dict]:
        """The day documents of one publication (or all) in the window."""
        db = self.layout.db
        query = db.collection_group(DAYS) if key is None else self.layout.pub(key).collection(DAYS)
        query = _range(query, window)
        if fields is not None:
            query = query.select(fields)
        with translated("days"):
            out = [s.to_dict() or {} for s in query.stream(retry=self.conn.read_retry, timeout=self.conn.timeout)]
        self.layout.reads.counted(len(out))
        return out

    def latest_day(self, key: str | None) -> str | None:
        from google.cloud import firestore

        db = self.layout.db
        query = db.collection_group(DAYS) if key is None else self.layout.pub(key).collection(DAYS)
        query = query.order_by("day", direction=firestore.Query.DESCENDING).limit(1).select(["day"])
        with translated("days"):
            found = [s.get("day") for s in query.stream(retry=self.conn.read_retry, timeout=self.conn.timeout)]
        self.layout.reads.counted(len(found))
        return found[0] if found else None

    def known(self, publication: str) -> str | None:
        key = publication_key(publication)
        return key if self.layout.sums(key) else None

    def labels_in(self, key: str) -> dict:
        """entity -> {label: mentions} of one publication, all time (from its merged shards)."""
        return self.layout.label_counts(key, self.layout.sums(key))

    def labels_anywhere(self, keys) -> dict:
        out: dict = {}
        for key in keys:
            for entity, labels in self.labels_in(key).items():
                mine = out.setdefault(entity, {})
                for label, n in labels.items():
                    mine[label] = mine.get(label, 0) + n
        return out

    # -- the reads (the SQLite store's shapes) --------------------------
    def entities_in(self, publication: str | None, window: Window, limit: int = 20, offset: int = 0,
                    labels: frozenset[str] | None = None) -> list[dict] | None:
        key = None
        if publication is not None:
            key = self.known(publication)
            if key is None:
                return None
        totals: dict = {}
        for d in self.docs(key, window):
            for entity, (m, a) in parse_day(d).items():
                t = totals.setdefault(entity, [0, 0, set()])
                t[0] += m
                t[1] += a
                t[2].add(d.get("key"))
        label_counts = self.labels_in(key) if key is not None else self.labels_anywhere({p for *_, ps in
                                                                                          totals.values() for p in ps})
        return _ranked(totals, label_counts, labels, limit, offset)

    def top_entities(self, limit: int = 20, offset: int = 0, labels: frozenset[str] | None = None) -> list[dict]:
        totals: dict = {}
        label_counts: dict = {}
        for key, sums in self.layout.listed().items():
            for entity, (m, a, per_label) in self.layout.totals(key, sums).items():
                t = totals.setdefault(entity, [0, 0, set()])
                t[0] += m
                t[1] += a
                t[2].add(key)
                mine = label_counts.setdefault(entity, {})
                for label, n in per_label.items():
                    mine[label] = mine.get(label, 0) + n
        return _ranked(totals, label_counts, labels, limit, offset)

    def days(self, publication: str, window: Window | None = None) -> tuple[Window, list[dict]] | None:
        key = self.known(publication)
        if key is None:
            return None
        closed = self.closed(window, key)
        if closed.since is None:
            return closed, []
        found: dict = {}
        for d in self.docs(key, closed, DAY_FIELDS):
            row = found.setdefault(d.get("day"), [0, 0])
            row[0] += int(d.get("articles", 0))
            row[1] += int(d.get("mentions", 0))
        return closed, [{"day": day, "articles": found.get(day, [0, 0])[0], "mentions": found.get(day, [0, 0])[1]}
                        for day in closed.days()]

    def entity_days(self, publication: str, entity: str, window: Window | None = None
                    ) -> tuple[Window, list[dict]] | None:
        key = self.known(publication)
        if key is None:
            return None
        closed = self.closed(window, key)
        if closed.since is None:
            return closed, []
        map_name, map_key = slot(entity)
        found: dict = {}
        for d in self.docs(key, closed):
            v = (d.get(map_name) or {}).get(map_key)
            if v is not None and (map_name == "e" or v.get("w") == entity):
                row = found.setdefault(d.get("day"), [0, 0])
                row[0] += int(v.get("m", 0))
                row[1] += int(v.get("a", 0))
        return closed, [{"day": day, "mentions": found.get(day, [0, 0])[0], "articles": found.get(day, [0, 0])[1]}
                        for day in closed.days()]

    def rising(self, publication: str | None, days: int, until: str | None, limit: int = 20,
               min_articles: int = 3) -> dict | None:
        key = None
        if publication is not None:
            key = self.known(publication)
            if key is None:
                return None
        until = until or self.latest_day(key)
        if until is None:
            return {"until": None, "days": days, "articles_now": 0, "articles_before": 0, "rows": []}
        recent, before = rising_windows(days, until)
        total_now = total_before = 0
        per_entity: dict = {}
        for d in self.docs(key, Window(before.since, recent.until)):
            now = d.get("day", "") >= recent.since
            if now:
                total_now += int(d.get("articles", 0))
            else:
                total_before += int(d.get("articles", 0))
            for entity, (_, a) in parse_day(d).items():
                row = per_entity.setdefault(entity, [0, 0])
                row[0 if now else 1] += a
        scored = []
        for entity, (now, then) in per_entity.items():
            score = rising_score(now, then, total_now, total_before, min_articles)
            if score is not None:
                scored.append({"entity": entity, "articles_now": now, "articles_before": then, "score": score})
        scored.sort(key=lambda r: (-r["score"], r["entity"]))
        return {"until": until, "days": days, "articles_now": total_now, "articles_before": total_before,
                "rows": scored[:limit]}

    def closed(self, window: Window | None, key: str) -> Window:
        window = window or Window()
        latest = None if window.until else self.latest_day(key)
        return series_window(window, latest)
