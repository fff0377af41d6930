"""The price store: writing and loading a ticker, atomic and locked writes, the store as a
dataset that any Parquet reader opens."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import PipelineError
from pipelines.ingest import InvalidTickerError, read_price_file
from pipelines.store import Manifest, MergeReport, PriceStore, UnknownTickerError
from tests.pipelines.conftest import tree_bytes
from tests.pipelines.store.conftest import HEADER, csv_file, rows_for


def test_merge_new_ticker_and_load(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    report = store.merge(read_price_file(csv_file(tmp_path, "ACME.csv", rows_for(range(5)))))
    assert isinstance(report, MergeReport)
    assert (report.ticker, report.added, report.replaced, report.unchanged) == ("ACME", 5, 0, 0)
    assert report.before is None
    m = report.after
    assert (m.first_date, m.last_date, m.rows) == (dt.date(2020, 1, 1), dt.date(2020, 1, 5), 5)
    assert store.manifest("ACME") == m
    assert store.tickers() == ["ACME"]
    tdir = tmp_path / "store" / "ticker=ACME"
    assert sorted(os.listdir(tdir)) == [".lock", "data.parquet"]  # hidden from readers
    footer = pq.read_schema(tdir / "data.parquet").metadata[b"lstm_pipeline.manifest"]
    assert Manifest.from_json(footer) == m and json.loads(footer)["rows"] == 5

    df = store.load("ACME")
    assert list(df.columns) == ["date", "open", "high", "low", "close", "volume"]  # no amount
    assert df["date"].dtype == np.dtype("datetime64[ns]")
    assert df["date"].is_monotonic_increasing
    assert df["close"].tolist() == [10.5, 11.5, 12.5, 13.5, 14.5]
    assert df["volume"].dtype == np.float64


def test_load_keeps_amount_when_present(tmp_path: Path) -> None:
    text = "日期,开盘价(元),最高价(元),最低价(元),收盘价(元),成交量(股),成交额(元)\n1997-11-25,24.0,24.4,23.81,24.14,6729900,162026730.0\n"
    p = tmp_path / "平安银行.csv"
    p.write_bytes(text.encode("gb18030"))
    store = PriceStore(tmp_path / "s")
    store.merge(read_price_file(p))
    df = store.load("平安银行")
    assert list(df.columns) == ["date", "open", "high", "low", "close", "volume", "amount"]
    assert df["amount"].tolist() == [162026730.0]


def test_legacy_manifest_json_is_removed_by_the_next_merge(tmp_path: Path) -> None:
    """Stores written before the footer was the only manifest had a manifest.json per ticker."""
    store = PriceStore(tmp_path / "store")
    p = csv_file(tmp_path, "ACME.csv", rows_for(range(3)))
    rep = store.merge(read_price_file(p))
    other = store.merge(read_price_file(csv_file(tmp_path, "B.csv", rows_for(range(2)))))
    for t, m in (("ACME", rep.after), ("B", other.after)):
        (tmp_path / "store" / f"ticker={t}" / "manifest.json").write_text(m.to_json())
    with pytest.raises(Exception, match="magic bytes"):
        pd.read_parquet(tmp_path / "store")
    again = store.merge(read_price_file(p))  # nothing new for ACME, yet both are upgraded
    assert not again.changed and store.manifest("ACME") == rep.after
    assert not list((tmp_path / "store").rglob("manifest.json"))
    assert len(pd.read_parquet(tmp_path / "store")) == 5


def test_unknown_ticker_and_unsafe_names(tmp_path: Path) -> None:
    store = PriceStore(tmp_path / "store")
    assert store.tickers() == [] and store.manifest("NOPE") is None
    with pytest.raises(UnknownTickerError) as ei:
        store.load("NOPE")
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, PipelineError)
    assert str(ei.value).startswith("ticker 'NOPE' is not in the store")
    for bad in ("../x", "a/b", ".x"):
        with pytest.raises(InvalidTickerError):
            store.load(bad)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["write_table", "replace"])
def test_failed_write_leaves_store_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    store = PriceStore(tmp_path / "store")
    store.merge(read_price_file(csv_file(tmp_path, "ACME.csv", rows_for(range(5)))))
    before = tree_bytes(tmp_path / "store")
    manifest = store.manifest("ACME")

    if where == "write_table":
        real = pq.write_table

        def broken(table: pa.Table, where_: str, **kw: object) -> None:
            real(table.slice(0, 2), where_, **kw)  # a partial file, then the crash
            raise OSError("disk full")

        monkeypatch.setattr(pq, "write_table", broken)
    else:

        def broken_replace(src: str, dst: str) -> None:
            raise OSError("power cut")

        monkeypatch.setattr(os, "replace", broken_replace)

    newer = csv_file(tmp_path / "n", "ACME.csv", rows_for(range(3, 9)))
    with pytest.raises(OSError):
        store.merge(read_price_file(newer))
    assert tree_bytes(tmp_path / "store") == before  # byte for byte, no temp files left
    monkeypatch.undo()
    assert store.manifest("ACME") == manifest
    rep = store.merge(read_price_file(newer))  # and the store still works
    assert rep.added == 4 and rep.after.rows == 9


def _ingest(args: tuple[str, str, int]) -> int:
    root, path, repeat = args
    store = PriceStore(root)
    added = 0
    for _ in range(repeat):
        added += store.merge(read_price_file(path)).added
    return added


def test_concurrent_overlapping_ingestion_processes(tmp_path: Path) -> None:
    a = csv_file(tmp_path / "a", "ACME.csv", rows_for(range(0, 40)))
    b = csv_file(tmp_path / "b", "ACME.csv", rows_for(range(20, 60)))
    root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        added = list(pool.map(_ingest, [(root, str(a), 5), (root, str(b), 5)]))
    assert sum(added) == 60  # each row was added exactly once
    df = PriceStore(root).load("ACME")
    assert len(df) == 60 and df["date"].is_unique and df["date"].is_monotonic_increasing
    assert PriceStore(root).manifest("ACME").rows == 60


def test_concurrent_overlapping_ingestion_threads(tmp_path: Path) -> None:
    files = [
        csv_file(tmp_path / str(i), "ACME.csv", rows_for(range(i * 10, i * 10 + 30)))
        for i in range(4)
    ]
    store = PriceStore(tmp_path / "store")
    parsed = [read_price_file(f) for f in files]
    added: list[int] = []
    lock = threading.Lock()

    def work(p: object) -> None:
        n = store.merge(p).added  # type: ignore[arg-type]
        with lock:
            added.append(n)

    threads = [threading.Thread(target=work, args=(p,)) for p in parsed * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(added) == 60
    assert len(store.load("ACME")) == 60
    leftovers = [n for n in os.listdir(tmp_path / "store" / "ticker=ACME") if n.endswith(".tmp")]
    assert leftovers == []


# ---------------------------------------------------------------- the store as a dataset


@pytest.fixture
def two_tickers(tmp_path: Path) -> Path:
    rows = [f"MSFT,{r}" for r in rows_for(range(4))] + [
        f"000001.SZ,{r}" for r in rows_for(range(3))
    ]
    store = PriceStore(tmp_path / "store")
    store.merge_all(read_price_file(csv_file(tmp_path, "m.csv", rows, header="ticker," + HEADER)))
    return tmp_path / "store"


WANT = {"MSFT": 4, "000001.SZ": 3}


def _counts(tickers: list[object]) -> dict[str, int]:
    assert all(isinstance(t, str) for t in tickers), {type(t) for t in tickers}
    return {t: tickers.count(t) for t in set(tickers)}  # type: ignore[misc]


def test_pandas_reads_the_store_folder(two_tickers: Path) -> None:
    df = pd.read_parquet(two_tickers)
    assert _counts(df["ticker"].astype(str).tolist()) == WANT
    assert df["ticker"].cat.categories.dtype.kind in "OT"  # strings (object or str)
    assert {"date", "open", "close", "volume", "amount"} <= set(df.columns)
    assert list(df.columns).count("ticker") == 1


def test_pyarrow_dataset_with_hive_partitioning(two_tickers: Path) -> None:
    import pyarrow.dataset as ds

    table = ds.dataset(two_tickers, partitioning="hive").to_table()
    assert table.schema.field("ticker").type == pa.string()
    assert table.schema.names.count("ticker") == 1
    assert _counts(table.column("ticker").to_pylist()) == WANT
    assert PriceStore(two_tickers).dataset().to_table().num_rows == 7


def test_duckdb_reads_the_glob_with_hive_partitioning(two_tickers: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(
        f"SELECT ticker, typeof(ticker), count(*) FROM read_parquet("
        f"'{two_tickers}/**/*.parquet', hive_partitioning = true) GROUP BY ALL"
    ).fetchall()
    assert {t: n for t, _, n in rows} == WANT and {ty for _, ty, _ in rows} == {"VARCHAR"}


def test_dask_reads_the_store_folder(two_tickers: Path) -> None:
    dd = pytest.importorskip("dask.dataframe")
    df = dd.read_parquet(str(two_tickers)).compute()
    assert _counts(df["ticker"].astype(str).tolist()) == WANT


def test_polars_reads_the_store_folder(two_tickers: Path) -> None:
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(two_tickers)
    assert df.schema["ticker"] == pl.String
    assert _counts(df["ticker"].to_list()) == WANT


def test_readers_skip_the_lock_and_a_crashed_writes_leftover(two_tickers: Path) -> None:
    """Hidden names are skipped by pandas, pyarrow and Dask; Polars reads every file below a
    folder unless given the glob, and the next merge of that ticker removes the leftover."""
    d = two_tickers / "ticker=MSFT"
    leftover = d / ".data.parquet.x1y2.tmp"
    leftover.write_bytes(b"half a file")
    assert (d / ".lock").exists()
    assert len(pd.read_parquet(two_tickers)) == 7
    pl = pytest.importorskip("polars")
    assert len(pl.read_parquet(f"{two_tickers}/**/*.parquet", hive_partitioning=True)) == 7
    store = PriceStore(two_tickers)
    store.merge(
        read_price_file(csv_file(two_tickers.parent / "again", "MSFT.csv", rows_for(range(4))))
    )
    assert not leftover.exists()
    assert len(pl.read_parquet(two_tickers)) == 7


def test_store_dataset_keeps_digit_only_tickers_as_strings(tmp_path: Path) -> None:
    rows = [f"000001,{r}" for r in rows_for(range(2))] + [f"600519,{r}" for r in rows_for(range(3))]
    store = PriceStore(tmp_path / "store")
    store.merge_all(read_price_file(csv_file(tmp_path, "m.csv", rows, header="ticker," + HEADER)))
    table = store.dataset().to_table()
    assert _counts(table.column("ticker").to_pylist()) == {"000001": 2, "600519": 3}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_and_folders_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from pipelines import fsio

    old = os.umask(umask)
    fsio._umask.cache_clear()
    try:
        store = PriceStore(tmp_path / "store")
        store.merge(read_price_file(csv_file(tmp_path, "ACME.csv", rows_for(range(3)))))
        store.merge(read_price_file(csv_file(tmp_path / "n", "ACME.csv", rows_for(range(5)))))
    finally:
        os.umask(old)
        fsio._umask.cache_clear()
    d = tmp_path / "store" / "ticker=ACME"
    assert (d / "data.parquet").stat().st_mode & 0o777 == 0o666 & ~umask
    assert d.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o777 & ~umask
