"""ingestiond: news articles in over HTTP, spaCy named entities out, per-publication counts stored."""

__version__ = "0.1.0"
