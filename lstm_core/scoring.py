"""Live scoring: logged forecasts matched to the prices that arrived, and their live metrics.

A forecast made on ``made_on`` for ``step`` k targets the k-th stored trading day after it:
matching by position needs no holiday calendar. With ``expected_date`` from an exchange calendar,
a day missing from the store would shift that position onto a later day, so such a forecast is
left unscored (a gap). The naive forecast of a target is the last price known at ``made_on``."""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

LOWER = re.compile(r"^lower_(\d+(?:\.\d+)?)$")


def levels_of(frame: pd.DataFrame) -> list[str]:
    """Interval level names present as ``lower_<L>``/``upper_<L>`` pairs, e.g. ['80', '95']."""
    found = (m.group(1) for c in frame.columns if (m := LOWER.match(str(c))))
    return sorted((k for k in found if f"upper_{k}" in frame.columns), key=float)


def match(
    log: pd.DataFrame, prices: pd.DataFrame, target: str, dated: bool = False
) -> pd.DataFrame:
    """Each log row (``made_on``, ``step``) with ``target_date``, ``target_index``, ``actual``,
    ``last`` (the naive forecast), ``scored`` and ``gap`` (the store skips its day: never scored).
    ``prices`` (``date``, ``target``) is sorted; a ``made_on`` not stored anchors on the day before.
    ``dated``: a row is scored only where the stored day at its position is its ``expected_date``."""
    out = log.copy()
    dates = pd.to_datetime(prices["date"]).to_numpy()
    values = prices[target].to_numpy(dtype=np.float64)
    anchor = np.searchsorted(dates, pd.to_datetime(out["made_on"]).to_numpy(), side="right") - 1
    idx = anchor + out["step"].to_numpy(dtype=np.int64)
    known = anchor >= 0
    arrived = known & (idx < len(dates))
    safe = np.where(arrived, idx, 0)
    gap = np.zeros(len(out), dtype=bool)
    if dated and "expected_date" in out and len(dates):
        expected = pd.to_datetime(out["expected_date"]).to_numpy()
        check = known & ~np.isnat(expected)
        gap = check & np.where(arrived, dates[safe] != expected, expected <= dates[-1])
        arrived &= ~gap
    out["target_date"] = pd.to_datetime(np.where(arrived, dates[safe], np.datetime64("NaT")))
    out["target_index"] = np.where(arrived, idx, -1)
    out["actual"] = np.where(arrived, values[safe], np.nan)
    out["last"] = np.where(known, values[np.where(known, anchor, 0)], np.nan)
    out["scored"] = arrived
    out["gap"] = gap
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
        names = ("rmse", "mae", "naive_rmse", "skill_vs_naive", "directional_accuracy")
        out = {f"{prefix}{k}": getattr(self, k) for k in names}
        out[f"{prefix}scored_days"] = float(self.days)
        return out | {f"{prefix}coverage_{k}": v for k, v in self.coverage.items()}


def metrics(scored: pd.DataFrame, levels: Sequence[str] | None = None) -> LiveMetrics:
    """RMSE/MAE in prices, naive RMSE, skill, coverage and direction of :func:`match`'s scored rows."""
    rows = scored[scored["scored"]] if "scored" in scored else scored
    levels = levels_of(rows) if levels is None else list(levels)
    nan = float("nan")
    if rows.empty:
        return LiveMetrics(0, 0, nan, nan, nan, nan, nan, dict.fromkeys(levels, nan))
    f, a, last = (rows[c].to_numpy(dtype=np.float64) for c in ("forecast", "actual", "last"))
    rmse = float(np.sqrt(np.mean((f - a) ** 2)))
    naive = float(np.sqrt(np.mean((last - a) ** 2)))
    coverage = {}
    for k in levels:
        lo, hi = rows[f"lower_{k}"].to_numpy(np.float64), rows[f"upper_{k}"].to_numpy(np.float64)
        ok = ~(np.isnan(lo) | np.isnan(hi))
        coverage[k] = float(((a >= lo) & (a <= hi))[ok].mean()) if ok.any() else nan
    return LiveMetrics(
        n=len(rows),
        days=int(rows["target_index"].nunique()) if "target_index" in rows else len(rows),
        rmse=rmse,
        mae=float(np.mean(np.abs(f - a))),
        naive_rmse=naive,
        skill_vs_naive=1.0 - rmse / naive if naive > 0 else nan,
        directional_accuracy=float(np.mean(np.sign(f - last) == np.sign(a - last))),  # 0 = no move
        coverage=coverage,
    )


def window(scored: pd.DataFrame, days: int) -> pd.DataFrame:
    """The scored rows whose targets are among the last ``days`` scored trading days."""
    rows = scored[scored["scored"]]
    return rows[rows["target_index"] > rows["target_index"].max() - days] if len(rows) else rows


def series(scored: pd.DataFrame, days: int, origin: int) -> pd.DataFrame:
    """Rolling :func:`window` metrics as of each scored target day, ``step`` days from ``origin``."""
    rows = scored[scored["scored"]]
    levels = levels_of(rows)
    out = []
    for idx in sorted(rows["target_index"].unique()):
        upto = rows[rows["target_index"] <= idx]
        date = upto.loc[upto["target_index"] == idx, "target_date"].iloc[0]
        m = metrics(window(upto, days), levels).as_dict()
        out.append({"step": int(idx) - origin, "target_date": date, **m})
    return pd.DataFrame(out)


@dataclass(frozen=True)
class Verdict:
    degraded: bool
    reasons: tuple[str, ...]


def verdict(
    m: LiveMetrics, min_days: int, max_live_ratio: float, coverage_tolerance: float
) -> Verdict:
    """Degraded: over ``min_days``+ scored days, RMSE > ratio x naive or coverage < nominal - tol."""
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
