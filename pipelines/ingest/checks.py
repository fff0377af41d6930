"""Value checks: finite, positive prices inside [low, high], no negative volume, and no
split-sized jump between two closes (the limits are ``data.max_daily_change``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from pipelines.config import JumpLimits
from pipelines.errors import InputError
from pipelines.ingest.rows import Rows
from pipelines.ingest.schema import PRICE_COLUMNS, fmt, line_of

DEFAULT_MAX_DAILY_CHANGE: dict[str, float] = JumpLimits().model_dump()
"""Largest close-to-close move accepted by default (the defaults of ``data.max_daily_change``):
a 2:1 split halves the price (-50%), a 1:2 reverse split doubles it (+100%); real crashes and
rallies rarely exceed these in one day."""


def jump_limits(
    value: JumpLimits | Mapping[str, float] | tuple[float, float] | list[float] | None,
) -> tuple[float, float] | None:
    """Normalize ``max_daily_change`` to ``(max_drop, max_rise)`` fractions, or None (off).

    Accepts :class:`~pipelines.config.JumpLimits`, ``{"drop": 0.45, "rise": 0.8}`` (missing keys
    take the defaults), a ``(drop, rise)`` pair or None. ``drop`` must be in (0, 1) and ``rise``
    positive.
    """
    if value is None:
        return None
    if not isinstance(value, JumpLimits):
        if isinstance(value, Mapping):
            fields = value
        else:
            drop, rise = value
            fields = {"drop": drop, "rise": rise}
        try:
            value = JumpLimits.model_validate(fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"max_daily_change: {key}: {err['msg']}") from None
    return value.drop, value.rise


def _fail(
    path: Path, rows: Rows, cols: dict[str, str], mask: np.ndarray, col: str, problem: Callable
) -> None:
    """Raise for the earliest line (as the file counts) where ``mask`` holds."""
    if mask.any():
        cand = np.flatnonzero(mask)
        i = int(cand[np.argmin(rows.rowidx[cand])])
        text = problem(i)
        if rows.filled[i]:
            text += " (after forward-filling missing values)"
        raise InputError(path, text, line=line_of(path, int(rows.rowidx[i])), column=cols[col])


def check_values(path: Path, rows: Rows, cols: dict[str, str], present: list[str]) -> None:
    values = rows.values
    for k in present:
        v = values[k]
        _fail(path, rows, cols, np.isinf(v), k, lambda i, v=v: f"non-finite value {fmt(v[i])}")
    for k in PRICE_COLUMNS:
        v = values[k]
        _fail(
            path, rows, cols, v <= 0, k, lambda i, v=v: f"price must be positive, got {fmt(v[i])}"
        )
    o, h, lo, cl = (values[k] for k in PRICE_COLUMNS)
    _fail(path, rows, cols, h < lo, "high", lambda i: f"high {fmt(h[i])} is below low {fmt(lo[i])}")
    for k, v in (("open", o), ("close", cl)):
        _fail(
            path,
            rows,
            cols,
            (v < lo) | (v > h),
            k,
            lambda i, k=k, v=v: f"{k} {fmt(v[i])} is outside [low {fmt(lo[i])}, high {fmt(h[i])}]",
        )
    for k in ("volume", "amount"):
        if k in values:
            v = values[k]
            _fail(
                path,
                rows,
                cols,
                v < 0,
                k,
                lambda i, k=k, v=v: f"{k} must not be negative, got {fmt(v[i])}",
            )


def exceeds(prev: np.ndarray, cur: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Where the move from close ``prev`` to the next day's close ``cur`` is split-sized."""
    max_drop, max_rise = limits
    ratio = cur / prev
    return (ratio < 1.0 - max_drop) | (ratio > 1.0 + max_rise)


def jump_problem(
    close: float, other: float, other_text: str, limits: tuple[float, float], *, before: bool
) -> str:
    """The message for a split-sized move between ``close`` and the neighbouring close ``other``
    (``other_text`` names it, e.g. "the previous close 84.5 on line 2"; ``before``: ``other``
    is the earlier day of the two)."""
    max_drop, max_rise = limits
    if before:
        change = close / other - 1.0
        what = f"close {fmt(close)} is {abs(change):.0%} {'below' if change < 0 else 'above'} "
        what += other_text
    else:
        change = other / close - 1.0
        what = f"close {fmt(close)} is followed by {other_text}, "
        what += f"{abs(change):.0%} {'lower' if change < 0 else 'higher'}"
    return (
        f"{what} (limit: -{max_drop:.0%}/+{max_rise:.0%} a day): a stock split? use "
        "split-adjusted prices, or set data.max_daily_change: null to accept such moves"
    )


def check_jumps(path: Path, rows: Rows, cols: dict[str, str], limits: tuple[float, float]) -> None:
    """Split-sized jumps: unadjusted prices would teach the model a crash that never was.

    Between the file's own rows; the store compares new rows with their stored neighbours
    (:func:`pipelines.store.merge.combine`) with the same :func:`exceeds` and message."""
    cl = rows.values["close"]
    if len(cl) < 2:
        return
    same = rows.codes[1:] == rows.codes[:-1]
    jump = np.concatenate(([False], same & exceeds(cl[:-1], cl[1:], limits)))

    def problem(i: int) -> str:
        prev_line = line_of(path, int(rows.rowidx[i - 1]))
        other = f"the previous close {fmt(cl[i - 1])} on line {prev_line}"
        return jump_problem(cl[i], cl[i - 1], other, limits, before=True)

    _fail(path, rows, cols, jump, "close", problem)
