"""The forecast log: every forecast a champion makes, kept as a Hive-partitioned Parquet dataset.

Layout (the folder holds Parquet files only, so pandas, pyarrow and DuckDB read it whole)::

    <data.forecasts>/log/ticker=<T>/<made_on>_v<version>.parquet

One row per (model_name, version, made_on, step): ``step`` k is the k-th trading day after
``made_on`` (the last data date the forecast saw); ``expected_date`` is that day's date (the
model's trading days): scoring matches by step and, with an exchange calendar, scores a row
only if the stored day at that step is its expected date. Bounds are ``lower_<L>``/
``upper_<L>`` for whatever levels the forecast carried. Writes merge under a lock and replace
the file atomically; a row already logged is kept as it is, so logging the same forecast twice
adds nothing. A file that cannot be read stops the write with an error naming it, untouched.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lstm_core.scoring import levels_of
from pipelines.errors import InputError
from pipelines.fsio import atomic_write, file_lock
from pipelines.ingest import validate_ticker

KEY = ["model_name", "version", "made_on", "step"]
COLUMNS = [
    "model_name",
    "version",
    "run_id",
    "made_on",
    "step",
    "expected_date",
    "target",
    "forecast",
]


def rows_from_forecast(
    frame: pd.DataFrame,
    *,
    made_on: dt.date | pd.Timestamp,
    model_name: str,
    version: str,
    run_id: str | None,
    target: str,
) -> pd.DataFrame:
    """Log rows from a forecast frame (``date``, ``forecast``, ``lower_<L>``/``upper_<L>``)."""
    frame = frame.sort_values("date", ignore_index=True)
    out = pd.DataFrame(
        {
            "model_name": model_name,
            "version": str(version),
            "run_id": run_id or "",
            "made_on": pd.Timestamp(made_on).date(),
            "step": range(1, len(frame) + 1),
            "expected_date": pd.to_datetime(frame["date"]).dt.date,
            "target": target,
            "forecast": frame["forecast"].astype("float64"),
        }
    )
    for k in levels_of(frame):
        out[f"lower_{k}"] = frame[f"lower_{k}"].astype("float64").to_numpy()
        out[f"upper_{k}"] = frame[f"upper_{k}"].astype("float64").to_numpy()
    out["step"] = out["step"].astype("int32")
    out["logged_at"] = pd.Timestamp.now(tz="UTC")
    return out


class ForecastLog:
    """The log under ``root`` (``<data.forecasts>/log``); locks live in ``lock_dir``."""

    def __init__(self, root: str | Path, lock_dir: str | Path) -> None:
        self.root = Path(root)
        self.lock_dir = Path(lock_dir)

    def _dir(self, ticker: str) -> Path:
        return self.root / f"ticker={validate_ticker(ticker)}"

    def files(self, ticker: str | None = None) -> list[Path]:
        dirs = [self._dir(ticker)] if ticker else sorted(self.root.glob("ticker=*"))
        return sorted(p for d in dirs if d.is_dir() for p in d.glob("[!._]*.parquet"))

    def tickers(self) -> list[str]:
        return sorted({p.parent.name.split("=", 1)[1] for p in self.files()})

    @staticmethod
    def _read_file(path: Path) -> pd.DataFrame:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                path,
                f"not a readable forecast-log Parquet file ({exc}); it was left as it is: "
                "move it out of the log folder to go on",
            ) from None
        frame = table.to_pandas()
        missing = [c for c in KEY if c not in frame.columns]
        if missing:
            raise InputError(path, f"forecast-log file lacks the column(s) {missing}")
        return frame

    def read(self, ticker: str | None = None) -> pd.DataFrame:
        """Every logged row (with a ``ticker`` column), sorted by made_on, version, step."""
        parts = []
        for path in self.files(ticker):
            frame = self._read_file(path)
            frame.insert(0, "ticker", path.parent.name.split("=", 1)[1])
            parts.append(frame)
        if not parts:
            return pd.DataFrame(columns=["ticker", *COLUMNS])
        out = pd.concat(parts, ignore_index=True)
        out["made_on"] = pd.to_datetime(out["made_on"])
        return out.sort_values(["made_on", "version", "step"], ignore_index=True)

    def append(self, ticker: str, rows: pd.DataFrame) -> int:
        """Add the rows not logged yet; returns how many were added."""
        added = 0
        rows = rows.copy()
        rows["made_on"] = pd.to_datetime(rows["made_on"]).dt.date
        for (made_on, version), part in rows.groupby(["made_on", "version"], sort=True):
            path = self._dir(ticker) / f"{made_on.isoformat()}_v{version}.parquet"
            with file_lock(self.lock_dir / f"forecast-log-{ticker}.lock"):
                added += self._merge(path, part)
        return added

    def _merge(self, path: Path, new: pd.DataFrame) -> int:
        if path.exists():
            old = self._read_file(path)
            old["made_on"] = pd.to_datetime(old["made_on"]).dt.date
            seen = set(map(tuple, old[KEY].astype(str).to_numpy()))
            fresh = new[[tuple(r) not in seen for r in new[KEY].astype(str).to_numpy()]]
            if fresh.empty:
                return 0
            merged = pd.concat([old, fresh], ignore_index=True)
        else:
            fresh = merged = new
        merged = merged.sort_values(KEY, ignore_index=True)
        self._write(path, merged)
        return len(fresh)

    @staticmethod
    def _write(path: Path, frame: pd.DataFrame) -> None:
        """The one place the log writes a file (atomic replace)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write(path, sink.getvalue().to_pybytes())
