"""The promotion policy: a pure decision on numbers, so it can be tested exhaustively."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.config import PromotionPolicy


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def decide(
    policy: PromotionPolicy,
    challenger_score: float,
    challenger_rmse: float,
    naive_rmse: float,
    champion_score: float | None,
) -> Decision:
    """Should the challenger take the champion alias?

    All scores are errors (lower is better) measured on the challenger's test window;
    `champion_score` is the champion re-scored on that same window (None: no champion).
    """
    metric = policy.metric
    if not all(_finite(x) for x in (challenger_score, challenger_rmse, naive_rmse)):
        return Decision(
            False,
            f"refused: non-finite metric ({metric}={challenger_score}, "
            f"test_rmse={challenger_rmse}, naive_rmse={naive_rmse})",
            challenger_score,
            champion_score,
        )
    limit = naive_rmse * (1.0 + policy.max_worse_than_naive)
    if challenger_rmse > limit:
        return Decision(
            False,
            f"refused: test_rmse {challenger_rmse:.6g} is worse than the naive forecast's "
            f"{naive_rmse:.6g} by more than {policy.max_worse_than_naive:.0%} (limit {limit:.6g})",
            challenger_score,
            champion_score,
        )
    if champion_score is None:
        return Decision(
            True,
            f"promoted: first model to pass the guards ({metric}={challenger_score:.6g}, "
            f"naive_rmse={naive_rmse:.6g})",
            challenger_score,
            None,
        )
    if not _finite(champion_score):
        return Decision(
            True,
            f"promoted: champion's {metric} on the same window is {champion_score}",
            challenger_score,
            champion_score,
        )
    threshold = champion_score * (1.0 - policy.min_improvement)
    if challenger_score < threshold:
        return Decision(
            True,
            f"promoted: {metric} {challenger_score:.6g} beats champion's {champion_score:.6g} "
            "on the same test window",
            challenger_score,
            champion_score,
        )
    return Decision(
        False,
        f"refused: {metric} {challenger_score:.6g} does not beat champion's "
        f"{champion_score:.6g} on the same test window"
        + (f" by {policy.min_improvement:.1%}" if policy.min_improvement else ""),
        challenger_score,
        champion_score,
    )
