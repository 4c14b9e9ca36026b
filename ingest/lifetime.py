"""A process of the stack never outlives its supervisor.

`die_with_parent()` asks Linux to send us SIGTERM when the process that started us dies
(prctl PR_SET_PDEATHSIG): supervisord killed by a broken pipe or `kill -9` then takes the
backend (which drains into its journal) and the frontend with it, instead of leaving them
serving on their ports under PID 1. Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the parent died before we asked: act on it now
        os.kill(os.getpid(), sig)
    return True
