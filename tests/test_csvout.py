from __future__ import annotations

import csv
import io

import pytest

from ingest.web.csvout import FormatError, to_csv, wanted_format


def test_the_format_parameter_wins_and_accept_asks_for_csv():
    assert wanted_format(None, None) == "json"
    assert wanted_format(None, "text/csv") == "csv"
    assert wanted_format("json", "text/csv") == "json"
    assert wanted_format("csv", "application/json") == "csv"
    with pytest.raises(FormatError):
        wanted_format("xml", None)


def test_rows_round_trip_and_formulas_are_defused():
    rows = [{"entity": "=HYPERLINK(\"x\")", "mentions": 3, "label": "ORG"},
            {"entity": 'a "quoted", name', "mentions": -1, "label": None}]
    text = to_csv(rows, ["entity", "label", "mentions"])
    back = list(csv.reader(io.StringIO(text)))
    assert back == [["entity", "label", "mentions"], ["'=HYPERLINK(\"x\")", "ORG", "3"],
                    ['a "quoted", name', "", "-1"]]
