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
* ``mapped``: anything else, through ``column_map={"date": "Day", "open": "O", ...}``:
  ``date``, ``open``, ``high``, ``low`` and ``close`` required (the store keeps all four prices).

Every layout yields the same table, :data:`PRICE_SCHEMA`, sorted by (ticker, date).

Multi-ticker files: a file whose ticker column (``ts_code``, ``ticker`` or ``symbol``) holds
several values gives ONE :class:`ParsedFile` whose table holds all of them (``ParsedFile.ticker``
is then ``"*"`` and ``ParsedFile.tickers`` lists them); :meth:`pipelines.store.PriceStore.merge_all`
splits it by ticker. Single-ticker files work with either ``merge`` or ``merge_all``.

The CSV is read with ``pyarrow.csv`` and validated with vectorized NumPy; line numbers are only
computed when an error is found. Line numbers count as the file does: header is line 1, the first
data row line 2 (blank lines counted; quoted fields spanning lines are not supported).

The steps, one module each: :mod:`.decoding` (bytes to UTF-8), :mod:`.layout` (which export the
header is), :mod:`.dates`, :mod:`.tickers` (the one ticker validator), :mod:`.missing`,
:mod:`.checks` (value checks and the jump limits), and :mod:`.reader`, which chains them.
"""

from __future__ import annotations

from pipelines.ingest.checks import DEFAULT_MAX_DAILY_CHANGE, jump_limits
from pipelines.ingest.dates import FUTURE_TOLERANCE_DAYS
from pipelines.ingest.reader import read_configured, read_price_file
from pipelines.ingest.schema import (
    PRICE_COLUMNS,
    PRICE_SCHEMA,
    VALUE_COLUMNS,
    ParsedFile,
    digest_file,
    source_lines,
)
from pipelines.ingest.tickers import (
    MAX_TICKER_LENGTH,
    InvalidTickerError,
    case_twin,
    stored_in_other_case,
    validate_ticker,
)

__all__ = [
    "DEFAULT_MAX_DAILY_CHANGE",
    "FUTURE_TOLERANCE_DAYS",
    "MAX_TICKER_LENGTH",
    "PRICE_COLUMNS",
    "PRICE_SCHEMA",
    "VALUE_COLUMNS",
    "InvalidTickerError",
    "ParsedFile",
    "case_twin",
    "stored_in_other_case",
    "digest_file",
    "jump_limits",
    "read_configured",
    "read_price_file",
    "source_lines",
    "validate_ticker",
]
