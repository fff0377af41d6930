"""Missing values: an error naming the first one, or rows dropped, or carried forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import InputError
from pipelines.ingest.rows import Rows
from pipelines.ingest.schema import line_of


def handle_missing(
    path: Path,
    rows: Rows,
    cols: dict[str, str],
    present: list[str],
    missing: str,
    ticker_column: bool,
    notes: list[str],
) -> None:
    """Apply ``missing`` ("error", "drop" or "ffill") to rows with a missing value.

    With "ffill" the rows stay, marked in ``rows.filled`` for :func:`forward_fill` (after
    sorting); rows without a date or ticker are dropped whatever the choice.
    """
    n = len(rows)
    nulls = {"date": rows.date_null}
    if ticker_column:
        nulls["ticker"] = rows.codes < 0
    for k in present:
        nulls[k] = np.isnan(rows.values[k])
    any_null = np.zeros(n, dtype=bool)
    for m in nulls.values():
        any_null |= m
    n_missing = int(any_null.sum())
    if not n_missing:
        return
    if missing == "error":
        i = int(np.flatnonzero(any_null)[0])
        col = next(k for k, m in nulls.items() if m[i])
        raise InputError(
            path,
            f"missing {col} value (set data.missing to drop or ffill to accept: mlflow.yaml, or "
            "--set data.missing=drop)",
            line=line_of(path, i),
            column=cols[col],
        )
    if missing == "drop":
        keep = ~any_null
    else:
        keep = ~(nulls["date"] | nulls.get("ticker", np.zeros(n, dtype=bool)))
        rows.filled = any_null & keep
    if not keep.all():
        rows.take(keep)
        if missing == "drop":
            notes.append(f"dropped {n_missing} rows with missing values")
        else:
            notes.append(f"dropped {int((~keep).sum())} rows with a missing date or ticker")
    if len(rows) == 0:
        raise InputError(path, "no rows left after dropping rows with missing values")


def forward_fill(path: Path, rows: Rows, present: list[str], notes: list[str]) -> None:
    """Carry each ticker's previous value into its missing ones (rows sorted by ticker, date)."""
    m = len(rows)
    codes = rows.codes
    group_start = np.zeros(m, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    group_start[starts] = starts
    group_start = np.maximum.accumulate(group_start)
    unfillable = np.zeros(m, dtype=bool)
    for k in present:
        v = rows.values[k]
        isnan = np.isnan(v)
        if not isnan.any():
            continue
        src = np.where(~isnan, np.arange(m), -1)
        src = np.maximum.accumulate(src)
        ok = src >= group_start
        unfillable |= isnan & ~ok
        rows.values[k] = np.where(ok, v[np.maximum(src, 0)], v)
    filled = int((rows.filled & ~unfillable).sum())
    notes.append(f"forward-filled missing values in {filled} rows")
    if unfillable.any():
        rows.take(~unfillable)
        notes.append(f"dropped {int(unfillable.sum())} rows with no earlier value to fill from")
    if len(rows) == 0:
        raise InputError(path, "no rows left after dropping rows with missing values")
