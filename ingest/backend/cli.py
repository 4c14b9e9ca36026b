"""`ingestiond`: parse configuration, set up logging, run the arbiter. Errors are one line, not a traceback."""

from __future__ import annotations

import logging
import sys

from .. import logs
from ..config import ConfigError, ensure_authkey, load_backend_settings

log = logging.getLogger("ingest.cli")

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_backend_settings(argv)
        authkey = ensure_authkey(settings)
    except (ConfigError, OSError) as exc:
        print(f"ingestiond: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log_level, "arbiter")
    from .arbiter import Arbiter

    try:
        return Arbiter(settings, authkey).run()
    except OSError as exc:  # the manager address in use, the var dir unwritable
        host, port = settings.manager_address
        if getattr(exc, "errno", None) == 98:
            log.critical("cannot start: %s:%d is already in use (set --manager-address or INGEST_MANAGER_ADDRESS)",
                         host, port)
        else:
            log.critical("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
