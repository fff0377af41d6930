"""The store itself: a folder of per-ticker Parquet files (:mod:`.files`), read without a lock,
merged under each ticker's lock and replaced atomically (:mod:`pipelines.fsio`)."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.errors import PipelineError
from pipelines.fsio import atomic_write, file_lock
from pipelines.ingest import ParsedFile, validate_ticker
from pipelines.store.files import (
    DATA_FILE,
    LEGACY_MANIFEST_FILE,
    LOCK_FILE,
    MANIFEST_KEY,
    STORE_SCHEMA,
    Manifest,
    table_digest,
    to_date,
)
from pipelines.store.merge import (
    MergeReport,
    combine,
    sorted_unique,
    split_by_ticker,
    tickers_of,
)


class UnknownTickerError(PipelineError, KeyError):
    """The store holds no data for this ticker."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class _Plan:
    ticker: str
    table: pa.Table | None  # None: nothing to write
    report: MergeReport


class PriceStore:
    """A folder of per-ticker Parquet files; :mod:`pipelines.store` describes the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths and reading
    def _dir(self, ticker: str) -> Path:
        return self.root / f"ticker={validate_ticker(ticker)}"

    def path(self, ticker: str) -> Path:
        """The Parquet file of ``ticker`` (may not exist)."""
        return self._dir(ticker) / DATA_FILE

    def manifest(self, ticker: str) -> Manifest | None:
        """The ticker's manifest (from the Parquet metadata), or None if it is not stored."""
        path = self.path(ticker)
        try:
            meta = pq.read_schema(path).metadata or {}
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(path, exc) from None
        raw = meta.get(MANIFEST_KEY)
        if raw is None:
            raise PipelineError(f"{path}: no manifest in the Parquet metadata (not written by us?)")
        return Manifest.from_json(raw)

    def tickers(self) -> list[str]:
        """Stored tickers, sorted."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if d.name.startswith("ticker=") and (d / DATA_FILE).is_file():
                out.append(d.name[len("ticker=") :])
        return sorted(out)

    def read_table(self, ticker: str) -> pa.Table:
        """The stored rows of ``ticker`` as an Arrow table (STORE_SCHEMA, sorted by date)."""
        path = self.path(ticker)
        try:
            return pq.read_table(path, schema=STORE_SCHEMA)
        except FileNotFoundError:
            known = ", ".join(self.tickers()) or "none"
            raise UnknownTickerError(
                f"ticker {ticker!r} is not in the store {self.root} (stored: {known})"
            ) from None
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(path, exc) from None

    def load(self, ticker: str) -> pd.DataFrame:
        """Columns date (datetime64[ns]), open, high, low, close, volume[, amount], sorted by date.

        ``amount`` is included only when the ticker has at least one amount value.
        """
        table = self.read_table(ticker)
        if table.column("amount").null_count == table.num_rows:
            table = table.drop_columns(["amount"])
        df = table.to_pandas(date_as_object=False)
        df["date"] = df["date"].astype("datetime64[ns]")
        return df

    def dataset(self) -> ds.Dataset:
        """All stored tickers as one Arrow dataset with a ``ticker`` partition column.

        ``ticker`` is declared a string: readers that infer it would make ``600519`` a number.
        """
        files = [str(self.path(t)) for t in self.tickers()]
        return ds.dataset(
            files,
            schema=STORE_SCHEMA.append(pa.field("ticker", pa.string())),
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("ticker", pa.string())]), flavor="hive"),
            partition_base_dir=str(self.root),
        )

    # ------------------------------------------------------------------ merging
    def merge(self, parsed: ParsedFile, *, replace: bool = False) -> MergeReport:
        """Merge a single-ticker ParsedFile (atomic, locked). Multi-ticker files: ``merge_all``."""
        tickers = tickers_of(parsed)
        if len(tickers) != 1:
            raise PipelineError(
                f"{parsed.path}: holds {len(tickers)} tickers; use PriceStore.merge_all"
            )
        return self.merge_all(parsed, replace=replace)[0]

    def merge_all(self, parsed: ParsedFile, *, replace: bool = False) -> list[MergeReport]:
        """Split ``parsed`` by ticker and merge each part; one report per ticker, sorted.

        All tickers' locks are held (taken in sorted order) while every part is checked, so a
        conflict in any ticker raises before anything is written. Re-merging the same rows writes
        nothing. A row for a stored date with different values raises InputError naming the line,
        the column and both values, unless ``replace=True``.
        """
        parts = list(split_by_ticker(parsed))
        self.upgrade()
        with contextlib.ExitStack() as stack:
            for ticker, _, _ in parts:
                stack.enter_context(self._locked(ticker))
            if len(parts) == 1:
                plans = [self._plan(parsed, *parts[0], replace)]
                self._apply(plans[0])
            else:  # Parquet I/O, hashing and fsync release the GIL: overlap them
                with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                    plans = list(pool.map(lambda p: self._plan(parsed, *p, replace), parts))
                    list(pool.map(self._apply, plans))
        return [p.report for p in plans]

    def preview_all(self, parsed: ParsedFile, *, replace: bool = False) -> dict[str, pd.DataFrame]:
        """What ``merge_all`` would store, per ticker, as :meth:`load` frames; writes nothing.

        Raises the same InputError as ``merge_all`` on a conflict. Used to check a file end to
        end (including training feasibility) before anything is written.
        """
        out: dict[str, pd.DataFrame] = {}
        for ticker, new, rows in split_by_ticker(parsed):
            plan = self._plan(parsed, ticker, new, rows, replace)
            table = plan.table if plan.table is not None else self.read_table(ticker)
            if table.column("amount").null_count == table.num_rows:
                table = table.drop_columns(["amount"])
            df = table.to_pandas(date_as_object=False)
            df["date"] = df["date"].astype("datetime64[ns]")
            out[ticker] = df
        return out

    def _apply(self, plan: _Plan) -> None:
        # Under the ticker's lock no write is in progress: a temporary file is a crash's
        # leftover (Polars, which reads every file below the folder, would trip on it).
        for leftover in self._dir(plan.ticker).glob(f".{DATA_FILE}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if plan.table is not None:
            self._write(plan.ticker, plan.table, plan.report.after)

    def _locked(self, ticker: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._dir(ticker) / LOCK_FILE)

    def _plan(
        self,
        parsed: ParsedFile,
        ticker: str,
        new: pa.Table,
        rows: np.ndarray | None,
        replace: bool,
    ) -> _Plan:
        new = new.select(STORE_SCHEMA.names).cast(STORE_SCHEMA)
        new, rows = sorted_unique(parsed, new, rows)
        before = self.manifest(ticker)
        if before is None:
            merged, added, replaced, unchanged = new, new.num_rows, 0, 0
        else:
            old = self.read_table(ticker)
            merged, added, replaced, unchanged = combine(parsed, ticker, old, new, rows, replace)
        if merged is None:
            return _Plan(ticker, None, MergeReport(ticker, 0, 0, unchanged, before, before))
        dates = merged.column("date").cast(pa.int32()).to_numpy()
        after = Manifest(
            ticker=ticker,
            first_date=to_date(dates[0]),
            last_date=to_date(dates[-1]),
            rows=merged.num_rows,
            digest=table_digest(merged),
        )
        return _Plan(ticker, merged, MergeReport(ticker, added, replaced, unchanged, before, after))

    def _write(self, ticker: str, table: pa.Table, manifest: Manifest) -> None:
        table = table.replace_schema_metadata({MANIFEST_KEY: manifest.to_json().encode()})
        atomic_write(self.path(ticker), lambda tmp: pq.write_table(table, tmp))

    def upgrade(self) -> list[str]:
        """Remove the ``manifest.json`` copies earlier versions wrote; returns the tickers fixed.

        Such a file made the folder unreadable as a Parquet dataset. Its content is in the
        Parquet footer, which stays the only manifest.
        """
        fixed = []
        if self.root.is_dir():
            for d in sorted(self.root.glob(f"ticker=*/{LEGACY_MANIFEST_FILE}")):
                with contextlib.suppress(FileNotFoundError):
                    d.unlink()
                    fixed.append(d.parent.name[len("ticker=") :])
        return fixed


def _damaged(path: Path, exc: Exception) -> PipelineError:
    return PipelineError(
        f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); restore it from a "
        "backup, or delete its folder and ingest the ticker's files again"
    )
