"""The pure rules of attention over time: a post's day, windows, and the rising score."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ingest.core.days import (DayError, Window, day_of_post, parse_window, rising_score, rising_windows,
                              series_window)

NOON = datetime(2017, 2, 7, 12, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("published, day", [
    ("2017-02-07T14:30:00Z", "2017-02-07"),
    ("2017-02-07T00:30:00+01:00", "2017-02-06"),        # the UTC date of the instant
    ("2017-02-06T23:30:00-05:00", "2017-02-07"),
    ("2017-02-07", "2017-02-07"),
    ("2017-02-08", "2017-02-08"),                        # midnight tomorrow is within 24 h
    ("1970-01-01T00:00:00Z", "1970-01-01"),
    ("2017-02-07t14:30:00.123456z", "2017-02-07"),
])
def test_a_post_counts_on_the_utc_day_of_its_published_instant(published, day):
    assert day_of_post(published, NOON) == day


def test_a_post_without_published_counts_on_the_day_it_was_accepted():
    assert day_of_post(None, NOON) == "2017-02-07"
    assert day_of_post(None, datetime(2017, 2, 7, 23, 59, 59, tzinfo=timezone.utc).timestamp()) == "2017-02-07"


@pytest.mark.parametrize("published", [
    "", "yesterday", "2017-02-30", "2017-2-7", "20170207", "2017-02-07T14:30:00", "2017-02-07T25:00:00Z",
    "1969-12-31T23:59:59Z", "1969-12-31", "2017-02-09", "2017-02-08T12:00:01Z", "2017-02-07 14:30", 20170207,
])
def test_a_malformed_early_or_future_published_is_refused(published):
    with pytest.raises(DayError):
        day_of_post(published, NOON)


def test_windows_are_inclusive_strict_and_bounded():
    assert parse_window(None, None).all_time
    assert parse_window("2017-01-01", "2017-01-03").days() == ["2017-01-01", "2017-01-02", "2017-01-03"]
    for since, until in [("2017-01-04", "2017-01-03"), ("2017-1-1", None), (None, "soon")]:
        with pytest.raises(DayError):
            parse_window(since, until)
    with pytest.raises(DayError):
        parse_window("2016-01-01", "2017-01-01", max_days=366)
    assert len(parse_window("2016-01-01", "2016-12-31", max_days=366).days()) == 366


def test_a_series_defaults_to_the_30_days_ending_with_the_latest_data():
    assert series_window(Window(), "2017-03-01") == Window("2017-01-31", "2017-03-01")
    assert series_window(Window(since="2017-02-20"), "2017-03-01") == Window("2017-02-20", "2017-03-01")
    assert series_window(Window(), None) == Window(None, None)
    with pytest.raises(DayError):
        series_window(Window(since="2015-01-01"), "2017-03-01")


def test_the_rising_windows_are_adjacent_and_equal():
    recent, before = rising_windows(7, "2017-03-07")
    assert recent == Window("2017-03-01", "2017-03-07") and before == Window("2017-02-22", "2017-02-28")


def test_new_beats_flat_and_a_large_steady_rise_beats_a_small_count():
    new = rising_score(30, 0, 100, 100)
    flat = rising_score(20, 20, 100, 100)
    small = rising_score(3, 0, 100, 100)
    steady = rising_score(60, 20, 100, 100)
    assert flat is None and new > 0
    assert steady > small
    assert rising_score(2, 0, 100, 100) is None            # the minimum support
    assert rising_score(5, 0, 100, 0) is None              # nothing to rise from
    assert rising_score(10, 10, 100, 50) is None           # a falling share
    assert rising_score(30, 0, 100, 100) == new            # deterministic
