"""The store itself: a folder of per-ticker Parquet files (:mod:`.files`), read without a lock,
merged under each ticker's lock and replaced atomically (:mod:`pipelines.fsio`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.errors import InputError, PipelineError
from pipelines.fsio import atomic_write, file_lock
from pipelines.ingest import (
    ParsedFile,
    case_twin,
    source_lines,
    stored_in_other_case,
    validate_ticker,
)
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
class _Series:
    """A ticker as it would be after the files planned so far in one merge."""

    manifest: Manifest | None  # None: not stored (yet)
    replace: bool
    table: pa.Table | None = None  # read when first needed
    changed: bool = False
    stored_dates: np.ndarray | None = None  # the dates in the store before the merge
    earlier: list[tuple[Path, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def read(self, table: pa.Table) -> None:
        self.table = table
        self.stored_dates = table.column("date").cast(pa.int32()).to_numpy()

    def origin(self, day: int) -> str | None:
        """Where a day of the series comes from: "FILE, line N" of an earlier file; None: stored.

        Without replace a stored day keeps its stored row and a new day the first file's;
        with replace the last file that holds the day wins."""
        if not self.replace and _holds(self.stored_dates, day) is not None:
            return None
        for path, dates, rows in self.earlier if not self.replace else self.earlier[::-1]:
            i = _holds(dates, day)
            if i is not None:
                line = None
                if rows is not None:
                    with contextlib.suppress(OSError):
                        line = source_lines(path, [int(rows[i])])[0]
                return f"{path}, line {line}" if line is not None else str(path)
        return None


def _holds(dates: np.ndarray | None, day: int) -> int | None:
    """The index of ``day`` in the sorted ``dates``, or None."""
    if dates is None:
        return None
    i = int(np.searchsorted(dates, day))
    return i if i < len(dates) and dates[i] == day else None


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

    def lacks(self, ticker: str | None) -> bool:
        """No series of ``ticker`` (None: none at all): `tune` stores the configured sources first."""
        return self.manifest(ticker) is None if ticker else not self.tickers()

    def tickers(self) -> list[str]:
        """Stored tickers, sorted."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if d.name.startswith("ticker=") and (d / DATA_FILE).is_file():
                out.append(d.name[len("ticker=") :])
        return sorted(out)

    def other_case(self, ticker: str) -> str | None:
        """For a ``ticker`` not stored: what to tell the user when its case twin is (they
        most likely typed msft for MSFT), else None."""
        return stored_in_other_case(ticker, self.tickers())

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
        return as_frame(self.read_table(ticker))

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

    def gap_warnings(self, reports: Sequence[MergeReport], exchange: str | None) -> list[str]:
        """One line per ticker that these merges left lacking sessions of ``exchange`` after the
        day it was stored through before them (:func:`pipelines.calendar.gap_warning`).

        Nothing for a ticker new to the store (its history is what it is), nor without an
        exchange: a weekday without a row is then as likely a holiday as a missing day."""
        from pipelines.calendar import gap_warning

        before: dict[str, Manifest | None] = {}
        for report in reports:  # in merge order: the first report holds the stored state
            before.setdefault(report.ticker, report.before)
        lines = []
        for ticker, stored in before.items():
            now = self.manifest(ticker)
            if exchange is None or stored is None or now is None:
                continue
            if now.last_date <= stored.last_date:
                continue
            days = self.read_table(ticker).column("date").cast(pa.int32()).to_numpy()
            since = (stored.last_date - to_date(0)).days
            line = gap_warning(ticker, exchange, days, since)
            if line is not None:
                lines.append(line)
        return lines

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
        return self.merge_files([parsed], replace=replace)[0]

    def merge_files(
        self, files: Sequence[ParsedFile], *, replace: bool = False
    ) -> list[list[MergeReport]]:
        """Merge several files as one, all or nothing: the reports of each file, in order.

        Under every ticker's lock, each file is checked against the store as it would be after
        the files before it (a clash between two files names both), then each changed ticker is
        written once. Any InputError leaves the store as it was.
        """
        parts = [list(split_by_ticker(p)) for p in files]
        tickers = sorted({t for ps in parts for t, _, _ in ps})
        self.upgrade()
        if not all(self._dir(t).is_dir() for t in tickers):
            # a lock makes the ticker's folder: bad input must not leave one for a new ticker
            self._plan_files(files, parts, replace)
        with contextlib.ExitStack() as stack:
            for ticker in tickers:
                stack.enter_context(self._locked(ticker))
            series, reports = self._plan_files(files, parts, replace)
            final = list(series.items())
            if len(final) == 1:
                self._apply(*final[0])
            else:  # Parquet I/O and fsync release the GIL: overlap them
                with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                    list(pool.map(lambda f: self._apply(*f), final))
        return reports

    def preview_files(
        self, files: Sequence[ParsedFile], *, replace: bool = False
    ) -> dict[str, pd.DataFrame]:
        """What ``merge_files`` would store, per ticker, as :meth:`load` frames; writes nothing.

        The same plan as ``merge_files`` (each file against the store as the files before it
        leave it), so the same InputError on a clash. Used to check files end to end, training
        feasibility included, before anything is written.
        """
        parts = [list(split_by_ticker(p)) for p in files]
        series, _ = self._plan_files(files, parts, replace)
        return {ticker: as_frame(s.table) for ticker, s in series.items()}

    def _plan_files(
        self,
        files: Sequence[ParsedFile],
        parts: list[list[tuple[str, pa.Table, np.ndarray | None]]],
        replace: bool,
    ) -> tuple[dict[str, _Series], list[list[MergeReport]]]:
        """Every file's parts planned in order, each against the series the earlier ones left."""
        series: dict[str, _Series] = {}
        reports: list[list[MergeReport]] = []
        stored: list[str] | None = None  # listed when a new ticker first needs them
        for parsed, file_parts in zip(files, parts, strict=True):
            for ticker, _, _ in file_parts:
                if ticker not in series:
                    manifest = self.manifest(ticker)
                    if manifest is None:
                        stored = self.tickers() if stored is None else stored
                        _refuse_case_twin(parsed, ticker, stored, series)
                    series[ticker] = _Series(manifest, replace)

            def plan(part: tuple[str, pa.Table, np.ndarray | None], parsed=parsed) -> MergeReport:
                return self._plan(parsed, *part, replace, series[part[0]])

            if len(file_parts) == 1:
                reports.append([plan(file_parts[0])])
            else:  # distinct tickers, distinct series: plan them side by side
                with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                    reports.append(list(pool.map(plan, file_parts)))
        return series, reports

    def _apply(self, ticker: str, series: _Series) -> None:
        # Under the ticker's lock no write is in progress: a temporary file is a crash's
        # leftover (Polars, which reads every file below the folder, would trip on it).
        for leftover in self._dir(ticker).glob(f".{DATA_FILE}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if series.changed and series.manifest is not None:
            self._write(ticker, series.table, series.manifest)

    def _locked(self, ticker: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._dir(ticker) / LOCK_FILE)

    def _plan(
        self,
        parsed: ParsedFile,
        ticker: str,
        new: pa.Table,
        rows: np.ndarray | None,
        replace: bool,
        series: _Series,
    ) -> MergeReport:
        """``new`` merged into ``series`` (the ticker as the earlier files leave it), which
        becomes the merged series."""
        new = new.select(STORE_SCHEMA.names).cast(STORE_SCHEMA)
        new, rows = sorted_unique(parsed, new, rows)
        before = series.manifest
        if before is None:
            merged, added, replaced, unchanged = new, new.num_rows, 0, 0
        else:
            if series.table is None:
                series.read(self.read_table(ticker))
            origin = series.origin if series.earlier else None
            merged, added, replaced, unchanged = combine(
                parsed, ticker, series.table, new, rows, replace, origin
            )
        series.earlier.append((parsed.path, new.column("date").cast(pa.int32()).to_numpy(), rows))
        if merged is None:
            return MergeReport(ticker, 0, 0, unchanged, before, before)
        dates = merged.column("date").cast(pa.int32()).to_numpy()
        after = Manifest(
            ticker=ticker,
            first_date=to_date(dates[0]),
            last_date=to_date(dates[-1]),
            rows=merged.num_rows,
            digest=table_digest(merged),
        )
        series.table, series.manifest, series.changed = merged, after, True
        return MergeReport(ticker, added, replaced, unchanged, before, after)

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


def _refuse_case_twin(
    parsed: ParsedFile, ticker: str, stored: list[str], planned: dict[str, _Series]
) -> None:
    """A new ticker that differs only in case from a stored one, or from another new one of
    the same merge, is refused: it would start a second series of the same ticker."""
    twin = case_twin(ticker, stored)
    if twin is not None:
        raise InputError(
            parsed.path,
            f"ticker {ticker!r} differs only in case from the stored {twin!r}: tickers are "
            f"case-sensitive, so this would start a second ticker; name it {twin!r}",
        )
    twin = case_twin(ticker, planned)
    if twin is not None:
        raise InputError(
            parsed.path,
            f"ticker {ticker!r} differs only in case from {twin!r}, which this ingest also "
            "stores: tickers are case-sensitive, so this would start two tickers; name both alike",
        )


def as_frame(table: pa.Table) -> pd.DataFrame:
    """A stored table as :meth:`PriceStore.load` returns it (no all-null amount column)."""
    if table.column("amount").null_count == table.num_rows:
        table = table.drop_columns(["amount"])
    df = table.to_pandas(date_as_object=False)
    df["date"] = df["date"].astype("datetime64[ns]")
    return df


def _damaged(path: Path, exc: Exception) -> PipelineError:
    return PipelineError(
        f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); restore it from a "
        "backup, or delete its folder and ingest the ticker's files again"
    )
