"""The store's merges: incremental, idempotent, conflicts named, several tickers in one file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.errors import InputError, PipelineError
from pipelines.ingest import read_price_file
from pipelines.provenance import digest_through
from pipelines.store import PriceStore, table_digest
from tests.conftest import REPO
from tests.pipelines.conftest import tree_bytes
from tests.pipelines.store.conftest import HEADER, csv_file, rows_for

SHARED = REPO.parent / "shared" / "data"


def test_reingest_is_idempotent_and_newer_days_append(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    p = csv_file(tmp_path, "ACME.csv", rows_for(range(5)))
    first = store.merge(read_price_file(p))
    before = tree_bytes(tmp_path / "store")
    again = store.merge(read_price_file(p))
    assert (again.added, again.replaced, again.unchanged) == (0, 0, 5)
    assert again.after == first.after and not again.changed
    assert tree_bytes(tmp_path / "store") == before  # nothing rewritten

    newer = csv_file(tmp_path / "n", "ACME.csv", rows_for(range(3, 8)))
    rep = store.merge(read_price_file(newer))
    assert (rep.added, rep.replaced, rep.unchanged) == (3, 0, 2)
    assert rep.before == first.after
    assert rep.after.rows == 8 and rep.after.last_date == dt.date(2020, 1, 8)
    assert rep.after.digest != first.after.digest
    assert store.load("ACME")["date"].is_monotonic_increasing

    older = csv_file(tmp_path / "o", "ACME.csv", rows_for(range(-3, 0)))
    rep = store.merge(read_price_file(older))
    assert rep.added == 3 and rep.after.first_date == dt.date(2019, 12, 29)
    df = store.load("ACME")
    assert df["date"].is_monotonic_increasing and len(df) == 11 and df["date"].is_unique


def test_conflict_is_an_error_unless_replace(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    store.merge(read_price_file(csv_file(tmp_path, "ACME.csv", rows_for(range(5)))))
    snap = tree_bytes(tmp_path / "store")
    changed = rows_for(range(3, 6))
    changed[1] = "2020-01-05,14,15,13,14.25,1004"  # close 14.5 in the store
    p = csv_file(tmp_path / "c", "ACME.csv", changed)
    with pytest.raises(InputError) as ei:
        store.merge(read_price_file(p))
    e = ei.value
    assert e.line == 3 and e.column == "Close" and e.path == str(p)
    assert "14.25" in e.problem and "14.5" in e.problem and "2020-01-05" in e.problem
    assert "--replace" in e.problem and "\n" not in str(e)
    assert tree_bytes(tmp_path / "store") == snap  # the new day 2020-01-06 was not added either

    rep = store.merge(read_price_file(p), replace=True)
    assert (rep.added, rep.replaced, rep.unchanged) == (1, 1, 1)
    df = store.load("ACME")
    assert df.loc[df["date"] == pd.Timestamp("2020-01-05"), "close"].item() == 14.25
    assert len(df) == 6


def test_digest_is_of_stored_rows(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    rep = store.merge(read_price_file(csv_file(tmp_path, "ACME.csv", rows_for(range(5)))))
    assert rep.after.digest == table_digest(store.read_table("ACME"))
    # and the digest of the rows through its last day (what trainings and studies record)
    last = str(rep.after.last_date)
    assert rep.after.digest == digest_through(store.read_table("ACME"), last)
    # a second store built from the same rows in two steps has the same digest
    other = PriceStore(tmp_path / "other")
    other.merge(read_price_file(csv_file(tmp_path / "a", "ACME.csv", rows_for(range(2)))))
    rep2 = other.merge(read_price_file(csv_file(tmp_path / "b", "ACME.csv", rows_for(range(2, 5)))))
    assert rep2.after.digest == rep.after.digest


def test_multi_ticker_merge_all(tmp_path: Path) -> None:
    rows = [f"B,{r}" for r in rows_for(range(3))] + [f"A,{r}" for r in rows_for(range(2))]
    p = csv_file(tmp_path, "many.csv", rows, header="ticker," + HEADER)
    parsed = read_price_file(p)
    store = PriceStore(tmp_path / "store")
    with pytest.raises(PipelineError, match="merge_all"):
        store.merge(parsed)
    reports = store.merge_all(parsed)
    assert [(r.ticker, r.added) for r in reports] == [("A", 2), ("B", 3)]
    assert store.tickers() == ["A", "B"]
    assert len(store.load("B")) == 3
    ds = store.dataset().to_table()
    assert sorted(set(ds.column("ticker").to_pylist())) == ["A", "B"] and ds.num_rows == 5
    # single-ticker files work with merge_all too
    one = read_price_file(csv_file(tmp_path / "one", "C.csv", rows_for(range(2))))
    assert [r.ticker for r in store.merge_all(one)] == ["C"]


def test_multi_ticker_conflict_writes_nothing(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    store.merge(read_price_file(csv_file(tmp_path, "B.csv", rows_for(range(3)))))
    snap = tree_bytes(tmp_path / "store")
    rows = [f"A,{r}" for r in rows_for(range(2))] + [f"B,{r}" for r in rows_for(range(3), 0.25)]
    parsed = read_price_file(csv_file(tmp_path, "many.csv", rows, header="ticker," + HEADER))
    with pytest.raises(InputError) as ei:
        store.merge_all(parsed)
    assert ei.value.line == 4
    assert not (tmp_path / "store" / "ticker=A" / "data.parquet").exists()
    assert {k: v for k, v in tree_bytes(tmp_path / "store").items() if "ticker=A" not in k} == snap


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
def test_acceptance_shared_data(tmp_path: Path) -> None:
    tutorial = read_price_file(SHARED / "平安银行.csv", ticker="000001.SZ")
    tushare = read_price_file(SHARED / "000001.SZ.tushare.csv")
    assert tutorial.layout == "tutorial" and tushare.layout == "tushare"
    assert tushare.ticker == "000001.SZ"
    store = PriceStore(tmp_path / "store")
    for parsed in (tutorial, tushare):
        t = parsed.table
        assert t.num_rows == 6000
        assert t.column("date")[0].as_py() == dt.date(1997, 11, 25)
        assert t.column("date")[-1].as_py() == dt.date(2023, 4, 28)
    for k in ("date", "open", "high", "low", "close"):
        assert tutorial.table.column(k).equals(tushare.table.column(k)), k
    for k in ("volume", "amount"):
        np.testing.assert_allclose(
            tutorial.table.column(k).to_numpy(), tushare.table.column(k).to_numpy(), rtol=1e-9
        )
    first = store.merge(tutorial)
    second = store.merge(tushare)  # the same days again: volumes equal within rounding?
    assert first.added == 6000
    assert second.added == 0 and second.replaced == 0
    assert len(store.load("000001.SZ")) == 6000


def test_hand_built_parsed_file_is_sorted_and_split(tmp_path: Path) -> None:
    from pipelines.ingest import PRICE_SCHEMA, ParsedFile

    d = [dt.date(2020, 1, 3), dt.date(2020, 1, 1), dt.date(2020, 1, 2)]
    table = pa.table(
        {
            "ticker": ["Y", "X", "Y"],
            "date": d,
            "open": [1.0, 2.0, 3.0],
            "high": [1.0, 2.0, 3.0],
            "low": [1.0, 2.0, 3.0],
            "close": [1.0, 2.0, 3.0],
            "volume": [None, 1.0, 2.0],
            "amount": [None, None, None],
        },
        schema=PRICE_SCHEMA,
    )
    parsed = ParsedFile(path=tmp_path / "mem", ticker="*", layout="custom", table=table)
    store = PriceStore(tmp_path / "store")
    assert [(r.ticker, r.added) for r in store.merge_all(parsed)] == [("X", 1), ("Y", 2)]
    y = store.load("Y")
    assert y["date"].tolist() == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]
    assert y["close"].tolist() == [3.0, 1.0]
    assert np.isnan(y["volume"].iloc[1])
