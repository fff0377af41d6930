"""Live scoring: logged forecasts matched to the prices that arrived, and their live metrics.

A forecast row made on ``made_on`` for ``step`` k targets the k-th stored trading day after
``made_on``: matching by position in the price series needs no holiday calendar. The naive
forecast of a target is the last price known at ``made_on``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LOWER = re.compile(r"^lower_(\d+(?:\.\d+)?)$")


def levels_of(frame: pd.DataFrame) -> list[str]:
    """Interval level names present as ``lower_<L>``/``upper_<L>`` pairs, e.g. ['80', '95']."""
    names = []
    for col in frame.columns:
        m = LOWER.match(str(col))
        if m and f"upper_{m.group(1)}" in frame.columns:
            names.append(m.group(1))
    return sorted(names, key=float)


def match(log: pd.DataFrame, prices: pd.DataFrame, target: str) -> pd.DataFrame:
    """Each log row with ``target_date``, ``actual`` and ``last`` (naive); NaN when pending.

    ``log`` needs ``made_on`` and ``step``; ``prices`` needs ``date`` and the ``target``
    column, sorted by date. A ``made_on`` that is not a stored date is anchored on the last
    stored date before it. ``scored`` is True where the target price has arrived.
    """
    out = log.copy()
    dates = pd.to_datetime(prices["date"]).to_numpy()
    values = prices[target].to_numpy(dtype=np.float64)
    made = pd.to_datetime(out["made_on"]).to_numpy()
    anchor = np.searchsorted(dates, made, side="right") - 1
    steps = out["step"].to_numpy(dtype=np.int64)
    idx = anchor + steps
    known = anchor >= 0
    arrived = known & (idx < len(dates))
    safe = np.where(arrived, idx, 0)
    safe_anchor = np.where(known, anchor, 0)
    out["target_date"] = pd.to_datetime(np.where(arrived, dates[safe], np.datetime64("NaT")))
    out["target_index"] = np.where(arrived, idx, -1)
    out["actual"] = np.where(arrived, values[safe], np.nan)
    out["last"] = np.where(known, values[safe_anchor], np.nan)
    out["scored"] = arrived
    return out


@dataclass(frozen=True)
class LiveMetrics:
    """Live figures over a set of scored forecasts (NaN when there are none)."""

    n: int  # scored forecasts
    days: int  # distinct target days among them
    rmse: float
    mae: float
    naive_rmse: float
    skill_vs_naive: float  # 1 - rmse / naive_rmse
    directional_accuracy: float
    coverage: dict[str, float] = field(default_factory=dict)  # level name -> share inside

    def as_dict(self, prefix: str = "live_") -> dict[str, float]:
        out = {
            f"{prefix}rmse": self.rmse,
            f"{prefix}mae": self.mae,
            f"{prefix}naive_rmse": self.naive_rmse,
            f"{prefix}skill_vs_naive": self.skill_vs_naive,
            f"{prefix}directional_accuracy": self.directional_accuracy,
            f"{prefix}scored_days": float(self.days),
        }
        out.update({f"{prefix}coverage_{k}": v for k, v in self.coverage.items()})
        return out


def metrics(scored: pd.DataFrame, levels: Sequence[str] | None = None) -> LiveMetrics:
    """RMSE/MAE in prices, the naive RMSE on the same targets, skill, coverage, direction.

    ``scored`` holds matched rows (see :func:`match`); pending rows are ignored. Direction
    is right when the forecast and the actual move the same way from the last known price
    (no move counts as its own direction).
    """
    rows = scored[scored["scored"]] if "scored" in scored else scored
    levels = levels_of(rows) if levels is None else list(levels)
    nan = float("nan")
    if rows.empty:
        return LiveMetrics(0, 0, nan, nan, nan, nan, nan, {k: nan for k in levels})
    f = rows["forecast"].to_numpy(dtype=np.float64)
    a = rows["actual"].to_numpy(dtype=np.float64)
    last = rows["last"].to_numpy(dtype=np.float64)
    err = f - a
    rmse = float(np.sqrt(np.mean(err**2)))
    naive = float(np.sqrt(np.mean((last - a) ** 2)))
    skill = 1.0 - rmse / naive if naive > 0 else nan
    direction = float(np.mean(np.sign(f - last) == np.sign(a - last)))
    coverage = {}
    for k in levels:
        lo = rows[f"lower_{k}"].to_numpy(dtype=np.float64)
        hi = rows[f"upper_{k}"].to_numpy(dtype=np.float64)
        ok = ~(np.isnan(lo) | np.isnan(hi))
        inside = (a >= lo) & (a <= hi)
        coverage[k] = float(inside[ok].mean()) if ok.any() else nan
    days = int(rows["target_index"].nunique()) if "target_index" in rows else len(rows)
    return LiveMetrics(
        n=len(rows),
        days=days,
        rmse=rmse,
        mae=float(np.mean(np.abs(err))),
        naive_rmse=naive,
        skill_vs_naive=skill,
        directional_accuracy=direction,
        coverage=coverage,
    )


def window(scored: pd.DataFrame, days: int) -> pd.DataFrame:
    """The scored rows whose targets are among the last ``days`` scored trading days."""
    rows = scored[scored["scored"]]
    if rows.empty:
        return rows
    last = int(rows["target_index"].max())
    return rows[rows["target_index"] > last - days]


def series(scored: pd.DataFrame, days: int, origin: int) -> pd.DataFrame:
    """Rolling-window metrics as of each scored target day, one row per day.

    Columns: ``step`` (trading days from ``origin``, the deployment's first ``made_on``
    position), ``target_date`` and the :meth:`LiveMetrics.as_dict` figures.
    """
    rows = scored[scored["scored"]]
    levels = levels_of(rows)
    out = []
    for idx in sorted(rows["target_index"].unique()):
        upto = rows[rows["target_index"] <= idx]
        m = metrics(window(upto, days), levels)
        date = upto.loc[upto["target_index"] == idx, "target_date"].iloc[0]
        out.append({"step": int(idx) - origin, "target_date": date, **m.as_dict()})
    return pd.DataFrame(out)


@dataclass(frozen=True)
class Verdict:
    degraded: bool
    reasons: tuple[str, ...]


def verdict(
    m: LiveMetrics, min_days: int, max_live_ratio: float, coverage_tolerance: float
) -> Verdict:
    """Degraded when, over at least ``min_days`` scored days, the live RMSE exceeds
    ``max_live_ratio`` x the naive RMSE or a level's coverage falls below nominal - tolerance."""
    if m.days < min_days:
        return Verdict(False, ())
    reasons = []
    if m.naive_rmse > 0 and m.rmse > max_live_ratio * m.naive_rmse:
        reasons.append(
            f"live RMSE {m.rmse:.4g} > {max_live_ratio:g} x naive RMSE {m.naive_rmse:.4g}"
        )
    for k, cov in m.coverage.items():
        nominal = float(k) / 100.0
        if not math.isnan(cov) and cov < nominal - coverage_tolerance:
            reasons.append(f"coverage_{k} {cov:.2f} < {nominal:.2f} - {coverage_tolerance:g}")
    return Verdict(bool(reasons), tuple(reasons))
