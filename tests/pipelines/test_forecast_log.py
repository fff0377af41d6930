"""The forecast log at the boundary users touch: pandas, pyarrow and DuckDB on the folder."""

from __future__ import annotations

import os

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from pipelines.errors import InputError
from pipelines.forecast_log import ForecastLog, rows_from_forecast


def _forecast(start: str = "2024-01-02", days: int = 3, shift: float = 0.0) -> pd.DataFrame:
    dates = pd.bdate_range(start, periods=days)
    base = pd.Series(range(days), dtype="float64") + 10.0 + shift
    return pd.DataFrame(
        {
            "date": dates,
            "forecast": base,
            "lower_80": base - 1,
            "upper_80": base + 1,
            "lower_95": base - 2,
            "upper_95": base + 2,
        }
    )


def _rows(version: str = "1", made_on: str = "2024-01-01", **kw) -> pd.DataFrame:
    return rows_from_forecast(
        _forecast(**kw),
        made_on=pd.Timestamp(made_on),
        model_name="lstm-MSFT",
        version=version,
        run_id="r1",
        target="open",
    )


def test_logging_twice_is_one_row_each_and_readers_agree(tmp_path):
    log = ForecastLog(tmp_path / "log", tmp_path / ".locks")
    assert log.append("MSFT", _rows()) == 3
    assert log.append("MSFT", _rows(shift=5.0)) == 0  # same key: the first forecast is kept
    assert log.append("MSFT", _rows(days=5)) == 2  # two more steps of the same forecast
    assert log.append("MSFT", _rows(version="2")) == 3
    assert log.append("AAPL", _rows()) == 3
    ours = log.read("MSFT")
    assert len(ours) == 8 and ours["forecast"].iloc[0] == 10.0
    assert sorted(ours["step"][ours["version"] == "1"]) == [1, 2, 3, 4, 5]

    assert len(pd.read_parquet(tmp_path / "log")) == 11
    table = ds.dataset(tmp_path / "log", partitioning="hive").to_table()
    assert sorted(set(table.column("ticker").to_pylist())) == ["AAPL", "MSFT"]
    n = duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/log/**/*.parquet', hive_partitioning=true)"
        " where ticker = 'MSFT' and lower_95 < lower_80"
    ).fetchall()[0][0]
    assert n == 8
    assert {p.suffix for p in (tmp_path / "log").rglob("*") if p.is_file()} == {".parquet"}
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in log.files()} == {0o666 & ~umask}


def test_a_corrupt_file_is_a_clear_error_and_is_not_rewritten(tmp_path):
    log = ForecastLog(tmp_path / "log", tmp_path / ".locks")
    log.append("MSFT", _rows())
    (path,) = log.files("MSFT")
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"2024-01-01_v1\.parquet.*not a readable forecast-log"):
        log.append("MSFT", _rows(days=5))
    with pytest.raises(InputError, match="move it out of the log folder"):
        log.read("MSFT")
    assert path.read_bytes() == b"not parquet at all"
