"""Every exit status the project's commands and processes use, in one place.

One value, one meaning across commands: a script that runs `ingestiond`, `ingest-frontend` and `ingest-load`
can tell "fix your input" (2) from "something is left to do" (1) without knowing which command it ran.
Aliases name the same value in a command's own words (ingest-load's INCOMPLETE is ingestiond's UNFINISHED).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # ingestiond: stopped with work left (SIGQUIT, an error in its loop, an address in use): the journal keeps it.
    # A backend child: reparented or its saver lost the store; the arbiter respawns it.
    # A subcommand (`quarantine`, `journal`) that found nothing to act on.
    UNFINISHED = 1
    # ingest-load: something rejected, lost, quarantined, of unknown outcome or not processed in time.
    INCOMPLETE = 1
    # Bad arguments, configuration or input (a dataset row, a journal that cannot be opened): fix it, start again.
    USAGE = 2
    # A backend child that cannot boot (model missing, store unreachable): the arbiter stops instead of respawning.
    BOOT_ERROR = 3
    # Ctrl-C (128 + SIGINT), as a shell reports it.
    INTERRUPTED = 130
