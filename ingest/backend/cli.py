"""`ingestiond`: parse configuration, set up logging, run the arbiter. Errors are one line, not a traceback."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import sys

from .. import logs
from ..core.exitcodes import ExitCode
from ..config import ConfigError, ensure_authkey, load_backend_settings
from ..lifetime import die_with_parent

log = logging.getLogger("ingest.cli")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["quarantine"]:
        from .quarantine import main as quarantine_main

        return quarantine_main(argv[1:])
    if argv[:1] == ["compact"]:  # Firestore's packed layout: fold idle writers into archives
        from ..stores.firestore.compaction import main as compact_main

        return compact_main(argv[1:])
    if argv[:1] == ["journal"]:
        from .journal_cmd import main as journal_main

        return journal_main(argv[1:])
    if argv[:1] == ["dead-letters"]:
        from .fleet.deadletters import main as dead_letters_main

        return dead_letters_main(argv[1:])
    try:
        settings = load_backend_settings(argv)
        authkey = ensure_authkey(settings)
    except (ConfigError, OSError) as exc:
        print(f"ingestiond: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if os.environ.get("SUPERVISOR_ENABLED"):  # started by supervisord: never outlive it
        die_with_parent()
    os.umask(0o077)  # the journal (article text, its WAL), the database and the authkey: owner only
    logs.setup(settings.log_level, "arbiter")
    from .arbiter import Arbiter
    from .journal import JournalError

    try:
        arbiter = Arbiter(settings, authkey)
    except JournalError as exc:
        log.critical("cannot start: %s", exc)
        return ExitCode.USAGE
    except (OSError, sqlite3.Error) as exc:
        log.critical("cannot open the journal %s: %s", settings.journal_path, exc)
        return ExitCode.USAGE
    try:
        return arbiter.run()
    except OSError as exc:  # the manager address in use, the var dir unwritable
        host, port = settings.manager_address
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            log.critical("cannot start: %s:%d is already in use (set --manager-address or INGEST_MANAGER_ADDRESS)",
                         host, port)
        else:
            log.critical("cannot start: %s", exc)
        return ExitCode.UNFINISHED


if __name__ == "__main__":
    sys.exit(main())
