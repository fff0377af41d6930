"""Ingestion speed: project ingestion vs a bare pyarrow CSV -> Parquet copy of the same file.

Generates a multi-ticker Yahoo-like CSV (``Ticker,Date,Open,High,Low,Close,Adj Close,Volume``)
of ``--rows`` rows (default 5,000,000) in a temporary folder, then times

* ingest: ``read_price_file`` (all validation on) + ``PriceStore.merge_all`` into an empty store
  (one Parquet file per ticker, fsynced, with manifests);
* bare: ``pyarrow.csv.read_csv`` + ``pyarrow.parquet.write_table`` of the same file.

Prints rows/second for both, peak memory (ru_maxrss) and, as the last line, ``ratio: <x>`` where
x = ingest speed / bare speed.

    .venv/bin/python benchmarks/bench_ingest.py [--rows N] [--tickers K]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ingest import read_price_file  # noqa: E402
from pipelines.store import PriceStore  # noqa: E402


def make_csv(path: Path, rows: int, tickers: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per = -(-rows // tickers)
    first = np.datetime64("2024-01-01", "D") - per  # end before today: no future dates
    with pacsv.CSVWriter(
        path,
        pa.schema(
            [
                ("Ticker", pa.string()),
                ("Date", pa.date32()),
                ("Open", pa.float64()),
                ("High", pa.float64()),
                ("Low", pa.float64()),
                ("Close", pa.float64()),
                ("Adj Close", pa.float64()),
                ("Volume", pa.int64()),
            ]
        ),
    ) as w:
        left = rows
        for t in range(tickers):
            n = min(per, left)
            if n <= 0:
                break
            left -= n
            close = np.round(50 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), 2)
            openp = np.round(close * (1 + rng.normal(0, 0.005, n)), 2)
            high = np.maximum(openp, close) + np.round(rng.uniform(0, 0.5, n), 2)
            low = np.maximum(np.minimum(openp, close) - np.round(rng.uniform(0, 0.5, n), 2), 0.01)
            dates = (first + np.arange(n)).astype("datetime64[D]")
            w.write_table(
                pa.table(
                    {
                        "Ticker": pa.array([f"T{t:04d}"] * n),
                        "Date": pa.array(dates),
                        "Open": openp,
                        "High": high,
                        "Low": low,
                        "Close": close,
                        "Adj Close": close,
                        "Volume": rng.integers(1_000, 10_000_000, n),
                    }
                )
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--tickers", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs each")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        tmpd = Path(tmp)
        src = tmpd / "prices.csv"
        t0 = time.perf_counter()
        make_csv(src, args.rows, args.tickers)
        print(
            f"generated {src.name}: {args.rows:,} rows, {args.tickers} tickers, "
            f"{src.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s"
        )

        bare_s, ingest_s = [], []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            table = pacsv.read_csv(src)
            pq.write_table(table, tmpd / f"bare{i}.parquet")
            bare_s.append(time.perf_counter() - t0)
            del table

            t0 = time.perf_counter()
            parsed = read_price_file(src)
            reports = PriceStore(tmpd / f"store{i}").merge_all(parsed)
            ingest_s.append(time.perf_counter() - t0)
            assert sum(r.added for r in reports) == args.rows, "rows lost"
            assert len(reports) == args.tickers
            del parsed, reports

        t0 = time.perf_counter()
        again = PriceStore(tmpd / "store0").merge_all(read_price_file(src))
        idem_s = time.perf_counter() - t0
        assert sum(r.added for r in again) == 0

        bare, ingest = min(bare_s), min(ingest_s)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"bare pyarrow read_csv+write_table: {args.rows / bare:,.0f} rows/s ({bare:.2f}s)")
        print(
            f"ingest read_price_file+merge_all:  {args.rows / ingest:,.0f} rows/s ({ingest:.2f}s)"
        )
        print(
            f"re-ingest (idempotent, no writes): {args.rows / idem_s:,.0f} rows/s ({idem_s:.2f}s)"
        )
        print(f"peak memory (ru_maxrss): {peak_mb:,.0f} MB")
        print(f"ratio: {bare / ingest:.2f}")


if __name__ == "__main__":
    main()
