"""`ingestiond journal list|drop-batch|requeue-batch`: an operator's decision on a recorded store batch.

A batch is recorded in the journal before any store sees it and replayed under its own id until
it is stored; the store's marker makes a replay harmless for 30 days. A batch that could not be
stored for 29 days is not replayed blindly (the backend refuses it and says so): check the store,
then either `drop-batch ID` (the store has it: the batch and its articles leave the journal) or
`requeue-batch ID` (the store does not: its articles are accepted again and counted under a new
batch at the next start). `list` reads the journal at any time; the two decisions need the
backend stopped (they take the journal's lock).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
import sys
from pathlib import Path

from ..config import BackendSettings, ConfigError
from ..core.exitcodes import ExitCode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ingestiond journal", description=__doc__.split("\n\n")[0])
    p.add_argument("--journal", help="the journal file (default: INGEST_JOURNAL, or VAR_DIR/journal.db)")
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("list", help="recorded store batches, oldest first: id, age, articles, bytes")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    drop = sub.add_parser("drop-batch", help="the store HAS the batch: delete it and its articles from the journal")
    drop.add_argument("batch_id", metavar="ID")
    again = sub.add_parser("requeue-batch", help="the store does NOT have the batch: its articles are accepted "
                                                 "again and counted under a new batch at the next start")
    again.add_argument("batch_id", metavar="ID")
    return p


def find_journal(given: str | None, prog: str) -> Path | None:
    """The journal an operator's command works on (--journal, else the backend's setting), or None
    after saying why there is none."""
    try:
        path = Path(given) if given else BackendSettings().journal_path
    except (ConfigError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    if not path.exists():
        print(f"{prog}: no journal at {path} (set --journal or INGEST_VAR_DIR)", file=sys.stderr)
        return None
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = find_journal(args.journal, "ingestiond journal")
    if path is None:
        return ExitCode.USAGE
    if args.action == "list":
        return show(path, args)
    return decide(path, args)


def show(path: Path, args) -> int:
    from .journal import Journal

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        batches = Journal.describe_batches(conn)
    finally:
        conn.close()
    for b in batches:
        if args.json:
            print(json.dumps(b))
        else:
            stamp = (datetime.datetime.fromtimestamp(b["recorded_at"], datetime.timezone.utc)
                     .isoformat(timespec="seconds"))
            print(f"{b['batch_id']}\trecorded {stamp}\t{b['age_seconds'] / 86400:.1f} days ago\t"
                  f"{b['articles']} articles\t{b['bytes']} bytes\t{b['publications']} publications")
    if not args.json:
        print(f"{len(batches)} recorded batches", file=sys.stderr)
    return ExitCode.OK


def decide(path: Path, args) -> int:
    from .journal import Journal, JournalError

    try:
        journal = Journal(path, max_articles=1, max_bytes=1)
    except JournalError as exc:
        print(f"ingestiond journal: {exc}; stop the backend first", file=sys.stderr)
        return ExitCode.USAGE
    try:
        if args.action == "drop-batch":
            n = journal.drop_batch(args.batch_id)
            print(f"batch {args.batch_id} dropped with its {n} articles (the store has them)", file=sys.stderr)
        else:
            n = journal.requeue_batch(args.batch_id)
            print(f"batch {args.batch_id} forgotten; its {n} articles are counted again at the next start",
                  file=sys.stderr)
    except KeyError:
        print(f"ingestiond journal: no batch {args.batch_id} in {path} (see `ingestiond journal list`)",
              file=sys.stderr)
        return ExitCode.UNFINISHED
    finally:
        journal.close()
    return ExitCode.OK
