"""Layout detection: which known export a header is (tutorial, tushare, yahoo) or a column_map."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from pipelines.errors import InputError
from pipelines.ingest.tickers import TICKER_COLUMNS

MAP_FIELDS = ("ticker", "date", "open", "high", "low", "close", "volume", "amount")


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


def detect(
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
        found = ", ".join(h for h in header if h)
        other_separator = next((sep for sep in (";", "\t", "|") if sep in found), None)
        hint = (
            f"the header holds {other_separator!r}: save the file comma-separated"
            if other_separator
            else "map other layouts with data.column_map in mlflow.yaml"
        )
        raise InputError(
            path,
            f"missing date column: expected 日期, trade_date or Date (found: {found}); {hint}",
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


def read_header(path: Path, buf: pa.Buffer) -> tuple[list[str], str | None]:
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
