"""Ticker names: the one validator (store folders are named after tickers), and where a
file's ticker comes from."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.errors import InputError, PipelineError
from pipelines.ingest.schema import line_of

if TYPE_CHECKING:
    from pipelines.ingest.rows import Rows

MAX_TICKER_LENGTH = 64
TICKER_COLUMNS = ("ts_code", "ticker", "symbol")
_TICKER_RE = re.compile(r"[\w.\-]+")


class InvalidTickerError(PipelineError, ValueError):
    """A ticker name that is empty, too long or could escape the store folder."""


def validate_ticker(ticker: str, source: str | None = None) -> str:
    """Return ``ticker`` (NFC-normalized) if it is a safe store name, else raise InvalidTickerError.

    Allowed: letters (any script), digits, ``.``, ``_``, ``-``; at most 64 characters; not
    starting with ``.``; no ``..``. Hence no path separators and nothing that escapes the store.
    ``source`` (e.g. ``"--ticker"``) starts the error message, to say where the name came from.
    """
    try:
        return _validated(ticker)
    except InvalidTickerError as exc:
        if source is None:
            raise
        raise InvalidTickerError(f"{source}: {exc}") from None


def _validated(ticker: str) -> str:
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


def case_twin(ticker: str, names: Iterable[str]) -> str | None:
    """The name in ``names`` that differs from ``ticker`` only in case, or None.

    Tickers are case-sensitive (a store folder per name), but ``msft`` beside ``MSFT`` is
    almost surely one ticker typed two ways, and one folder on a case-insensitive disk.
    """
    key = ticker.casefold()
    return next((n for n in names if n != ticker and n.casefold() == key), None)


def stored_in_other_case(ticker: str, stored: Iterable[str]) -> str | None:
    """What to tell a user who named ``ticker`` when only its case twin is stored (they
    most likely typed msft for MSFT), or None."""
    other = case_twin(ticker, stored)
    return f"tickers are case-sensitive, and {other!r} is stored" if other else None


def assign_tickers(
    path: Path,
    rows: Rows,
    names: list[str],
    column: str | None,
    given: str | None,
    notes: list[str],
) -> list[str]:
    """Give every row its ticker; returns the sorted tickers, ``rows.codes`` indexing them.

    The ticker is ``given``, else the file's ticker column (``column``), else the file name.
    """
    if given is not None:
        if column is not None:
            used = np.unique(rows.codes[rows.codes >= 0])
            distinct = sorted({names[i].strip() for i in used})
            if len(distinct) > 1:
                raise InputError(
                    path,
                    f"ticker={given!r} given but the file holds {len(distinct)} tickers "
                    f"({', '.join(distinct[:5])}{', ...' if len(distinct) > 5 else ''})",
                    column=column,
                )
            if distinct and distinct[0] != given:
                notes.append(f"ticker {given!r} given; ignored the file's ticker {distinct[0]!r}")
        tickers = [given]
        rank = np.zeros(len(names), dtype=np.int32)
    elif column is not None:
        clean: list[str | None] = []
        for code, raw in enumerate(names):
            used = np.flatnonzero(rows.codes == code)
            if not len(used):
                clean.append(None)
                continue
            try:
                clean.append(validate_ticker(raw.strip()))
            except InvalidTickerError as e:
                line = line_of(path, int(rows.rowidx[used[0]]))
                raise InputError(path, str(e), line=line, column=column) from None
        tickers = sorted({t for t in clean if t is not None})
        pos = {t: i for i, t in enumerate(tickers)}
        rank = np.array([pos[t] if t is not None else -1 for t in clean], dtype=np.int32)
    else:
        try:
            tickers = [validate_ticker(path.stem)]
        except InvalidTickerError as e:
            raise InputError(path, f"{e} (from the file name; pass ticker=...)") from None
        rank = np.zeros(1, dtype=np.int32)
    if len(rows.codes):
        rows.codes = rank[rows.codes]
    return tickers
