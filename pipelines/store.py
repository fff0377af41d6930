"""The Parquet price store: a Hive-partitioned dataset, merged incrementally, atomically, locked.

Layout::

    <root>/ticker=<T>/data.parquet   # columns date, open, high, low, close, volume, amount
    <root>/ticker=<T>/.lock          # the lock for read-merge-write (while held)

Any Parquet reader opens ``<root>`` as a dataset with ``ticker`` as its partition column
(pandas, pyarrow.dataset with ``partitioning="hive"``, DuckDB, Dask, Polars): the files hold no
``ticker`` column of their own, and nothing else in the tree is visible to them (hidden names).
The manifest (first/last date, row count, SHA-256 of the canonical rows) lives in the Parquet
footer's key-value metadata, so data and manifest change together in one atomic replacement
(:func:`pipelines.fsio.atomic_write`). Readers need no lock: they see the old or the new file.
A ``manifest.json`` left by earlier versions (which broke dataset readers) is removed by the
next merge; :meth:`PriceStore.upgrade` removes them all at once.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.errors import InputError, PipelineError
from pipelines.fsio import atomic_write, file_lock
from pipelines.ingest import PRICE_SCHEMA, VALUE_COLUMNS, ParsedFile, source_lines, validate_ticker

__all__ = [
    "STORE_SCHEMA",
    "Manifest",
    "MergeReport",
    "PriceStore",
    "UnknownTickerError",
    "describe",
]

STORE_SCHEMA = pa.schema([f for f in PRICE_SCHEMA if f.name != "ticker"])
MANIFEST_KEY = b"lstm_pipeline.manifest"
DATA_FILE = "data.parquet"
LEGACY_MANIFEST_FILE = "manifest.json"  # written by earlier versions; removed on sight
LOCK_FILE = ".lock"
_EPOCH = dt.date(1970, 1, 1)


class UnknownTickerError(PipelineError, KeyError):
    """The store holds no data for this ticker."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Manifest:
    ticker: str
    first_date: dt.date
    last_date: dt.date
    rows: int
    digest: str  # sha256 of the canonical stored rows, see table_digest

    def to_json(self) -> str:
        d = asdict(self)
        d["first_date"] = self.first_date.isoformat()
        d["last_date"] = self.last_date.isoformat()
        return json.dumps({"format": 1, **d}, ensure_ascii=False, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        d = json.loads(text)
        return cls(
            ticker=d["ticker"],
            first_date=dt.date.fromisoformat(d["first_date"]),
            last_date=dt.date.fromisoformat(d["last_date"]),
            rows=int(d["rows"]),
            digest=d["digest"],
        )


@dataclass(frozen=True)
class MergeReport:
    ticker: str
    added: int
    replaced: int
    unchanged: int
    before: Manifest | None
    after: Manifest

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced)


def table_digest(table: pa.Table) -> str:
    """SHA-256 of a stored table's canonical form (independent of Parquet encoding details)."""
    table = table.select(STORE_SCHEMA.names).cast(STORE_SCHEMA)
    h = hashlib.sha256(b"lstm_pipeline.prices.v1\n")
    h.update(str(table.num_rows).encode() + b"\n")
    for name in STORE_SCHEMA.names:
        arr = table.column(name).combine_chunks()
        h.update(name.encode() + b"\n")
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        h.update(np.packbits(valid).tobytes())
        if name == "date":
            vals = arr.cast(pa.int32()).fill_null(0).to_numpy()
        else:
            vals = arr.fill_null(0.0).to_numpy()
        h.update(np.ascontiguousarray(vals).astype(vals.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _to_date(days: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(days))


@dataclass
class _Plan:
    ticker: str
    table: pa.Table | None  # None: nothing to write
    report: MergeReport


class _Col:
    """Sequence view of a string column for ``bisect`` (only a few dozen look-ups)."""

    def __init__(self, col: pa.ChunkedArray) -> None:
        self.col = col

    def __len__(self) -> int:
        return len(self.col)

    def __getitem__(self, i: int) -> str:
        return self.col[i].as_py()


class PriceStore:
    """A folder of per-ticker Parquet files; see the module docstring for the layout."""

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
        tickers = self._tickers_of(parsed)
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
        parts = list(self._split(parsed))
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
        for ticker, new, rows in self._split(parsed):
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

    @staticmethod
    def _tickers_of(parsed: ParsedFile) -> list[str]:
        if parsed.tickers:
            return list(parsed.tickers)
        return sorted(set(parsed.table.column("ticker").unique().to_pylist()))

    def _split(self, parsed: ParsedFile) -> Iterator[tuple[str, pa.Table, np.ndarray | None]]:
        table = parsed.table
        if table.num_rows == 0:
            return
        rows = parsed.source_rows
        col = table.column("ticker")
        names = sorted(set(parsed.tickers)) if parsed.tickers else []
        if len(names) == 1 and pc.min_max(col).as_py() == {"min": names[0], "max": names[0]}:
            yield validate_ticker(names[0]), table, rows
            return
        if names:
            # read_price_file sorts by ticker: find each run by bisection, then verify it
            n = table.num_rows
            starts = [bisect.bisect_left(_Col(col), t, 0, n) for t in names]
            ends = [*starts[1:], n]
            if (
                all(
                    pc.min_max(col.slice(s, e - s)).as_py() == {"min": t, "max": t}
                    for t, s, e in zip(names, starts, ends, strict=True)
                )
                and starts[0] == 0
            ):
                for t, s, e in zip(names, starts, ends, strict=True):
                    yield (
                        validate_ticker(t),
                        table.slice(s, e - s),
                        (rows[s:e] if rows is not None else None),
                    )
                return
        # general case (hand-built tables): group by dictionary code
        enc = col.combine_chunks().dictionary_encode()
        codes = enc.indices.to_numpy()
        labels = enc.dictionary.to_pylist()
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        bounds = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        starts_a = np.concatenate(([0], bounds))
        ends_a = np.concatenate((bounds, [len(codes)]))
        parts = sorted(
            (validate_ticker(labels[codes[s]]), int(s), int(e))
            for s, e in zip(starts_a, ends_a, strict=True)
        )
        for t, s, e in parts:
            idx = order[s:e]
            yield t, table.take(pa.array(idx)), (rows[idx] if rows is not None else None)

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
        new, rows = _sorted_unique(parsed, new, rows)
        before = self.manifest(ticker)
        if before is None:
            merged, added, replaced, unchanged = new, new.num_rows, 0, 0
        else:
            old = self.read_table(ticker)
            merged, added, replaced, unchanged = self._combine(
                parsed, ticker, old, new, rows, replace
            )
        if merged is None:
            return _Plan(ticker, None, MergeReport(ticker, 0, 0, unchanged, before, before))
        dates = merged.column("date").cast(pa.int32()).to_numpy()
        after = Manifest(
            ticker=ticker,
            first_date=_to_date(dates[0]),
            last_date=_to_date(dates[-1]),
            rows=merged.num_rows,
            digest=table_digest(merged),
        )
        return _Plan(ticker, merged, MergeReport(ticker, added, replaced, unchanged, before, after))

    @staticmethod
    def _combine(
        parsed: ParsedFile,
        ticker: str,
        old: pa.Table,
        new: pa.Table,
        rows: np.ndarray | None,
        replace: bool,
    ) -> tuple[pa.Table | None, int, int, int]:
        od = old.column("date").cast(pa.int32()).to_numpy()
        nd = new.column("date").cast(pa.int32()).to_numpy()
        common, oi, ni = np.intersect1d(od, nd, assume_unique=True, return_indices=True)
        conflict = np.zeros(len(common), dtype=bool)
        first_col: dict[int, str] = {}
        if len(common):
            for k in VALUE_COLUMNS:
                a = old.column(k).to_numpy()[oi].astype(np.float64)
                b = new.column(k).to_numpy()[ni].astype(np.float64)
                ne = ~((a == b) | (np.isnan(a) & np.isnan(b)))
                for j in np.flatnonzero(ne & ~conflict):
                    first_col[int(j)] = k
                conflict |= ne
        n_conf = int(conflict.sum())
        if n_conf and not replace:
            j = int(np.flatnonzero(conflict)[0])
            k = first_col[j]
            new_v = new.column(k)[int(ni[j])].as_py()
            old_v = old.column(k)[int(oi[j])].as_py()
            line = None
            if rows is not None:
                with contextlib.suppress(OSError):
                    line = source_lines(parsed.path, [int(rows[ni[j]])])[0]
            raise InputError(
                parsed.path,
                f"{ticker} {_to_date(common[j])}: {k} {_fmt(new_v)} differs from the stored "
                f"value {_fmt(old_v)} (ingest --replace overwrites stored days)",
                line=line,
                column=parsed.source_columns.get(k, k),
            )
        added = len(nd) - len(common)
        unchanged = len(common) - n_conf
        if added == 0 and n_conf == 0:
            return None, 0, 0, unchanged
        if n_conf:  # replace: keep old rows whose date is not in the new file
            keep_old = np.ones(len(od), dtype=bool)
            keep_old[oi] = False
            parts = [old.filter(pa.array(keep_old)), new]
        else:
            keep_new = np.ones(len(nd), dtype=bool)
            keep_new[ni] = False
            parts = [old, new.filter(pa.array(keep_new))]
        merged = pa.concat_tables(parts).combine_chunks()
        md = merged.column("date").cast(pa.int32()).to_numpy()
        if len(md) > 1 and not (np.diff(md) > 0).all():
            merged = merged.take(pa.array(np.argsort(md, kind="stable")))
        return merged, added, n_conf, unchanged

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


def describe(report: MergeReport) -> str:
    """One line for the user: what a merge did and what the store now holds."""
    a = report.after
    held = f"{a.rows} rows {a.first_date}..{a.last_date}" if a is not None else "nothing"
    return (
        f"{report.ticker} +{report.added} new, {report.replaced} replaced, "
        f"{report.unchanged} unchanged rows; store holds {held}"
    )


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{float(value):.15g}"


def _sorted_unique(
    parsed: ParsedFile, table: pa.Table, rows: np.ndarray | None
) -> tuple[pa.Table, np.ndarray | None]:
    """Hand-built ParsedFiles may be unsorted: sort them, reject duplicate dates."""
    d = table.column("date").cast(pa.int32()).to_numpy()
    if len(d) > 1 and not (np.diff(d) > 0).all():
        order = np.argsort(d, kind="stable")
        if (np.diff(d[order]) == 0).any():
            raise InputError(parsed.path, "duplicate dates for one ticker in the parsed table")
        table = table.take(pa.array(order))
        rows = rows[order] if rows is not None else None
    return table, rows
