"""What the app holds, typed: its settings, its intake client, its read store, the HTTP layer's
pacer and the word-cloud budget. The one place `app.extensions` is written or read.

`create_app` attaches an `AppState`; views read it through `settings()`, `client()`, `store()`,
...; the gunicorn worker and tests through `of(app)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from ..config import FrontendSettings
    from .pacing import ReadPacer
    from .wordcloud import Wordclouds

_KEY = "ingest"


@dataclass
class AppState:
    settings: FrontendSettings
    client: Any        # IngestClient or PubSubPublisher: put_many(), status()
    store: Any         # a read store: publications(), summary(), entities()
    pacer: ReadPacer | None  # None when no limit is set: nothing paces requests without a key
    wordclouds: Wordclouds


def attach(app: Flask, state: AppState) -> None:
    app.extensions[_KEY] = state


def of(app: Flask) -> AppState:
    return app.extensions[_KEY]


def current() -> AppState:
    return of(current_app)


def settings() -> FrontendSettings:
    return current().settings


def client() -> Any:
    return current().client


def store() -> Any:
    return current().store
