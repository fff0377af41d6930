"""The normalized table every layout yields, the parsed-file record, and line numbers."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

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


@dataclass(frozen=True)
class ParsedFile:
    """A validated, normalized price file.

    ``table`` follows :data:`PRICE_SCHEMA`, sorted by (ticker, date) with unique (ticker, date).
    ``ticker`` is the file's ticker, or ``"*"`` when the file holds several (see ``tickers``).
    ``source_rows`` maps each table row to its data-row index in the file (0 = line 2 when there
    are no blank lines) and ``source_columns`` maps normalized names to the file's headers; both
    are used to name the line and column in merge conflicts, and may be left empty.
    ``max_daily_change`` is the ``(max_drop, max_rise)`` the file's closes were checked with
    (None: unchecked); a merge checks the new rows against their stored neighbours with it.
    """

    path: Path
    ticker: str
    layout: str
    table: pa.Table
    notes: tuple[str, ...] = ()
    tickers: tuple[str, ...] = ()
    source_rows: np.ndarray | None = field(default=None, compare=False, repr=False)
    source_columns: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    max_daily_change: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        return self.table.num_rows


def digest_file(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def line_of(path: Path, row: int) -> int | None:
    return source_lines(path, [row])[0]


def fmt(value: float) -> str:
    return f"{float(value):.15g}"
