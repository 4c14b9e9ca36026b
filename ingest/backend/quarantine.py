"""`ingestiond quarantine list|retry|drop`: the articles that killed a worker twice.

A quarantined article stays in the journal, never counted and never dropped on its own. `retry`
sends it back to the workers (a running backend picks it up within a second, or the next start
does); `drop` deletes it for good. This reads the journal file directly, so it works whether or
not the backend runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
import sys

from ..core.exitcodes import ExitCode
from .journal import Journal
from .journal_cmd import find_journal


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ingestiond quarantine", description=__doc__.split("\n\n")[0])
    p.add_argument("--journal", help="the journal file (default: INGEST_JOURNAL, or VAR_DIR/journal.db)")
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("list", help="show quarantined articles")
    show.add_argument("--json", action="store_true", help="one JSON object per line, with the full text")
    for name, words in (("retry", "send back to the workers"), ("drop", "delete for good")):
        action = sub.add_parser(name, help=f"{words}: the given SEQs, or --all")
        action.add_argument("seqs", nargs="*", type=int, metavar="SEQ")
        action.add_argument("--all", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = find_journal(args.journal, "ingestiond quarantine")
    if path is None:
        return ExitCode.USAGE
    if args.action != "list" and not args.seqs and not args.all:
        print(f"ingestiond quarantine {args.action}: name the SEQs (see `list`) or give --all", file=sys.stderr)
        return ExitCode.USAGE
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        return ACTIONS[args.action](conn, args)
    finally:
        conn.close()


def _rows(conn, args, columns: str):
    seqs = None if getattr(args, "all", False) else getattr(args, "seqs", None)
    return Journal.quarantined_rows(conn, columns, seqs)


def show(conn, args) -> int:
    rows = _rows(conn, args, "seq, publication, kills, bytes, quarantined_at, content")
    for seq, publication, kills, nbytes, when, content in rows:
        stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat(timespec="seconds")
        if args.json:
            print(json.dumps({"seq": seq, "publication": publication, "kills": kills, "bytes": nbytes,
                              "quarantined_at": stamp, "content": content}))
        else:
            preview = " ".join(content.split())[:60]
            print(f"{seq}\t{publication}\t{kills} kills\t{nbytes} bytes\t{stamp}\t{preview}")
    if not args.json:
        print(f"{len(rows)} quarantined", file=sys.stderr)
    return ExitCode.OK


def retry(conn, args) -> int:
    seqs = [r[0] for r in _rows(conn, args, "seq")]
    Journal.retry_quarantined(conn, seqs)
    print(f"{len(seqs)} sent back to the workers (a running backend takes them within a second)", file=sys.stderr)
    return ExitCode.OK if seqs or args.all else ExitCode.UNFINISHED


def drop(conn, args) -> int:
    seqs = [r[0] for r in _rows(conn, args, "seq")]
    Journal.drop_quarantined(conn, seqs)
    print(f"{len(seqs)} dropped for good", file=sys.stderr)
    return ExitCode.OK if seqs or args.all else ExitCode.UNFINISHED


ACTIONS = {"list": show, "retry": retry, "drop": drop}
