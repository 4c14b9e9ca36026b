"""What a run says at the end: the `Report` dataclass, built once from the run's Stats and the wait, its
JSON form (`to_dict`, written by --json; `from_dict` reads it back) and its text form (`format_report`).

The JSON's keys and their order are part of the output other tools read: `to_dict` keeps them as they were
when the report was a dict (`articles_per_second` included, the name of `accepted_per_second` before
processed/s existed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .plan import Run
from .send import Stats
from .wait import WaitResult


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: a value that was actually observed."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class WaitReport:
    """The wait for the backend: whether it happened, how it ended, the counters before and after."""

    waited: bool
    drained: bool | None  # None when not waited
    drain_seconds: float | None  # after sending, until the backend had processed it (or the wait gave up)
    timeout: float | None
    processed: int | None  # by the backend since the baseline, other clients' articles included
    quarantined: int | None
    note: str | None  # why it was not waited, why it did not drain, or what to know about how it did
    backend_before: dict | None
    backend_after: dict | None

    @classmethod
    def skipped(cls, why: str) -> WaitReport:
        return cls(False, None, None, None, None, None, why, None, None)

    @classmethod
    def of(cls, waited: WaitResult, timeout: float) -> WaitReport:
        return cls(True, waited.drained, round(waited.seconds, 3), timeout, waited.processed, waited.quarantined,
                   waited.note, waited.before, waited.after)


@dataclass(frozen=True)
class Latency:
    """Milliseconds per HTTP request that got a 202 (nearest rank), and how many there were."""

    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    requests: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000, 2)

        return cls(ms(percentile(seconds, 50)), ms(percentile(seconds, 95)), ms(percentile(seconds, 99)),
                   ms(max(seconds) if seconds else None), len(seconds))


@dataclass(frozen=True)
class Report:
    dataset: str
    url: str
    endpoint: str
    batch: int | None
    concurrency: int
    articles: int  # in the dataset (up to --limit), bad rows and skipped rows not included
    sent: int
    accepted: int
    duplicates: int  # answered 202 but accepted before with the same id: counted once
    rejected: dict[str, int]  # articles by status code
    rejected_examples: dict[str, str]  # status -> "where: error detail" of the first
    lost: int
    lost_reasons: dict[str, int]
    unknown: int  # answered 504 outcome_unknown (or 502), not resent: counted once or not at all
    unknown_reasons: dict[str, int]
    not_sent: int
    requests: int
    retries: int
    retry_reasons: dict[str, int]
    wall_seconds: float  # sending, first request to last answer
    accepted_per_second: float | None  # at the front door, over the sending time
    processed: int | None
    quarantined: int | None
    drain_seconds: float | None  # after sending, until the backend had processed it
    total_seconds: float | None  # first request to processed
    processed_per_second: float | None  # end to end
    wait: WaitReport
    latency_ms: Latency
    skipped_rows: dict[str, int]  # rows the reader skips by design (empty content, ...), by reason
    bad_rows: dict  # {"count": n, "rows": [{"where", "error"}]}: skipped with --skip-bad-rows
    stopped: str | None  # why sending stopped early ("interrupted" for Ctrl-C)
    ok: bool  # every article accepted (duplicates included) and, if waited, processed with none quarantined

    @property
    def articles_per_second(self) -> float | None:
        """The name of accepted_per_second before processed/s existed; the JSON keeps both."""
        return self.accepted_per_second

    @property
    def complete(self) -> bool:
        """Every article accepted, duplicates included."""
        return self.accepted + self.duplicates == self.articles

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if f.name in ("wait", "latency_ms") else value
            if f.name == "accepted_per_second":
                out["articles_per_second"] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """A report read back from its JSON; a missing or unknown key is a TypeError."""
        data = {k: v for k, v in data.items() if k != "articles_per_second"}
        return cls(**{**data, "wait": WaitReport(**data["wait"]), "latency_ms": Latency(**data["latency_ms"])})


def build_report(cfg: Run, total: int, skipped: dict, stats: Stats, wall: float, stopped: str | None,
                 interrupted: bool, waited: WaitResult | None = None, bad_rows: dict | None = None) -> Report:
    accepted_rate = round(stats.accepted / wall, 2) if wall > 0 else None
    complete = stats.accepted + stats.duplicates == total
    if waited is None:
        if not cfg.wait:
            wait = WaitReport.skipped("--no-wait")
        elif interrupted:
            wait = WaitReport.skipped("interrupted before the wait")
        else:
            wait = WaitReport.skipped("nothing accepted to wait for")
    else:
        wait = WaitReport.of(waited, cfg.wait_timeout)
    end_to_end = wall + waited.seconds if waited is not None and waited.drained else None
    return Report(
        dataset=str(cfg.dataset.path), url=cfg.url, endpoint=cfg.endpoint, batch=cfg.batch,
        concurrency=cfg.concurrency, articles=total, sent=stats.sent, accepted=stats.accepted,
        duplicates=stats.duplicates, rejected=dict(sorted(stats.rejected.items())),
        rejected_examples=dict(sorted(stats.rejected_examples.items())), lost=stats.lost,
        lost_reasons=dict(stats.lost_reasons), unknown=stats.unknown, unknown_reasons=dict(stats.unknown_reasons),
        not_sent=total - stats.sent, requests=stats.requests, retries=stats.retries,
        retry_reasons=dict(sorted(stats.retry_reasons.items())), wall_seconds=round(wall, 3),
        accepted_per_second=accepted_rate, processed=wait.processed, quarantined=wait.quarantined,
        drain_seconds=wait.drain_seconds, total_seconds=round(end_to_end, 3) if end_to_end is not None else None,
        processed_per_second=round(stats.accepted / end_to_end, 2) if end_to_end else None,
        wait=wait, latency_ms=Latency.of(stats.latencies), skipped_rows=skipped,
        bad_rows=bad_rows or {"count": 0, "rows": []}, stopped="interrupted" if interrupted else stopped,
        ok=complete and not interrupted and (waited is None or (waited.drained and not waited.quarantined)),
    )


def format_report(r: Report) -> str:
    """The table ingest-load prints on stdout, ending with its one-line result."""
    lines = [f"ingest-load: {r.dataset} -> {r.url} ({_mode(r)}, concurrency {r.concurrency})"]
    lines += [f"  {name:<12} {value}" for name, value in _rows(r)]
    for status, example in r.rejected_examples.items():
        lines.append(f"  first {status}: {example}")
    if r.stopped:
        lines.append(f"  stopped: {r.stopped}")
    if r.wait.note and r.wait.waited:
        lines.append(f"  wait: {r.wait.note}")
    lines.append("  result: " + _result(r))
    return "\n".join(lines)


def _mode(r: Report) -> str:
    return f"POST {r.endpoint}" + (f" x{r.batch}" if r.batch else "")


def _counts(c: dict) -> str:
    return "  (" + ", ".join(f"{k}: {v}" for k, v in c.items()) + ")" if c else ""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _rate(v: float | None, meaning: str) -> str:
    return "-" if v is None else f"{v:.1f}  ({meaning})"


def _rows(r: Report) -> list[tuple[str, str]]:
    skipped = f"  ({sum(r.skipped_rows.values())} rows skipped: {_counts(r.skipped_rows).strip(' ()')})"
    rows = [("articles", f"{r.articles}" + (skipped if r.skipped_rows else ""))]
    if r.bad_rows["count"]:
        rows.append(("bad rows", f"{r.bad_rows['count']} skipped (--skip-bad-rows; each named on stderr)"))
    rows += [
        ("sent", str(r.sent)),
        ("accepted", str(r.accepted)),
        ("duplicates", f"{r.duplicates}" + ("  (accepted before with the same id: counted once)"
                                             if r.duplicates else "")),
        ("rejected", f"{sum(r.rejected.values())}{_counts(r.rejected)}"),
        ("lost", f"{r.lost}{_counts(r.lost_reasons)}"),
    ]
    if r.unknown:
        rows.append(("unknown", f"{r.unknown}{_counts(r.unknown_reasons)}  (504/502, not resent without ids: "
                                "counted once or not at all)"))
    rows += [("not sent", str(r.not_sent)), ("processed", _processed_cell(r))]
    if r.quarantined:
        rows.append(("quarantined", f"{r.quarantined}  (kept, not counted: `ingestiond quarantine list`)"))
    return rows + [
        ("requests", str(r.requests)),
        ("retries", f"{r.retries}{_counts(r.retry_reasons)}"),
        ("send time", f"{r.wall_seconds:.2f} s"),
        ("drain time", _drain_cell(r)),
        ("accepted/s", _rate(r.accepted_per_second, "articles/s at the front door, over the send time")),
        ("processed/s", _rate(r.processed_per_second, "articles/s end to end: first request to processed")),
        ("latency p50", _ms(r.latency_ms.p50)),
        ("latency p95", _ms(r.latency_ms.p95)),
        ("latency p99", _ms(r.latency_ms.p99)),
    ]


def _drain_cell(r: Report) -> str:
    if r.drain_seconds is None:
        return "-"
    return f"{r.drain_seconds:.2f} s" + ("  (after sending, until the backend had processed it)" if r.wait.drained
                                         else "  (gave up: not processed yet)")


def _processed_cell(r: Report) -> str:
    wait = r.wait
    if not wait.waited:
        return "-  (not waited" + (f": {wait.note}" if wait.note else "") + ")"
    if wait.processed is None:
        return ("all" if wait.drained else "?") + "  (no baseline from before sending: " + \
            ("the backend is idle with an empty journal)" if wait.drained else "unknown)")
    note = "  (by the backend while this run lasted, other clients' articles included)" \
        if wait.processed > r.accepted else ""
    return f"{wait.processed}{note}"


def _result(r: Report) -> str:
    wait = r.wait
    if r.ok:
        ok = "OK, every article accepted" + (f" ({r.duplicates} of them as duplicates)" if r.duplicates else "")
        if wait.drained:
            return ok + " and processed by the backend"
        if wait.note == "--no-wait":
            return ok + "; not waited for the backend (--no-wait): the counts may not be final yet"
        return ok
    if r.complete and wait.drained and r.quarantined:
        return f"INCOMPLETE: every article accepted, {r.quarantined} quarantined by the backend"
    if r.complete and wait.waited and not wait.drained:
        return "INCOMPLETE: every article accepted, but not known to be processed"
    return "INCOMPLETE"
