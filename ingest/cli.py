"""`ingestiond`: parse configuration, set up logging, run the arbiter. Errors are one line, not a traceback."""

from __future__ import annotations

import logging
import sys

from . import logs
from .config import ConfigError, load_backend_settings

log = logging.getLogger("ingest.cli")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_backend_settings(argv)
    except ConfigError as exc:
        print(f"ingestiond: error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, "arbiter")
    from .arbiter import Arbiter

    try:
        return Arbiter(settings).run()
    except OSError as exc:  # e.g. the manager address is in use
        log.critical("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
