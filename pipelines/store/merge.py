"""The arithmetic of a merge: a parsed file split by ticker and sorted, its rows combined with
the stored ones (a changed value is a conflict unless replacing), and what the merge did."""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import InputError
from pipelines.ingest import VALUE_COLUMNS, ParsedFile, source_lines, validate_ticker
from pipelines.ingest.checks import exceeds, jump_problem
from pipelines.store.files import Manifest, to_date

Origin = Callable[[int], str | None]
"""Where a row of the would-be series (by its date, days since 1970) comes from, when it is not
stored yet: "FILE, line N" of an earlier file of the same ingest; None for a stored row."""


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


def describe(report: MergeReport) -> str:
    """One line for the user: what a merge did and what the store now holds."""
    a = report.after
    held = f"{a.rows} rows {a.first_date}..{a.last_date}" if a is not None else "nothing"
    return (
        f"{report.ticker} +{report.added} new, {report.replaced} replaced, "
        f"{report.unchanged} unchanged rows; store holds {held}"
    )


class _Col:
    """Sequence view of a string column for ``bisect`` (only a few dozen look-ups)."""

    def __init__(self, col: pa.ChunkedArray) -> None:
        self.col = col

    def __len__(self) -> int:
        return len(self.col)

    def __getitem__(self, i: int) -> str:
        return self.col[i].as_py()


def tickers_of(parsed: ParsedFile) -> list[str]:
    """The tickers a parsed file holds."""
    if parsed.tickers:
        return list(parsed.tickers)
    return sorted(set(parsed.table.column("ticker").unique().to_pylist()))


def split_by_ticker(parsed: ParsedFile) -> Iterator[tuple[str, pa.Table, np.ndarray | None]]:
    """Each ticker's rows of ``parsed`` with their source line numbers, by ticker."""
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


def sorted_unique(
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


def combine(
    parsed: ParsedFile,
    ticker: str,
    old: pa.Table,
    new: pa.Table,
    rows: np.ndarray | None,
    replace: bool,
    origin: Origin | None = None,
) -> tuple[pa.Table | None, int, int, int]:
    """The stored rows ``old`` with ``new`` merged in: (merged table or None when nothing
    changes, added, replaced, unchanged). A changed value raises InputError unless ``replace``;
    so does a new close that jumps against its stored neighbour (``parsed.max_daily_change``).
    ``origin`` names the file and line an ``old`` row came from when it is not stored yet (an
    earlier file of the same ingest), for the error messages."""
    od = old.column("date").cast(pa.int32()).to_numpy()
    nd = new.column("date").cast(pa.int32()).to_numpy()
    common, oi, ni = np.intersect1d(od, nd, assume_unique=True, return_indices=True)
    conflict = np.zeros(len(common), dtype=bool)
    new_close = np.zeros(len(common), dtype=bool)  # stored days whose close the file changes
    first_col: dict[int, str] = {}
    if len(common):
        for k in VALUE_COLUMNS:
            a = old.column(k).to_numpy()[oi].astype(np.float64)
            b = new.column(k).to_numpy()[ni].astype(np.float64)
            ne = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            for j in np.flatnonzero(ne & ~conflict):
                first_col[int(j)] = k
            conflict |= ne
            if k == "close":
                new_close = ne
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
        where = origin(int(common[j])) if origin is not None else None
        raise InputError(
            parsed.path,
            f"{ticker} {to_date(common[j])}: {k} {_fmt(new_v)} differs from "
            + (
                f"the stored value {_fmt(old_v)} (ingest --replace overwrites stored days)"
                if where is None
                else f"the value {_fmt(old_v)} in {where} (with --replace the later file wins)"
            ),
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
    if parsed.max_daily_change is not None:
        fresh = np.ones(len(nd), dtype=bool)  # the file's rows whose close is not stored yet
        fresh[ni[~new_close]] = False
        check_neighbours(parsed, ticker, merged, new, np.flatnonzero(fresh), rows, origin)
    return merged, added, n_conf, unchanged


def check_neighbours(
    parsed: ParsedFile,
    ticker: str,
    merged: pa.Table,
    new: pa.Table,
    fresh: np.ndarray,
    rows: np.ndarray | None,
    origin: Origin | None = None,
) -> None:
    """Split-sized jumps between the file's new closes (``new`` rows ``fresh``) and the stored
    closes next to them in ``merged`` (the series after the merge): only those pairs are
    compared (the reader compared the file's own rows), with ``parsed.max_daily_change``."""
    limits = parsed.max_daily_change
    if limits is None or not len(fresh):
        return
    md = merged.column("date").cast(pa.int32()).to_numpy()
    nd = new.column("date").cast(pa.int32()).to_numpy()
    pos = np.searchsorted(md, nd[fresh])
    is_new = np.zeros(len(md), dtype=bool)
    is_new[pos] = True
    later = np.unique(np.concatenate((pos, pos + 1)))  # (later - 1, later): day pairs
    later = later[(later >= 1) & (later < len(md))]
    later = later[is_new[later] != is_new[later - 1]]
    if not len(later):
        return
    cl = merged.column("close").to_numpy()
    bad = later[exceeds(cl[later - 1], cl[later], limits)]
    if not len(bad):
        return
    mine = np.where(is_new[bad], bad, bad - 1)  # the file's row of each pair
    j_new = np.searchsorted(nd, md[mine])
    k = int(np.argmin(rows[j_new] if rows is not None else j_new))  # earliest in the file
    i_new, i_old = int(mine[k]), int(bad[k] - 1 if is_new[bad[k]] else bad[k])
    before = i_old < i_new
    where = origin(int(md[i_old])) if origin is not None else None
    other = f"the {'previous' if before else 'next'} close {_fmt(cl[i_old])}, " + (
        f"stored for {ticker} {to_date(md[i_old])}"
        if where is None
        else f"of {ticker} {to_date(md[i_old])} in {where}"
    )
    line = None
    if rows is not None:
        with contextlib.suppress(OSError):
            line = source_lines(parsed.path, [int(rows[j_new[k]])])[0]
    raise InputError(
        parsed.path,
        jump_problem(cl[i_new], cl[i_old], other, limits, before=before),
        line=line,
        column=parsed.source_columns.get("close", "close"),
    )


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{float(value):.15g}"
