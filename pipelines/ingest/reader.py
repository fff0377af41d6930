"""The reader: one price CSV through decoding, layout detection, dates, tickers, missing
values and value checks, into one normalized :class:`ParsedFile`."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.errors import InputError
from pipelines.ingest import checks, dates, layout
from pipelines.ingest.decoding import load_utf8
from pipelines.ingest.missing import forward_fill, handle_missing
from pipelines.ingest.rows import Rows
from pipelines.ingest.schema import (
    PRICE_SCHEMA,
    VALUE_COLUMNS,
    ParsedFile,
    fmt,
    line_of,
    source_lines,
)
from pipelines.ingest.tickers import assign_tickers, validate_ticker

if TYPE_CHECKING:
    from pipelines.config import DataConfig, JumpLimits


def read_price_file(
    path: str | Path,
    *,
    ticker: str | None = None,
    column_map: dict[str, str] | None = None,
    missing: Literal["error", "drop", "ffill"] = "error",
    max_daily_change: JumpLimits | Mapping[str, float] | tuple[float, float] | None = None,
    calendar: str | None | Literal[False] = False,
) -> ParsedFile:
    """Read, validate and normalize one price CSV.

    The ticker comes from ``ticker``, else the file's ``ts_code``/``ticker``/``symbol`` column,
    else the file name stem. A ticker column with several values gives one ParsedFile holding all
    of them (``ticker == "*"``; merge with ``PriceStore.merge_all``). ``missing`` decides what
    happens to rows with a missing value: ``"error"`` (default), ``"drop"`` them, or ``"ffill"``
    (carry the ticker's previous value forward; rows with no earlier value are dropped). The
    returned ``notes`` say what was done. ``max_daily_change`` (e.g. ``DEFAULT_MAX_DAILY_CHANGE``,
    which the pipeline passes by default; ``None``, this function's default, skips the check)
    rejects a close-to-close move larger than a split-sized one (see ``jump_limits``), here and,
    when the file is merged, against the stored neighbours of its rows. ``calendar`` rejects
    rows on days an exchange was closed: an exchange_calendars code (as ``data.calendar``), or
    None for Saturdays and Sundays; ``False``, this function's default, skips the check. Raises
    :class:`InputError` (single line, with file, line, column) on any problem.
    """
    path = Path(path)
    if missing not in ("error", "drop", "ffill"):
        raise ValueError(f"missing must be 'error', 'drop' or 'ffill', not {missing!r}")
    if ticker is not None:
        ticker = validate_ticker(ticker)
    limits = checks.jump_limits(max_daily_change)
    buf, encoding = load_utf8(path)
    header, first = layout.read_header(path, buf)
    layout_name, cols = layout.detect(path, header, column_map)
    notes: list[str] = []
    if encoding == "gb18030":
        notes.append("decoded from GB18030")

    table = _read_csv(path, buf, header, first, cols)
    if table.num_rows == 0:
        raise InputError(path, "header only: no data rows", line=2)
    rows, names = _extract(table, cols)
    n = len(rows)
    present = [k for k in VALUE_COLUMNS if k in rows.values]
    ticker_column = "ticker" in cols and ticker is None
    handle_missing(path, rows, cols, present, missing, ticker_column, notes)

    if not pa.types.is_date32(table.column(cols["date"]).type):
        strings = table.column(cols["date"]).combine_chunks()
        if len(rows) != n:
            strings = strings.take(pa.array(rows.rowidx))
        rows.date = dates.parse_dates(path, strings, rows.rowidx, cols["date"])
    dates.check_not_future(path, rows.date, rows.rowidx, cols["date"])
    if calendar is not False:
        dates.check_trading_days(path, rows.date, rows.rowidx, cols["date"], calendar, layout_name)

    tickers = assign_tickers(path, rows, names, cols.get("ticker"), ticker, notes)
    if layout_name == "tushare":
        if "volume" in rows.values:
            rows.values["volume"] = np.round(rows.values["volume"] * 100.0, 4)
        if "amount" in rows.values:
            rows.values["amount"] = np.round(rows.values["amount"] * 1000.0, 4)
        notes.append("converted vol (lots of 100) to shares and amount (thousand yuan) to yuan")

    _sort_and_dedupe(path, rows, cols, present, notes)
    if missing == "ffill" and rows.filled.any():
        forward_fill(path, rows, present, notes)
    checks.check_values(path, rows, cols, present)
    if limits is not None:
        checks.check_jumps(path, rows, cols, limits)
    return ParsedFile(
        path=path,
        ticker=tickers[0] if len(tickers) == 1 else "*",
        layout=layout_name,
        table=_normalized(rows, tickers),
        notes=tuple(notes),
        tickers=tuple(tickers),
        source_rows=rows.rowidx,
        source_columns=dict(cols),
        max_daily_change=limits,
    )


def read_configured(data: DataConfig, path: str | Path, ticker: str | None = None) -> ParsedFile:
    """`read_price_file` with the options of the `data` section; logs what was done."""
    parsed = read_price_file(
        path,
        ticker=ticker,
        column_map=data.column_map,
        missing=data.missing,
        # split-sized jumps are errors unless data.max_daily_change is null
        max_daily_change=data.max_daily_change,
        calendar=data.calendar,  # no row on a day the exchange was closed
    )
    for note in parsed.notes:
        logging.getLogger("pipelines").info("%s: %s", path, note)
    return parsed


# --------------------------------------------------------------------------------------------
# CSV to columns: a fast typed read, else an all-strings read that locates the problem


def _read_csv(
    path: Path, buf: pa.Buffer, header: list[str], first: str | None, cols: dict[str, str]
) -> pa.Table:
    date_fast = False
    if first is not None:
        try:
            row = next(csv.reader([first]))
            idx = header.index(cols["date"])
            date_fast = idx < len(row) and bool(dates.ISO_RE.fullmatch(row[idx].strip()))
        except (ValueError, csv.Error):
            date_fast = False
    try:
        return _read_table(buf, cols, date_fast, as_strings=False)
    except pa.ArrowInvalid:
        try:
            raw_table = _read_table(buf, cols, date_fast, as_strings=True)
        except pa.ArrowInvalid as e2:
            raise _csv_structure_error(path, buf, str(e2)) from None
        return _strings_to_columns(path, raw_table, cols)


def _read_table(
    buf: pa.Buffer, cols: dict[str, str], date_fast: bool, as_strings: bool
) -> pa.Table:
    include = list(dict.fromkeys(cols.values()))
    types: dict[str, pa.DataType] = {}
    for key, src in cols.items():
        if as_strings:
            types[src] = pa.string()
        elif key == "ticker":
            types[src] = pa.dictionary(pa.int32(), pa.string())
        elif key == "date":
            types[src] = pa.date32() if date_fast else pa.string()
        else:
            types[src] = pa.float64()
    return pacsv.read_csv(
        pa.BufferReader(buf),
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(
            include_columns=include,
            column_types=types,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _first_failure(arr: pa.Array, op: Callable[[pa.Array], object]) -> int | None:
    """Index of the first element on which ``op`` fails (bisection), or None."""
    try:
        op(arr)
        return None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            op(arr.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _csv_structure_error(path: Path, buf: pa.Buffer, message: str) -> InputError:
    """Locate a row with the wrong number of fields, for a pyarrow parse error."""
    text = io.StringIO(memoryview(buf).tobytes().decode("utf-8", errors="replace"), newline="")
    reader = csv.reader(text)
    width = None
    try:
        for row in reader:
            if not row:
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return InputError(
                    path,
                    f"not a valid CSV row: expected {width} fields, got {len(row)}",
                    line=reader.line_num,
                )
    except csv.Error as e:
        return InputError(path, f"not a valid CSV file: {e}", line=reader.line_num)
    first = message.strip().splitlines()[0] if message.strip() else "unreadable CSV"
    return InputError(path, f"cannot parse CSV: {first}")


def _strings_to_columns(path: Path, table: pa.Table, cols: dict[str, str]) -> pa.Table:
    """Slow path: convert an all-string table column by column, locating the first bad value."""
    out = {}
    for key, src in cols.items():
        col = table.column(src).combine_chunks()
        if key == "ticker":
            out[src] = col.dictionary_encode()
        elif key == "date":
            out[src] = col
        else:
            trimmed = pc.utf8_trim_whitespace(col)
            bad = _first_failure(trimmed, lambda a: pc.cast(a, pa.float64()))
            if bad is not None:
                raise InputError(
                    path,
                    f"non-numeric value {trimmed[bad].as_py()!r}",
                    line=line_of(path, bad),
                    column=src,
                )
            out[src] = pc.cast(trimmed, pa.float64())
    return pa.table(out)


def _extract(table: pa.Table, cols: dict[str, str]) -> tuple[Rows, list[str]]:
    """The table as :class:`Rows`, and the ticker names its codes index."""
    n = table.num_rows
    values: dict[str, np.ndarray] = {}
    for key in VALUE_COLUMNS:
        if key in cols:
            arr = table.column(cols[key])
            values[key] = np.asarray(arr.to_numpy(), dtype=np.float64)
    dcol = table.column(cols["date"]).combine_chunks()
    date_null = ~pc.is_valid(dcol).to_numpy(zero_copy_only=False)
    if pa.types.is_date32(dcol.type):
        date = pc.fill_null(dcol.cast(pa.int32()), 0).to_numpy()
    else:
        date = np.zeros(n, dtype=np.int32)
    if "ticker" in cols:
        tcol = table.select([cols["ticker"]]).unify_dictionaries().column(0).combine_chunks()
        codes = pc.fill_null(tcol.indices, -1).to_numpy().astype(np.int32)
        names = tcol.dictionary.to_pylist()
    else:
        codes = np.zeros(n, dtype=np.int32)
        names = [""]
    rowidx = np.arange(n, dtype=np.int64)
    return Rows(date, date_null, codes, values, rowidx, np.zeros(n, dtype=bool)), names


# --------------------------------------------------------------------------------------------
# Order: by (ticker, date); exact duplicates removed, conflicting ones an error


def _sort_and_dedupe(
    path: Path, rows: Rows, cols: dict[str, str], present: list[str], notes: list[str]
) -> None:
    key = (rows.codes.astype(np.int64) << 32) | (rows.date.astype(np.int64) + (1 << 31))
    if len(key) > 1:
        step = np.diff(key)
        if (step > 0).all():
            order = None
        elif (step < 0).all():
            order = np.arange(len(key) - 1, -1, -1)
            notes.append("reordered rows oldest first")
        else:
            order = np.argsort(key, kind="stable")
    else:
        order = None
    if order is not None:
        key = key[order]
        rows.take(order)
    dup = np.flatnonzero(key[1:] == key[:-1]) + 1
    if not len(dup):
        return
    differs = np.zeros(len(dup), dtype=bool)
    first_col: list[str | None] = [None] * len(dup)
    for k in present:
        a, b = rows.values[k][dup - 1], rows.values[k][dup]
        ne = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        for j in np.flatnonzero(ne & ~differs):
            first_col[j] = k
        differs |= ne
    if differs.any():
        cand = np.flatnonzero(differs)
        later = np.maximum(rows.rowidx[dup[cand]], rows.rowidx[dup[cand] - 1])
        j = cand[np.argmin(later)]
        a_i, b_i = int(dup[j] - 1), int(dup[j])
        k = first_col[j]
        la, lb = source_lines(path, [int(rows.rowidx[a_i]), int(rows.rowidx[b_i])])
        day = dates.EPOCH + np.timedelta64(int(rows.date[b_i]), "D")
        if lb is not None and la is not None and la > lb:
            la, lb, a_i, b_i = lb, la, b_i, a_i
        raise InputError(
            path,
            f"duplicate date {day} with different values: {fmt(rows.values[k][b_i])} here "
            f"but {fmt(rows.values[k][a_i])} on line {la}",
            line=lb,
            column=cols[k],
        )
    keep = np.ones(len(key), dtype=bool)
    keep[dup] = False
    rows.take(keep)
    notes.append(f"removed {len(dup)} exact duplicate rows")


def _normalized(rows: Rows, tickers: list[str]) -> pa.Table:
    """The rows as a :data:`PRICE_SCHEMA` table."""
    m = len(rows)
    tick = pa.DictionaryArray.from_arrays(
        pa.array(rows.codes if len(tickers) > 1 else np.zeros(m, dtype=np.int32)),
        pa.array(tickers, pa.string()),
    ).cast(pa.string())
    arrays = [tick, pa.array(rows.date, pa.int32()).cast(pa.date32())]
    for k in VALUE_COLUMNS:
        if k in rows.values:
            v = rows.values[k]
            mask = np.isnan(v)
            arrays.append(pa.array(v, pa.float64(), mask=mask if mask.any() else None))
        else:
            arrays.append(pa.nulls(m, pa.float64()))
    return pa.Table.from_arrays(arrays, schema=PRICE_SCHEMA)
