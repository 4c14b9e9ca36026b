"""The backend's own exceptions, in a module of their own so that every part can raise them
without importing the arbiter (no import cycle)."""

from __future__ import annotations


class BootError(Exception):
    """A child or the intake cannot start: stop everything instead of respawning it in a tight loop."""
