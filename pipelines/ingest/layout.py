"""Layout detection: which known export a header is (tutorial, tushare, yahoo) or a column_map."""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import yaml

from pipelines.errors import InputError
from pipelines.ingest.schema import PRICE_COLUMNS
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
# All four prices are required: the store keeps open, high, low and close for every day
# (features.columns and features.target may name any of them, later and per run), the value
# checks compare them (low <= open, close <= high) and the split check reads the closes.
_REQUIRED = ("date", *PRICE_COLUMNS)
_REQUIRED_TEXT = "date, open, high, low and close are required"
_ADJ_CLOSE = "adjclose"  # Yahoo's "Adj Close", normalized
_PLACEHOLDER = "COLUMN"


def _yaml_scalar(text: str) -> str:
    """``text`` as a YAML flow value, quoted when YAML would read it as something else."""
    try:
        plain_ok = yaml.safe_load(f"{{k: {text}}}") == {"k": text}
    except yaml.YAMLError:
        plain_ok = False
    return text if plain_ok and "'" not in text else json.dumps(text, ensure_ascii=False)


def map_example(mapping: Mapping[str, str], price: str | None) -> str:
    """A ``--set data.column_map=...`` line for ``mapping`` (field -> header), the missing
    required prices mapped to the header ``price`` (or a placeholder)."""
    full = dict(mapping)
    full.setdefault("date", "DATE")
    for key in PRICE_COLUMNS:
        full.setdefault(key, price or _PLACEHOLDER)
    order = [k for k in MAP_FIELDS if k in full]
    body = ", ".join(f"{k}: {_yaml_scalar(full[k])}" for k in order)
    return f"--set 'data.column_map={{{body}}}'"


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
            mapped = [column_map[k] for k in PRICE_COLUMNS if k in column_map]
            raise InputError(
                path,
                f"column_map: missing required field{'s' if len(missing) > 1 else ''} "
                + ", ".join(repr(k) for k in missing)
                + f" ({_REQUIRED_TEXT}: the store keeps all four prices of every day, "
                "as features.columns and features.target may name any of them); a file with one price "
                "column maps it to each, e.g. "
                + map_example(column_map, mapped[0] if mapped else None),
            )
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
            adj = headers.get(_ADJ_CLOSE)
            found = {k: h for k in spec if (h := _find(headers, spec[k])) is not None}
            raise InputError(
                path,
                f"missing {key} price column for the {layout} layout "
                f"(expected {names[0]!r}; found: {', '.join(h for h in header if h)}); map "
                f"the file's columns with data.column_map in mlflow.yaml ({_REQUIRED_TEXT}), "
                f"e.g. {map_example(found, adj)}",
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
