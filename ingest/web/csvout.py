"""`format=csv` (or `Accept: text/csv`) on every list the API returns: the same rows, a header line.

A cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a CR) is prefixed
with `'`: entity names come from article text, which anyone can post."""

from __future__ import annotations

import csv
import io
from typing import Iterable

FORMATS = ("json", "csv")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class FormatError(ValueError):
    pass


def wanted_format(format_param: str | None, accept: str | None) -> str:
    """'csv' or 'json': the `format` parameter wins; else `Accept: text/csv` asks for CSV."""
    if format_param is not None:
        if format_param not in FORMATS:
            raise FormatError(f"format must be one of {', '.join(FORMATS)}, not {format_param!r}")
        return format_param
    return "csv" if accept and "text/csv" in accept.lower() else "json"


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def to_csv(rows: Iterable[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return out.getvalue()
