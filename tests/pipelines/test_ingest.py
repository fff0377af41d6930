"""Tests for pipelines.ingest: layouts, ticker resolution, validation errors."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.errors import InputError, PipelineError
from pipelines.ingest import (
    PRICE_SCHEMA,
    InvalidTickerError,
    ParsedFile,
    digest_file,
    read_price_file,
    validate_ticker,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
VALS = ("open", "high", "low", "close", "volume")

TUTORIAL_HEADER = "日期,开盘价(元),最高价(元),最低价(元),收盘价(元),成交量(股),成交额(元)"
TUTORIAL_ROWS = [
    "1997-11-25,24.0,24.4,23.81,24.14,6729900,162026730.0",
    "1997-11-26,24.2,24.33,24.0,24.21,4019100,97005067.2",
    "1997-11-27,24.21,24.3,23.7,23.75,5700300,136607680.6",
]
TUSHARE = """\
,ts_code,trade_date,open,high,low,close,pre_close,change,pct_chg,vol,amount
0,000001.SZ,19971127,24.21,24.3,23.7,23.75,24.21,-0.46,-1.9,57003.0,136607.6806
1,000001.SZ,19971126,24.2,24.33,24.0,24.21,24.14,0.07,0.29,40191.0,97005.0672
2,000001.SZ,19971125,24.0,24.4,23.81,24.14,24.02,0.12,0.5,67299.0,162026.73
"""
YAHOO = """\
Date,Open,High,Low,Close,Adj Close,Volume,OpenInt
2020-01-02,10.0,11.0,9.5,10.5,10.4,1000,0
2020-01-03,10.5,12.0,10.0,11.0,10.9,2000,0
2020-01-06,11.0,11.5,10.5,11.2,11.1,1500,0
"""


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def yahoo_with(tmp_path: Path, *rows: str, header: str = "Date,Open,High,Low,Close,Volume") -> Path:
    return write(tmp_path, "T.csv", "\n".join([header, *rows]) + "\n")


def err(path: Path, **kw) -> InputError:
    with pytest.raises(InputError) as ei:
        read_price_file(path, **kw)
    e = ei.value
    assert "\n" not in str(e)
    assert str(path) in str(e)
    return e


# ---------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("encoding", ["gb18030", "utf-8", "utf-8-sig"])
def test_tutorial_layout_encodings(tmp_path: Path, encoding: str) -> None:
    p = write(
        tmp_path, "平安银行.csv", "\n".join([TUTORIAL_HEADER, *TUTORIAL_ROWS]) + "\n", encoding
    )
    parsed = read_price_file(p)
    assert parsed.layout == "tutorial"
    assert parsed.ticker == "平安银行"
    t = parsed.table
    assert t.schema == PRICE_SCHEMA
    assert t.column("date").to_pylist() == [dt.date(1997, 11, d) for d in (25, 26, 27)]
    assert t.column("close").to_pylist() == [24.14, 24.21, 23.75]
    assert t.column("volume").to_pylist() == [6729900.0, 4019100.0, 5700300.0]
    assert t.column("amount").to_pylist()[0] == 162026730.0


@pytest.mark.parametrize("layout", ["tutorial", "tushare", "yahoo"])
def test_a_chinese_export_refused_on_new_yorks_calendar_names_xshg(
    tmp_path: Path, layout: str
) -> None:
    """1997-11-27, Thanksgiving: a Chinese export's advice names the calendar it needs."""
    text = {
        "tutorial": "\n".join([TUTORIAL_HEADER, *TUTORIAL_ROWS]) + "\n",
        "tushare": TUSHARE,
        "yahoo": "Date,Open,High,Low,Close,Volume\n1997-11-27,24.21,24.3,23.7,23.75,5700300\n",
    }[layout]
    e = err(write(tmp_path, "x.csv", text, "gb18030"), ticker="000001.SZ", calendar="XNYS")
    assert e.problem.startswith("1997-11-27 (Thursday) is not a trading day of XNYS"), e.problem
    hint = " (XSHG for Shanghai and Shenzhen shares, as this export's are)"
    assert e.problem.endswith(hint) == (layout != "yahoo"), e.problem
    # on the calendar it names, the same rows pass
    read_price_file(write(tmp_path, "y.csv", text, "gb18030"), ticker="P", calendar="XSHG")


def test_tutorial_trade_date_header_without_volume(tmp_path: Path) -> None:
    text = (
        "交易日期,开盘价(元),最高价(元),最低价(元),收盘价(元)\n1997-11-25,24.0,24.4,23.81,24.14\n"
    )
    parsed = read_price_file(write(tmp_path, "x.csv", text, "gb18030"), ticker="000001.SZ")
    assert parsed.ticker == "000001.SZ"
    assert parsed.table.column("volume").null_count == 1
    assert parsed.table.column("amount").null_count == 1


def test_tushare_layout_units_order_and_index_column(tmp_path: Path) -> None:
    parsed = read_price_file(write(tmp_path, "whatever.csv", TUSHARE))
    assert parsed.layout == "tushare"
    assert parsed.ticker == "000001.SZ"  # from ts_code, not the file name
    t = parsed.table
    assert t.column("date").to_pylist() == [dt.date(1997, 11, d) for d in (25, 26, 27)]
    assert t.column("volume").to_pylist() == [6729900.0, 4019100.0, 5700300.0]
    assert t.column("amount").to_pylist() == pytest.approx([162026730.0, 97005067.2, 136607680.6])
    assert any("reordered" in n for n in parsed.notes)
    assert any("lots of 100" in n for n in parsed.notes)


def test_yahoo_layout_iso_extra_columns(tmp_path: Path) -> None:
    parsed = read_price_file(write(tmp_path, "MSFT.csv", YAHOO))
    assert parsed.layout == "yahoo"
    assert parsed.ticker == "MSFT"
    assert parsed.table.schema == PRICE_SCHEMA
    assert parsed.table.column("open").to_pylist() == [10.0, 10.5, 11.0]
    assert parsed.table.column("amount").null_count == 3


def test_yahoo_layout_us_dates(tmp_path: Path) -> None:
    p = yahoo_with(tmp_path, "1/2/2020,10,11,9,10,5", "12/31/2019,10,11,9,10,5")
    t = read_price_file(p).table
    assert t.column("date").to_pylist() == [dt.date(2019, 12, 31), dt.date(2020, 1, 2)]


def test_column_map_layout(tmp_path: Path) -> None:
    p = write(tmp_path, "odd.csv", "Day;O;H;L;C\n".replace(";", ",") + "2020-01-02,1,2,0.5,1.5\n")
    parsed = read_price_file(
        p,
        ticker="ODD",
        column_map={"date": "Day", "open": "O", "high": "H", "low": "L", "close": "C"},
    )
    assert parsed.layout == "mapped"
    assert parsed.table.column("close").to_pylist() == [1.5]
    e = err(p, column_map={"date": "Day", "open": "O", "high": "H", "low": "L", "close": "Z"})
    assert e.column == "Z" and e.line == 1
    e = err(p, column_map={"date": "Day", "open": "O", "high": "H", "low": "L"})
    assert "close" in e.problem


def test_unknown_layout_needs_column_map(tmp_path: Path) -> None:
    e = err(write(tmp_path, "x.csv", "Day,O,H,L,C\n2020-01-02,1,2,0.5,1.5\n"))
    assert e.line == 1 and "data.column_map" in e.problem
    semicolons = err(write(tmp_path, "y.csv", "Date;Open;High;Low;Close\n2020-01-02;1;2;0.5;1.5\n"))
    assert "the header holds ';': save the file comma-separated" in semicolons.problem


def test_multi_ticker_file(tmp_path: Path) -> None:
    p = yahoo_with(
        tmp_path,
        "MSFT,2020-01-03,2,2,2,2,1",
        "AAPL,2020-01-03,1,1,1,1,1",
        "MSFT,2020-01-02,2,2,2,2,1",
        header="Symbol,Date,Open,High,Low,Close,Volume",
    )
    parsed = read_price_file(p)
    assert parsed.ticker == "*"
    assert parsed.tickers == ("AAPL", "MSFT")
    t = parsed.table
    assert t.column("ticker").to_pylist() == ["AAPL", "MSFT", "MSFT"]
    assert t.column("date").to_pylist() == [
        dt.date(2020, 1, 3),
        dt.date(2020, 1, 2),
        dt.date(2020, 1, 3),
    ]
    # an explicit ticker cannot relabel several tickers
    e = err(p, ticker="X")
    assert e.column == "Symbol" and "2 tickers" in e.problem


def test_ticker_priority_column_over_stem(tmp_path: Path) -> None:
    p = yahoo_with(
        tmp_path, "ABC,2020-01-02,1,1,1,1,1", header="ticker,Date,Open,High,Low,Close,Volume"
    )
    assert read_price_file(p).ticker == "ABC"
    parsed = read_price_file(p, ticker="XYZ")
    assert parsed.ticker == "XYZ" and any("ignored" in n for n in parsed.notes)


@pytest.mark.parametrize("good", ["MSFT", "000001.SZ", "BRK-B", "a_b", "平安银行", "X" * 64])
def test_validate_ticker_accepts(good: str) -> None:
    assert validate_ticker(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b", "a\\b", ".hidden", "a..b", "..", "a b", "x" * 65, "a\x00b", "C:x"]
)
def test_validate_ticker_rejects(bad: str) -> None:
    with pytest.raises(InvalidTickerError) as ei:
        validate_ticker(bad)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, PipelineError)
    assert "\n" not in str(ei.value)


def test_invalid_ticker_in_column_and_stem(tmp_path: Path) -> None:
    p = yahoo_with(
        tmp_path,
        "OK,2020-01-02,1,1,1,1,1",
        "../evil,2020-01-03,1,1,1,1,1",
        header="ticker,Date,Open,High,Low,Close,Volume",
    )
    e = err(p)
    assert e.line == 3 and e.column == "ticker"
    p2 = write(tmp_path, ".hidden.csv", YAHOO)
    assert "file name" in err(p2).problem
    with pytest.raises(InvalidTickerError):
        read_price_file(p2, ticker="a/b")


# ---------------------------------------------------------------------------------- validation


def test_empty_and_header_only(tmp_path: Path) -> None:
    assert "empty" in err(write(tmp_path, "e.csv", "")).problem
    assert "empty" in err(write(tmp_path, "w.csv", " \n\n")).problem
    e = err(write(tmp_path, "h.csv", "Date,Open,High,Low,Close\n"))
    assert "header only" in e.problem


def test_undecodable_bytes(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(b"Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n2020-01-03,\xff\xfe,1,1,1\n")
    e = err(p)
    assert e.line == 3 and "undecodable" in e.problem


def test_parquet_renamed_and_binary(tmp_path: Path) -> None:
    p = tmp_path / "prices.csv"
    pq.write_table(pa.table({"a": [1, 2]}), p)
    assert "Parquet" in err(p).problem
    b = tmp_path / "bin.csv"
    b.write_bytes(b"Date,Open\n\x00\x01\x02")
    e = err(b)
    assert "binary" in e.problem and e.line == 2


def test_missing_columns(tmp_path: Path) -> None:
    e = err(yahoo_with(tmp_path, "2020-01-02,1,1,1", header="Date,Open,High,Low"))
    assert e.line == 1 and e.column == "close"
    e = err(write(tmp_path, "n.csv", "just some text\nnot a table\n"))
    assert "date" in e.problem


@pytest.mark.parametrize(
    ("rows", "line", "needle"),
    [
        (["2020-01-02,1,1,1,1,1", "yesterday,1,1,1,1,1"], 3, "unparseable date"),
        (["2020-01-02,1,1,1,1,1", "1/3/2020,1,1,1,1,1"], 3, "mixed date formats"),
        (["20200102,1,1,1,1,1", "2020-01-03,1,1,1,1,1"], 3, "mixed date formats"),
        (["2021-02-28,1,1,1,1,1", "2021-02-30,1,1,1,1,1"], 3, "invalid date"),
        (["2020-01-02,1,1,1,1,1", "2999-01-03,1,1,1,1,1"], 3, "future"),
    ],
)
def test_date_errors(tmp_path: Path, rows: list[str], line: int, needle: str) -> None:
    e = err(yahoo_with(tmp_path, *rows))
    assert e.line == line and e.column == "Date" and needle in e.problem


def test_near_future_tolerated(tmp_path: Path) -> None:
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    t = read_price_file(yahoo_with(tmp_path, f"{tomorrow},1,1,1,1,1")).table
    assert t.column("date").to_pylist() == [tomorrow]


@pytest.mark.parametrize(
    ("row", "column", "needle"),
    [
        ("2020-01-03,1,abc,1,1,1", "High", "non-numeric value 'abc'"),
        ("2020-01-03,1,inf,1,1,1", "High", "non-finite"),
        ("2020-01-03,0,1,0,1,1", "Open", "positive"),
        ("2020-01-03,1,1,-1,1,1", "Low", "positive"),
        ("2020-01-03,1,1,2,1,1", "High", "below low"),
        ("2020-01-03,3,2,1,1.5,1", "Open", "outside"),
        ("2020-01-03,1.5,2,1,0.5,1", "Close", "outside"),
        ("2020-01-03,1,1,1,1,-5", "Volume", "negative"),
    ],
)
def test_value_errors(tmp_path: Path, row: str, column: str, needle: str) -> None:
    e = err(yahoo_with(tmp_path, "2020-01-02,1,1,1,1,1", row))
    assert e.line == 3 and e.column == column and needle in e.problem, str(e)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path, "T.csv", "Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n\n2020-01-03,1,1,1,-1\n"
    )
    assert err(p).line == 4


def test_wrong_field_count(tmp_path: Path) -> None:
    e = err(yahoo_with(tmp_path, "2020-01-02,1,1,1,1,1", "2020-01-03,1,1"))
    assert e.line == 3 and "fields" in e.problem


def test_duplicates(tmp_path: Path) -> None:
    p = yahoo_with(tmp_path, "2020-01-02,1,1,1,1,1", "2020-01-03,2,2,2,2,2", "2020-01-02,1,1,1,1,1")
    parsed = read_price_file(p)
    assert parsed.table.num_rows == 2
    assert any("duplicate" in n for n in parsed.notes)
    p = yahoo_with(tmp_path, "2020-01-02,1,1,1,1,1", "2020-01-03,2,2,2,2,2", "2020-01-02,1,1,1,1,7")
    e = err(p)
    assert e.line == 4 and e.column == "Volume"
    assert "7" in e.problem and "1 on line 2" in e.problem and "2020-01-02" in e.problem


def test_missing_values_modes(tmp_path: Path) -> None:
    p = yahoo_with(
        tmp_path,
        "2020-01-02,,1,1,1,1",
        "2020-01-03,2,2,2,2,2",
        "2020-01-06,2,2,2,,3",
        "2020-01-07,4,4,4,4,4",
    )
    e = err(p)
    assert e.line == 2 and e.column == "Open" and "missing" in e.problem

    dropped = read_price_file(p, missing="drop")
    assert dropped.table.num_rows == 2
    assert "dropped 2 rows with missing values" in dropped.notes

    filled = read_price_file(p, missing="ffill")
    t = filled.table
    assert t.column("date").to_pylist()[0] == dt.date(2020, 1, 3)  # nothing to fill row 1 from
    assert t.column("close").to_pylist() == [2.0, 2.0, 4.0]
    assert any("forward-filled missing values in 1 rows" in n for n in filled.notes)
    assert any("dropped 1 rows with no earlier value" in n for n in filled.notes)

    bad = yahoo_with(tmp_path, "2020-01-02,1,1,1,1,1", "2020-01-03,3,3,3,,3")
    e = err(bad, missing="ffill")
    assert e.line == 3 and "after forward-filling" in e.problem


def test_missing_volume_value_is_missing(tmp_path: Path) -> None:
    p = yahoo_with(tmp_path, "2020-01-02,1,1,1,1,", "2020-01-03,1,1,1,1,NaN")
    e = err(p)
    assert e.column == "Volume" and e.line == 2


def test_missing_drop_all_rows_errors(tmp_path: Path) -> None:
    p = yahoo_with(tmp_path, "2020-01-02,1,1,1,1,", "2020-01-03,1,1,1,1,NaN")
    assert "no rows left" in err(p, missing="drop").problem


def test_digest_file(tmp_path: Path) -> None:
    p = write(tmp_path, "T.csv", YAHOO)
    assert digest_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_parsed_file_is_frozen(tmp_path: Path) -> None:
    parsed = read_price_file(write(tmp_path, "T.csv", YAHOO))
    assert isinstance(parsed, ParsedFile)
    with pytest.raises(AttributeError):
        parsed.ticker = "X"  # type: ignore[misc]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20000),
            st.floats(0.01, 1e6, allow_nan=False),
            st.floats(0, 1, allow_nan=False),
            st.floats(0, 1, allow_nan=False),
            st.integers(0, 10**12),
        ),
        min_size=1,
        max_size=30,
        unique_by=lambda r: r[0],
    )
)
def test_roundtrip_property(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    """Any valid rows, in any order, come back sorted and exact."""
    lines = []
    expect = {}
    for day, low, a, b, vol in rows:
        high = low * 2
        o, c = low + (high - low) * a, low + (high - low) * b
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        lines.append(f"{date},{o!r},{high!r},{low!r},{c!r},{vol}")
        expect[date] = (o, high, low, c, float(vol))
    p = yahoo_with(tmp_path_factory.mktemp("h"), *lines)
    t = read_price_file(p).table
    dates = t.column("date").to_pylist()
    assert dates == sorted(expect)
    got = list(zip(*(t.column(k).to_pylist() for k in VALS), strict=True))
    assert got == [expect[d] for d in dates]
    assert np.all(np.diff(np.array(dates, dtype="datetime64[D]")).astype(int) > 0)
