"""Dates: the formats a file may use (one per file), no day in the future, and no day the
exchange (``data.calendar``) was closed."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import InputError
from pipelines.ingest.schema import line_of

FUTURE_TOLERANCE_DAYS = 3
EPOCH = np.datetime64("1970-01-01", "D")

_MONTH_FIRST = "M/D/YYYY"
_DATE_FORMATS: tuple[tuple[str, str], ...] = (
    ("YYYY-MM-DD", r"^(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:[ T]00:00(?::00)?)?$"),
    ("YYYY/MM/DD", r"^(?P<y>\d{4})/(?P<m>\d{1,2})/(?P<d>\d{1,2})(?:[ T]00:00(?::00)?)?$"),
    ("YYYYMMDD", r"^(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})$"),
    (_MONTH_FIRST, r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})$"),
)
_SUPPORTED = ", ".join(f for f, _ in _DATE_FORMATS)
ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_dates(path: Path, strings: pa.Array, rowidx: np.ndarray, column: str) -> np.ndarray:
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
            f"unparseable date {strings[0].as_py()!r} (supported: {_SUPPORTED})",
            line=line_of(path, int(rowidx[0])),
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
                f"{line_of(path, int(rowidx[0]))} uses {name}"
            )
        else:
            problem = f"unparseable date {value!r} (this file uses {name})"
        raise InputError(path, problem, line=line_of(path, int(rowidx[bad])), column=column)
    y = pc.cast(pc.struct_field(m, "y"), pa.int64()).to_numpy()
    mo = pc.cast(pc.struct_field(m, "m"), pa.int64()).to_numpy()
    d = pc.cast(pc.struct_field(m, "d"), pa.int64()).to_numpy()
    bad_md = (mo < 1) | (mo > 12) | (d < 1) | (d > 31)
    months = ((y - 1970) * 12 + np.clip(mo, 1, 12) - 1).astype("datetime64[M]")
    days = months.astype("datetime64[D]") + (np.clip(d, 1, 31) - 1).astype("timedelta64[D]")
    bad = bad_md | (days.astype("datetime64[M]") != months)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problem = f"invalid date {strings[i].as_py()!r}"
        if name == _MONTH_FIRST and mo[i] > 12:
            # the rows before it were read month first without complaint: say so
            earlier = (
                f", so line {line_of(path, int(rowidx[0]))}'s {strings[0].as_py()!r} "
                f"was read as {days[0]}"
                if i
                else ""
            )
            problem += (
                f": slash dates are read as {_MONTH_FIRST} (month first){earlier}; day-first "
                f"dates are not supported: write them as YYYY-MM-DD (supported: {_SUPPORTED})"
            )
        raise InputError(
            path,
            problem,
            line=line_of(path, int(rowidx[i])),
            column=column,
        )
    return (days - EPOCH).astype(np.int32)


def check_not_future(path: Path, days: np.ndarray, rowidx: np.ndarray, column: str) -> None:
    """No date after today plus a few days (time zones, a file written ahead of the close)."""
    limit = (dt.date.today() + dt.timedelta(days=FUTURE_TOLERANCE_DAYS) - dt.date(1970, 1, 1)).days
    future = days > limit
    if future.any():
        i = int(np.flatnonzero(future)[0])
        day = EPOCH + np.timedelta64(int(days[i]), "D")
        raise InputError(
            path,
            f"date {day} is in the future (after today + {FUTURE_TOLERANCE_DAYS} days)",
            line=line_of(path, int(rowidx[i])),
            column=column,
        )


# The layouts of Chinese exports (ingest.layout): their prices are Shanghai's or Shenzhen's.
CHINESE_LAYOUTS = ("tutorial", "tushare")


def check_trading_days(
    path: Path,
    days: np.ndarray,
    rowidx: np.ndarray,
    column: str,
    exchange: str | None,
    layout: str | None = None,
) -> None:
    """No row on a day ``exchange`` was closed (None: a Saturday or Sunday): live scoring
    matches forecasts to stored days by position, so such a row would shift every later day.
    A Chinese export's ``layout`` names the calendar its prices likely need."""
    from pipelines.calendar import closed_days

    closed = closed_days(exchange, days)
    if closed.any():
        cand = np.flatnonzero(closed)
        i = int(cand[np.argmin(rowidx[cand])])  # the earliest line of the file
        day = (EPOCH + np.timedelta64(int(days[i]), "D")).astype(dt.date)
        if exchange is None:
            why = (
                f"{day} is a {day:%A}: with data.calendar null only Monday to Friday are "
                "trading days; remove the row, or set data.calendar to the exchange's code"
            )
        else:
            why = (
                f"{day} ({day:%A}) is not a trading day of {exchange} (data.calendar): remove "
                "the row, or set data.calendar to the exchange the prices come from"
            )
            if layout in CHINESE_LAYOUTS and exchange != "XSHG":
                why += " (XSHG for Shanghai and Shenzhen shares, as this export's are)"
        raise InputError(path, why, line=line_of(path, int(rowidx[i])), column=column)
