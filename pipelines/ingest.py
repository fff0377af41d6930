"""Read and validate daily price CSVs into one normalized Arrow table.

Supported layouts (detected from the header row):

* ``tutorial``: the tutorial's export, GB18030 / UTF-8 / UTF-8 with BOM, Chinese headers
  ``日期`` (or ``交易日期``), ``开盘价(元)``, ``最高价(元)``, ``最低价(元)``, ``收盘价(元)``,
  optionally ``成交量(股)`` and ``成交额(元)``.
* ``tushare``: ``ts_code, trade_date (YYYYMMDD), open, high, low, close, pre_close, change,
  pct_chg, vol, amount``, newest row first, optionally a leading unnamed index column.
  ``vol`` (lots of 100 shares) and ``amount`` (thousands of yuan) are converted to shares and yuan.
* ``yahoo``: ``Date, Open, High, Low, Close[, Adj Close][, Volume]``; other columns (``OpenInt``,
  ``Adj Close``...) are ignored. Dates ISO ``YYYY-MM-DD`` or US ``M/D/YYYY``.
* ``mapped``: anything else, through ``column_map={"date": "Day", "open": "O", ...}``.

Every layout yields the same table, :data:`PRICE_SCHEMA`, sorted by (ticker, date).

Multi-ticker files: a file whose ticker column (``ts_code``, ``ticker`` or ``symbol``) holds
several values gives ONE :class:`ParsedFile` whose table holds all of them (``ParsedFile.ticker``
is then ``"*"`` and ``ParsedFile.tickers`` lists them); :meth:`pipelines.store.PriceStore.merge_all`
splits it by ticker. Single-ticker files work with either ``merge`` or ``merge_all``.

The CSV is read with ``pyarrow.csv`` and validated with vectorized NumPy; line numbers are only
computed when an error is found. Line numbers count as the file does: header is line 1, the first
data row line 2 (blank lines counted; quoted fields spanning lines are not supported).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.errors import InputError, PipelineError

__all__ = [
    "PRICE_SCHEMA",
    "InvalidTickerError",
    "ParsedFile",
    "digest_file",
    "read_configured",
    "read_price_file",
    "source_lines",
    "validate_ticker",
    "jump_limits",
    "DEFAULT_MAX_DAILY_CHANGE",
]

PRICE_SCHEMA = pa.schema(
    [
        pa.field("ticker", pa.string(), nullable=False),
        pa.field("date", pa.date32(), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=True),
        pa.field("amount", pa.float64(), nullable=True),
    ]
)
"""The normalized schema of every parsed file (``volume``/``amount`` all-null when absent)."""

VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "amount")
PRICE_COLUMNS = ("open", "high", "low", "close")
FUTURE_TOLERANCE_DAYS = 3
DEFAULT_MAX_DAILY_CHANGE: dict[str, float] = {"drop": 0.45, "rise": 0.80}
"""Largest close-to-close move accepted by default: a 2:1 split halves the price (-50%), a
1:2 reverse split doubles it (+100%); real crashes and rallies rarely exceed these in one day."""
MAX_TICKER_LENGTH = 64
TICKER_COLUMNS = ("ts_code", "ticker", "symbol")
MAP_FIELDS = ("ticker", "date", "open", "high", "low", "close", "volume", "amount")

_TICKER_RE = re.compile(r"[\w.\-]+")
_EPOCH = np.datetime64("1970-01-01", "D")

if TYPE_CHECKING:
    from pipelines.config import DataConfig


class InvalidTickerError(PipelineError, ValueError):
    """A ticker name that is empty, too long or could escape the store folder."""


@dataclass(frozen=True)
class ParsedFile:
    """A validated, normalized price file.

    ``table`` follows :data:`PRICE_SCHEMA`, sorted by (ticker, date) with unique (ticker, date).
    ``ticker`` is the file's ticker, or ``"*"`` when the file holds several (see ``tickers``).
    ``source_rows`` maps each table row to its data-row index in the file (0 = line 2 when there
    are no blank lines) and ``source_columns`` maps normalized names to the file's headers; both
    are used to name the line and column in merge conflicts, and may be left empty.
    """

    path: Path
    ticker: str
    layout: str
    table: pa.Table
    notes: tuple[str, ...] = ()
    tickers: tuple[str, ...] = ()
    source_rows: np.ndarray | None = field(default=None, compare=False, repr=False)
    source_columns: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rows(self) -> int:
        return self.table.num_rows


def validate_ticker(ticker: str) -> str:
    """Return ``ticker`` (NFC-normalized) if it is a safe store name, else raise InvalidTickerError.

    Allowed: letters (any script), digits, ``.``, ``_``, ``-``; at most 64 characters; not
    starting with ``.``; no ``..``. Hence no path separators and nothing that escapes the store.
    """
    if not isinstance(ticker, str):
        raise InvalidTickerError(f"invalid ticker {ticker!r}: must be a string")
    name = unicodedata.normalize("NFC", ticker)
    if not name:
        raise InvalidTickerError("invalid ticker '': empty")
    if len(name) > MAX_TICKER_LENGTH:
        raise InvalidTickerError(
            f"invalid ticker {name!r}: longer than {MAX_TICKER_LENGTH} characters"
        )
    if not _TICKER_RE.fullmatch(name):
        raise InvalidTickerError(
            f"invalid ticker {name!r}: only letters, digits, '.', '_' and '-' are allowed"
        )
    if name.startswith("."):
        raise InvalidTickerError(f"invalid ticker {name!r}: must not start with '.'")
    if ".." in name:
        raise InvalidTickerError(f"invalid ticker {name!r}: must not contain '..'")
    return name


def jump_limits(
    value: Mapping[str, float] | tuple[float, float] | list[float] | None,
) -> tuple[float, float] | None:
    """Normalize ``max_daily_change`` to ``(max_drop, max_rise)`` fractions, or None (off).

    Accepts ``{"drop": 0.45, "rise": 0.8}``, a ``(drop, rise)`` pair or None. ``drop`` must be in
    (0, 1) and ``rise`` positive.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"drop", "rise"})
        if unknown:
            raise ValueError(f"max_daily_change: unknown key {unknown[0]!r} (allowed: drop, rise)")
        drop = value.get("drop", DEFAULT_MAX_DAILY_CHANGE["drop"])
        rise = value.get("rise", DEFAULT_MAX_DAILY_CHANGE["rise"])
    else:
        drop, rise = value
    drop, rise = float(drop), float(rise)
    if not 0.0 < drop < 1.0 or not rise > 0.0:
        raise ValueError(f"max_daily_change: need 0 < drop < 1 and rise > 0, got {drop}, {rise}")
    return drop, rise


def digest_file(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Line numbers (error path only)


def source_lines(path: str | Path, rows: np.ndarray | list[int]) -> list[int | None]:
    """Physical line numbers (1-based, header = first non-blank line) of data-row indices."""
    raw = Path(path).read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[3:]
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(raw) and raw[-1:] != b"\n":
        ends = np.append(ends, len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([], dtype=np.int64)
    lengths = ends - starts
    # a line holding just "\r" is blank as well
    cr_only = (lengths == 1) & (buf[np.minimum(starts, max(len(buf) - 1, 0))] == 13)
    nonblank = np.flatnonzero((lengths > 0) & ~cr_only) + 1  # 1-based line numbers
    data_lines = nonblank[1:]
    out: list[int | None] = []
    for r in np.asarray(rows, dtype=np.int64):
        out.append(int(data_lines[r]) if 0 <= r < len(data_lines) else None)
    return out


def _line(path: Path, row: int) -> int | None:
    return source_lines(path, [row])[0]


def _fmt(value: float) -> str:
    return f"{float(value):.15g}"


# --------------------------------------------------------------------------------------------
# Bytes -> UTF-8 buffer


def _is_ascii(buf: pa.Buffer, block: int = 1 << 23) -> bool:
    a = np.frombuffer(buf, dtype=np.uint8)
    n8 = len(a) // 8 * 8
    words = a[:n8].view(np.uint64)
    high = np.uint64(0x8080808080808080)
    for i in range(0, len(words), block):
        if (words[i : i + block] & high).any():
            return False
    return not (a[n8:] & 0x80).any()


def _load_utf8(path: Path) -> tuple[pa.Buffer, str]:
    """Return the file as a UTF-8 Arrow buffer (BOM stripped) and the encoding found.

    Pure-ASCII files are memory-mapped and handed to pyarrow without a copy.
    """
    try:
        if path.is_dir():
            raise IsADirectoryError(path)
        size = path.stat().st_size
        mapped = pa.memory_map(str(path)).read_buffer() if size else pa.py_buffer(b"")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a CSV file") from None
    if re.search(rb"\S", memoryview(mapped)) is None:
        raise InputError(path, "file is empty")
    head = memoryview(mapped)[:65536].tobytes()
    if head.startswith(b"PAR1"):
        raise InputError(path, "not a CSV file: looks like a Parquet file")
    for magic, kind in (
        (b"PK\x03\x04", "a ZIP/Excel file"),
        (b"\x1f\x8b", "a gzip file"),
        (b"\xd0\xcf\x11\xe0", "an old Excel/OLE file"),
    ):
        if head.startswith(magic):
            raise InputError(path, f"not a CSV file: looks like {kind}")
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise InputError(path, "not a CSV file: binary content (NUL byte)", line=line)
    if not head.startswith(codecs.BOM_UTF8) and _is_ascii(mapped):
        return mapped, "utf-8"
    raw = mapped.to_pybytes()
    if raw.startswith(codecs.BOM_UTF8):
        try:
            raw[3:].decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start + 3) + 1
            raise InputError(
                path, f"undecodable byte 0x{raw[e.start + 3]:02x}: not valid UTF-8", line=line
            ) from None
        return pa.py_buffer(raw).slice(3), "utf-8-sig"
    try:
        raw.decode("utf-8")
        return pa.py_buffer(raw), "utf-8"
    except UnicodeDecodeError as e1:
        err_utf8 = e1
    try:
        return pa.py_buffer(raw.decode("gb18030").encode("utf-8")), "gb18030"
    except UnicodeDecodeError as e2:
        pos = max(err_utf8.start, e2.start)
        line = raw.count(b"\n", 0, pos) + 1
        raise InputError(
            path,
            f"undecodable byte 0x{raw[pos]:02x}: not valid in UTF-8 nor GB18030",
            line=line,
        ) from None


# --------------------------------------------------------------------------------------------
# Layout detection


def _norm_header(name: str) -> str:
    name = unicodedata.normalize("NFKC", name)  # full-width brackets -> ASCII
    return re.sub(r"\s+", "", name).casefold()


_TUTORIAL = {
    "date": ("日期", "交易日期"),
    "open": ("开盘价(元)", "开盘价"),
    "high": ("最高价(元)", "最高价"),
    "low": ("最低价(元)", "最低价"),
    "close": ("收盘价(元)", "收盘价"),
    "volume": ("成交量(股)",),
    "amount": ("成交额(元)",),
}
_TUSHARE = {
    "date": ("trade_date",),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("vol",),
    "amount": ("amount",),
}
_YAHOO = {
    "date": ("date",),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
}
_REQUIRED = ("date", "open", "high", "low", "close")


def _find(headers: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        hit = headers.get(_norm_header(n))
        if hit is not None:
            return hit
    return None


def _detect(
    path: Path, header: list[str], column_map: Mapping[str, str] | None
) -> tuple[str, dict[str, str]]:
    """Return (layout, {normalized name: file header})."""
    headers: dict[str, str] = {}
    for h in header:
        headers.setdefault(_norm_header(h), h)
    if column_map is not None:
        unknown = sorted(set(column_map) - set(MAP_FIELDS))
        if unknown:
            raise InputError(
                path, f"column_map: unknown field {unknown[0]!r} (allowed: {', '.join(MAP_FIELDS)})"
            )
        missing = [k for k in _REQUIRED if k not in column_map]
        if missing:
            raise InputError(path, f"column_map: missing required field {missing[0]!r}")
        cols: dict[str, str] = {}
        for key, src in column_map.items():
            if src in header:
                cols[key] = src
            elif _norm_header(src) in headers:
                cols[key] = headers[_norm_header(src)]
            else:
                raise InputError(path, "column named in column_map not found", line=1, column=src)
        if "ticker" not in cols:
            t = _find(headers, TICKER_COLUMNS)
            if t is not None:
                cols["ticker"] = t
        return "mapped", cols

    norm = set(headers)
    if norm & {_norm_header(n) for n in _TUTORIAL["date"]}:
        layout, spec = "tutorial", _TUTORIAL
    elif {"ts_code", "trade_date"} <= norm or "trade_date" in norm:
        layout, spec = "tushare", _TUSHARE
    elif "date" in norm:
        layout, spec = "yahoo", _YAHOO
    else:
        raise InputError(
            path,
            "missing date column: expected 日期, trade_date or Date (found: "
            + ", ".join(h for h in header if h)
            + "); pass column_map for other layouts",
            line=1,
        )
    cols = {}
    for key, names in spec.items():
        hit = _find(headers, names)
        if hit is not None:
            cols[key] = hit
        elif key in _REQUIRED:
            raise InputError(
                path,
                f"missing {key} price column for the {layout} layout "
                f"(expected {names[0]!r}; found: {', '.join(h for h in header if h)})",
                line=1,
                column=names[0],
            )
    t = _find(headers, TICKER_COLUMNS)
    if t is not None:
        cols["ticker"] = t
    return layout, cols


def _read_header(path: Path, buf: pa.Buffer) -> tuple[list[str], str | None]:
    """Header fields and the first data row's date-ish first line (for sniffing)."""
    data = memoryview(buf)
    text = bytes(data[: 1 << 16]).decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(path, "file is empty")
    header = next(csv.reader([lines[0]]))
    if len(lines) < 2 and buf.size < (1 << 16):
        raise InputError(path, "header only: no data rows", line=2)
    first = lines[1] if len(lines) > 1 else None
    return header, first


# --------------------------------------------------------------------------------------------
# Date parsing


_DATE_FORMATS: tuple[tuple[str, str], ...] = (
    ("YYYY-MM-DD", r"^(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:[ T]00:00(?::00)?)?$"),
    ("YYYY/MM/DD", r"^(?P<y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})(?:[ T]00:00(?::00)?)?$"),
    ("YYYYMMDD", r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$"),
    ("M/D/YYYY", r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})$"),
)
_ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _parse_dates(path: Path, strings: pa.Array, rowidx: np.ndarray, column: str) -> np.ndarray:
    """Parse date strings (no nulls) to int32 days since epoch; raise on bad / mixed formats."""
    strings = pc.utf8_trim_whitespace(strings)
    matches = []
    for name, pattern in _DATE_FORMATS:
        m = pc.extract_regex(strings, pattern=pattern)
        matches.append((name, m, pc.is_valid(m).to_numpy(zero_copy_only=False)))
    n = len(strings)
    first_fmt = next((i for i, (_, _, ok) in enumerate(matches) if n and ok[0]), None)
    if first_fmt is None:
        raise InputError(
            path,
            f"unparseable date {strings[0].as_py()!r} (supported: "
            + ", ".join(f for f, _ in _DATE_FORMATS)
            + ")",
            line=_line(path, int(rowidx[0])),
            column=column,
        )
    name, m, ok = matches[first_fmt]
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        value = strings[bad].as_py()
        other = next((f for f, _, o in matches if o[bad]), None)
        if other is not None:
            problem = (
                f"mixed date formats: {value!r} is {other} but line "
                f"{_line(path, int(rowidx[0]))} uses {name}"
            )
        else:
            problem = f"unparseable date {value!r} (this file uses {name})"
        raise InputError(path, problem, line=_line(path, int(rowidx[bad])), column=column)
    y = pc.cast(pc.struct_field(m, "y"), pa.int64()).to_numpy()
    mo = pc.cast(pc.struct_field(m, "m"), pa.int64()).to_numpy()
    d = pc.cast(pc.struct_field(m, "d"), pa.int64()).to_numpy()
    bad_md = (mo < 1) | (mo > 12) | (d < 1) | (d > 31)
    months = ((y - 1970) * 12 + np.clip(mo, 1, 12) - 1).astype("datetime64[M]")
    days = months.astype("datetime64[D]") + (np.clip(d, 1, 31) - 1).astype("timedelta64[D]")
    bad = bad_md | (days.astype("datetime64[M]") != months)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            path,
            f"invalid date {strings[i].as_py()!r}",
            line=_line(path, int(rowidx[i])),
            column=column,
        )
    return (days - _EPOCH).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Reading


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


def _read_table(
    path: Path, buf: pa.Buffer, cols: dict[str, str], date_fast: bool, as_strings: bool
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


@dataclass
class _Columns:
    n: int
    date: np.ndarray  # int32 days (garbage where date_null)
    date_null: np.ndarray
    codes: np.ndarray  # int32 ticker codes, -1 = null
    names: list[str]  # code -> raw ticker name
    values: dict[str, np.ndarray]  # float64, NaN = null


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
                    line=_line(path, bad),
                    column=src,
                )
            out[src] = pc.cast(trimmed, pa.float64())
    return pa.table(out)


def _extract(path: Path, table: pa.Table, cols: dict[str, str]) -> _Columns:
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
    return _Columns(n, date, date_null, codes, names, values)


def read_price_file(
    path: str | Path,
    *,
    ticker: str | None = None,
    column_map: dict[str, str] | None = None,
    missing: Literal["error", "drop", "ffill"] = "error",
    max_daily_change: Mapping[str, float] | tuple[float, float] | None = None,
) -> ParsedFile:
    """Read, validate and normalize one price CSV.

    The ticker comes from ``ticker``, else the file's ``ts_code``/``ticker``/``symbol`` column,
    else the file name stem. A ticker column with several values gives one ParsedFile holding all
    of them (``ticker == "*"``; merge with ``PriceStore.merge_all``). ``missing`` decides what
    happens to rows with a missing value: ``"error"`` (default), ``"drop"`` them, or ``"ffill"``
    (carry the ticker's previous value forward; rows with no earlier value are dropped). The
    returned ``notes`` say what was done. ``max_daily_change`` (e.g. :data:`DEFAULT_MAX_DAILY_CHANGE`,
    ``{"drop": 0.45, "rise": 0.80}``, which the pipeline passes by default; ``None``, this
    function's default, skips the check) rejects a close-to-close move larger than a split-sized
    one (see :func:`jump_limits`). Raises :class:`InputError` (single line, with file, line, column)
    on any problem.
    """
    path = Path(path)
    if missing not in ("error", "drop", "ffill"):
        raise ValueError(f"missing must be 'error', 'drop' or 'ffill', not {missing!r}")
    if ticker is not None:
        ticker = validate_ticker(ticker)
    limits = jump_limits(max_daily_change)
    buf, encoding = _load_utf8(path)
    header, first = _read_header(path, buf)
    layout, cols = _detect(path, header, column_map)
    notes: list[str] = []
    if encoding == "gb18030":
        notes.append("decoded from GB18030")

    # ---- read: fast typed path, else all-strings path that locates the problem
    date_fast = False
    if first is not None:
        try:
            row = next(csv.reader([first]))
            idx = header.index(cols["date"])
            date_fast = idx < len(row) and bool(_ISO_RE.fullmatch(row[idx].strip()))
        except (ValueError, csv.Error):
            date_fast = False
    try:
        table = _read_table(path, buf, cols, date_fast, as_strings=False)
    except pa.ArrowInvalid:
        try:
            raw_table = _read_table(path, buf, cols, date_fast, as_strings=True)
        except pa.ArrowInvalid as e2:
            raise _csv_structure_error(path, buf, str(e2)) from None
        table = _strings_to_columns(path, raw_table, cols)
    if table.num_rows == 0:
        raise InputError(path, "header only: no data rows", line=2)

    c = _extract(path, table, cols)
    n = c.n
    rowidx = np.arange(n, dtype=np.int64)

    # ---- missing values
    present = [k for k in VALUE_COLUMNS if k in c.values]
    nulls = {"date": c.date_null}
    if "ticker" in cols and ticker is None:
        nulls["ticker"] = c.codes < 0
    for k in present:
        nulls[k] = np.isnan(c.values[k])
    any_null = np.zeros(n, dtype=bool)
    for m in nulls.values():
        any_null |= m
    n_missing = int(any_null.sum())
    fill_rows = np.zeros(n, dtype=bool)
    if n_missing:
        if missing == "error":
            i = int(np.flatnonzero(any_null)[0])
            col = next(k for k, m in nulls.items() if m[i])
            raise InputError(
                path,
                f"missing {col} value (pass missing='drop' or 'ffill' to accept)",
                line=_line(path, i),
                column=cols[col],
            )
        if missing == "drop":
            keep = ~any_null
        else:
            keep = ~(nulls["date"] | nulls.get("ticker", np.zeros(n, dtype=bool)))
            fill_rows = any_null & keep
        if not keep.all():
            c = _take(c, keep)
            rowidx = rowidx[keep]
            fill_rows = fill_rows[keep]
            if missing == "drop":
                notes.append(f"dropped {n_missing} rows with missing values")
            else:
                notes.append(f"dropped {int((~keep).sum())} rows with a missing date or ticker")
        if len(rowidx) == 0:
            raise InputError(path, "no rows left after dropping rows with missing values")

    # ---- dates
    if not pa.types.is_date32(table.column(cols["date"]).type):
        strings = table.column(cols["date"]).combine_chunks()
        if len(rowidx) != n:
            strings = strings.take(pa.array(rowidx))
        c.date = _parse_dates(path, strings, rowidx, cols["date"])
    limit = (dt.date.today() + dt.timedelta(days=FUTURE_TOLERANCE_DAYS) - dt.date(1970, 1, 1)).days
    future = c.date > limit
    if future.any():
        i = int(np.flatnonzero(future)[0])
        day = _EPOCH + np.timedelta64(int(c.date[i]), "D")
        raise InputError(
            path,
            f"date {day} is in the future (after today + {FUTURE_TOLERANCE_DAYS} days)",
            line=_line(path, int(rowidx[i])),
            column=cols["date"],
        )

    # ---- tickers
    if ticker is not None:
        if "ticker" in cols:
            used = np.unique(c.codes[c.codes >= 0])
            distinct = sorted({c.names[i].strip() for i in used})
            if len(distinct) > 1:
                raise InputError(
                    path,
                    f"ticker={ticker!r} given but the file holds {len(distinct)} tickers "
                    f"({', '.join(distinct[:5])}{', ...' if len(distinct) > 5 else ''})",
                    column=cols["ticker"],
                )
            if distinct and distinct[0] != ticker:
                notes.append(f"ticker {ticker!r} given; ignored the file's ticker {distinct[0]!r}")
        tickers_sorted = [ticker]
        rank = np.zeros(len(c.names), dtype=np.int32)
    elif "ticker" in cols:
        clean: list[str | None] = []
        for code, raw in enumerate(c.names):
            used = np.flatnonzero(c.codes == code)
            if not len(used):
                clean.append(None)
                continue
            try:
                clean.append(validate_ticker(raw.strip()))
            except InvalidTickerError as e:
                raise InputError(
                    path, str(e), line=_line(path, int(rowidx[used[0]])), column=cols["ticker"]
                ) from None
        tickers_sorted = sorted({t for t in clean if t is not None})
        pos = {t: i for i, t in enumerate(tickers_sorted)}
        rank = np.array([pos[t] if t is not None else -1 for t in clean], dtype=np.int32)
    else:
        try:
            tickers_sorted = [validate_ticker(path.stem)]
        except InvalidTickerError as e:
            raise InputError(path, f"{e} (from the file name; pass ticker=...)") from None
        rank = np.zeros(1, dtype=np.int32)
    codes = rank[c.codes] if len(c.codes) else c.codes

    # ---- layout-specific units
    if layout == "tushare":
        if "volume" in c.values:
            c.values["volume"] = np.round(c.values["volume"] * 100.0, 4)
        if "amount" in c.values:
            c.values["amount"] = np.round(c.values["amount"] * 1000.0, 4)
        notes.append("converted vol (lots of 100) to shares and amount (thousand yuan) to yuan")

    # ---- sort by (ticker, date), dedupe exact duplicates, reject conflicting ones
    key = (codes.astype(np.int64) << 32) | (c.date.astype(np.int64) + (1 << 31))
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
        codes = codes[order]
        c.date = c.date[order]
        rowidx = rowidx[order]
        fill_rows = fill_rows[order]
        for k in c.values:
            c.values[k] = c.values[k][order]
    dup = np.flatnonzero(key[1:] == key[:-1]) + 1
    if len(dup):
        differs = np.zeros(len(dup), dtype=bool)
        first_col: list[str | None] = [None] * len(dup)
        for k in present:
            a, b = c.values[k][dup - 1], c.values[k][dup]
            ne = ~((a == b) | (np.isnan(a) & np.isnan(b)))
            for j in np.flatnonzero(ne & ~differs):
                first_col[j] = k
            differs |= ne
        if differs.any():
            cand = np.flatnonzero(differs)
            later = np.maximum(rowidx[dup[cand]], rowidx[dup[cand] - 1])
            j = cand[np.argmin(later)]
            a_i, b_i = int(dup[j] - 1), int(dup[j])
            k = first_col[j]
            la, lb = source_lines(path, [int(rowidx[a_i]), int(rowidx[b_i])])
            day = _EPOCH + np.timedelta64(int(c.date[b_i]), "D")
            if lb is not None and la is not None and la > lb:
                la, lb, a_i, b_i = lb, la, b_i, a_i
            raise InputError(
                path,
                f"duplicate date {day} with different values: {_fmt(c.values[k][b_i])} here "
                f"but {_fmt(c.values[k][a_i])} on line {la}",
                line=lb,
                column=cols[k],
            )
        keep = np.ones(len(key), dtype=bool)
        keep[dup] = False
        key, codes, c.date, rowidx, fill_rows = (
            key[keep],
            codes[keep],
            c.date[keep],
            rowidx[keep],
            fill_rows[keep],
        )
        for k in c.values:
            c.values[k] = c.values[k][keep]
        notes.append(f"removed {len(dup)} exact duplicate rows")

    # ---- forward fill within each ticker
    if missing == "ffill" and fill_rows.any():
        m = len(key)
        group_start = np.zeros(m, dtype=np.int64)
        starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
        group_start[starts] = starts
        group_start = np.maximum.accumulate(group_start)
        unfillable = np.zeros(m, dtype=bool)
        for k in present:
            v = c.values[k]
            isnan = np.isnan(v)
            if not isnan.any():
                continue
            src = np.where(~isnan, np.arange(m), -1)
            src = np.maximum.accumulate(src)
            ok = src >= group_start
            unfillable |= isnan & ~ok
            c.values[k] = np.where(ok, v[np.maximum(src, 0)], v)
        filled = int((fill_rows & ~unfillable).sum())
        notes.append(f"forward-filled missing values in {filled} rows")
        if unfillable.any():
            keep = ~unfillable
            codes, c.date, rowidx = codes[keep], c.date[keep], rowidx[keep]
            fill_rows = fill_rows[keep]
            for k in c.values:
                c.values[k] = c.values[k][keep]
            notes.append(f"dropped {int(unfillable.sum())} rows with no earlier value to fill from")
        if len(rowidx) == 0:
            raise InputError(path, "no rows left after dropping rows with missing values")

    # ---- value checks (reported at the earliest offending line)
    def fail(mask: np.ndarray, col: str, problem: Callable[[int], str]) -> None:
        if mask.any():
            cand = np.flatnonzero(mask)
            i = int(cand[np.argmin(rowidx[cand])])
            text = problem(i)
            if fill_rows[i]:
                text += " (after forward-filling missing values)"
            raise InputError(path, text, line=_line(path, int(rowidx[i])), column=cols[col])

    for k in present:
        v = c.values[k]
        fail(np.isinf(v), k, lambda i, v=v: f"non-finite value {_fmt(v[i])}")
    for k in PRICE_COLUMNS:
        v = c.values[k]
        fail(v <= 0, k, lambda i, v=v: f"price must be positive, got {_fmt(v[i])}")
    o, h, lo, cl = (c.values[k] for k in PRICE_COLUMNS)
    fail(h < lo, "high", lambda i: f"high {_fmt(h[i])} is below low {_fmt(lo[i])}")
    for k, v in (("open", o), ("close", cl)):
        fail(
            (v < lo) | (v > h),
            k,
            lambda i, k=k, v=v: (
                f"{k} {_fmt(v[i])} is outside [low {_fmt(lo[i])}, high {_fmt(h[i])}]"
            ),
        )
    for k in ("volume", "amount"):
        if k in c.values:
            v = c.values[k]
            fail(v < 0, k, lambda i, k=k, v=v: f"{k} must not be negative, got {_fmt(v[i])}")

    # ---- split-sized jumps: unadjusted prices would teach the model a crash that never was
    if limits is not None and len(cl) > 1:
        max_drop, max_rise = limits
        ratio = cl[1:] / cl[:-1]
        same = codes[1:] == codes[:-1]
        jump = np.concatenate(
            ([False], same & ((ratio < 1.0 - max_drop) | (ratio > 1.0 + max_rise)))
        )

        def jump_problem(i: int) -> str:
            prev_line = _line(path, int(rowidx[i - 1]))
            change = cl[i] / cl[i - 1] - 1.0
            return (
                f"close {_fmt(cl[i])} is {abs(change):.0%} {'below' if change < 0 else 'above'} "
                f"the previous close {_fmt(cl[i - 1])} on line {prev_line} (limit: "
                f"-{max_drop:.0%}/+{max_rise:.0%} a day): a stock split? use split-adjusted "
                "prices, or set data.max_daily_change: null to accept such moves"
            )

        fail(jump, "close", jump_problem)

    # ---- build the normalized table
    m = len(rowidx)
    tick = pa.DictionaryArray.from_arrays(
        pa.array(codes if len(tickers_sorted) > 1 else np.zeros(m, dtype=np.int32)),
        pa.array(tickers_sorted, pa.string()),
    ).cast(pa.string())
    arrays = [tick, pa.array(c.date, pa.int32()).cast(pa.date32())]
    for k in VALUE_COLUMNS:
        if k in c.values:
            v = c.values[k]
            mask = np.isnan(v)
            arrays.append(pa.array(v, pa.float64(), mask=mask if mask.any() else None))
        else:
            arrays.append(pa.nulls(m, pa.float64()))
    out = pa.Table.from_arrays(arrays, schema=PRICE_SCHEMA)
    return ParsedFile(
        path=path,
        ticker=tickers_sorted[0] if len(tickers_sorted) == 1 else "*",
        layout=layout,
        table=out,
        notes=tuple(notes),
        tickers=tuple(tickers_sorted),
        source_rows=rowidx,
        source_columns=dict(cols),
    )


def _take(c: _Columns, keep: np.ndarray) -> _Columns:
    return _Columns(
        n=int(keep.sum()),
        date=c.date[keep],
        date_null=c.date_null[keep],
        codes=c.codes[keep],
        names=c.names,
        values={k: v[keep] for k, v in c.values.items()},
    )


def read_configured(data: DataConfig, path: str | Path, ticker: str | None = None) -> ParsedFile:
    """`read_price_file` with the options of the `data` section; logs what was done."""
    parsed = read_price_file(
        path,
        ticker=ticker,
        column_map=data.column_map,
        missing=data.missing,
        # split-sized jumps are errors unless data.max_daily_change is null
        max_daily_change=data.max_daily_change.model_dump() if data.max_daily_change else None,
    )
    for note in parsed.notes:
        logging.getLogger("pipelines").info("%s: %s", path, note)
    return parsed
