"""The split-sized-jump rule of ingestion (in-process; the CLI path is in test_bad_input).

A close-to-close move beyond -45 % / +80 % in one day is an error naming the line, both prices
and the way out (split-adjusted prices, or ``max_daily_change=None`` / data.max_daily_change).
"""

from __future__ import annotations

import pytest

from pipelines.errors import InputError
from pipelines.ingest import DEFAULT_MAX_DAILY_CHANGE, jump_limits, read_price_file

ON = DEFAULT_MAX_DAILY_CHANGE  # what the pipeline (CLI, flows) passes by default


def _file(tmp_path, closes, name="J.csv", ticker_col=None):
    rows = []
    for i, c in enumerate(closes):
        t = f"{ticker_col[i]}," if ticker_col else ""
        rows.append(f"{t}2021-01-{i + 4:02d},{c},{c * 1.01:.4f},{c * 0.99:.4f},{c}")
    header = ("ticker," if ticker_col else "") + "Date,Open,High,Low,Close"
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_two_for_one_split_is_an_error_naming_line_and_prices(tmp_path):
    p = _file(tmp_path, [100, 101, 50.5, 51])
    with pytest.raises(InputError) as e:
        read_price_file(p, max_daily_change=ON)
    msg = str(e.value)
    assert e.value.line == 4 and e.value.column == "Close"
    assert "50.5" in msg and "101" in msg and "line 3" in msg and "split" in msg
    assert "max_daily_change" in msg


def test_reverse_split_rise_is_an_error(tmp_path):
    with pytest.raises(InputError, match="above the previous close"):
        read_price_file(_file(tmp_path, [10, 10.2, 30.6]), max_daily_change=ON)


@pytest.mark.parametrize("closes", [[100, 56, 57], [100, 179, 180]])
def test_moves_inside_the_limits_pass(tmp_path, closes):
    assert read_price_file(_file(tmp_path, closes), max_daily_change=ON).rows == 3


def test_opting_out_and_custom_limits(tmp_path):
    p = _file(tmp_path, [100, 101, 50.5])
    assert read_price_file(p, max_daily_change=None).rows == 3
    assert read_price_file(p).rows == 3  # the library call is opt-in; the pipeline opts in
    assert read_price_file(p, max_daily_change={"drop": 0.6}).rows == 3
    with pytest.raises(InputError):
        read_price_file(p, max_daily_change=(0.3, 0.3))


def test_tickers_are_not_compared_with_each_other(tmp_path):
    p = _file(tmp_path, [100, 101, 5, 5.1], ticker_col=["AAA", "AAA", "BBB", "BBB"])
    parsed = read_price_file(p, max_daily_change=ON)
    assert parsed.tickers == ("AAA", "BBB")


@pytest.mark.parametrize(
    "value", [{"drop": 1.0}, {"drop": 0.0}, {"rise": -1}, {"fall": 0.5}, (0.5, 0)]
)
def test_bad_limits_are_refused(value):
    with pytest.raises(ValueError):
        jump_limits(value)
