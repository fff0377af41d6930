"""A study end to end: split off the test part, open or resume the ticker's study (the
configured settings enqueued first as the baseline), run the trials, then log the study's parent
MLflow run (best trial, counts, Optuna's figures, the trials table)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lstm_core.data import split_frame
from pipelines import tracking
from pipelines.config import SearchParam, Settings
from pipelines.tuning.objective import Objective
from pipelines.tuning.space import (
    SECTIONS,
    apply_params,
    contains,
    current_values,
    describe,
    is_int,
)
from pipelines.tuning.storage import load_study, storage_url
from pipelines.tuning.workers import run_trials, started

log = logging.getLogger("pipelines")


@dataclass
class StudyResult:
    ticker: str
    study_name: str
    storage: str
    parent_run_id: str
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float = float("nan")
    default_value: float = float("nan")
    counts: dict[str, int] = field(default_factory=dict)
    trials_run: int = 0
    seconds: float = 0.0
    resumed: bool = False

    @property
    def n_trials(self) -> int:
        return sum(self.counts.values())


def _counts(study: Any) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    for t in study.trials:
        key = t.state.name.lower()
        if key in out:
            out[key] += 1
    return out


def _figures(study: Any) -> dict[str, Any]:
    """Optuna's optimization history and parameter importances (matplotlib: no plotly)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    figures = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            figures["optimization_history"] = ovm.plot_optimization_history(study).figure
        except (ValueError, RuntimeError) as exc:
            log.warning("no optimization-history plot: %s", exc)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 2:
            try:
                figures["param_importances"] = ovm.plot_param_importances(study).figure
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # e.g. all complete trials drew the same values: nothing to attribute
                log.warning("no parameter-importance plot: %s", exc)
    return figures


def _enqueue_default(study: Any, settings: Settings) -> None:
    """A new study tries the configured settings first: the baseline the search must beat."""
    values = current_values(settings)
    space = settings.tuning.space
    outside = [f"{k} {values[k]!r}" for k in space if not contains(values[k], space[k], is_int(k))]
    if outside:
        log.info(
            "no baseline trial: the configured %s lie(s) outside tuning.space", ", ".join(outside)
        )
        return
    study.enqueue_trial(values, user_attrs={"baseline": True})


def run_study(
    settings: Settings,
    ticker: str,
    frame: pd.DataFrame,
    data_last_date: str,
    trials: int | None = None,
    timeout_minutes: float | None = None,
    workers: int | None = None,
) -> StudyResult:
    """Run (or continue) the ticker's study on `frame`'s training and validation parts.

    `frame` is the ticker's full price history; it is split chronologically as training
    does, and the rows of the test part are dropped here, before any trial exists.
    """

    t = settings.tuning
    trials = trials or t.trials
    timeout = (timeout_minutes or t.timeout_minutes or 0) * 60 or None
    workers = max(1, min(workers or t.workers, trials))
    frames = split_frame(frame, settings.evaluation)
    seen = frames.frame.iloc[: frames.val_end].copy()  # the test rows stop here

    experiment_id = tracking.connect(settings)
    study = load_study(settings, ticker)
    # Trials waiting in the queue (enqueued, never started) are among the ones to run now.
    before = started(study)
    target = before + trials
    resumed = len(study.trials) > 0
    if not resumed:
        study.set_user_attr("ticker", ticker)
        study.set_user_attr("data_last_date", data_last_date)
        _enqueue_default(study, settings)
    elif study.user_attrs.get("data_last_date") != data_last_date:
        log.warning(
            "%s: study %s began on data to %s, now %s: earlier trials saw another split",
            ticker,
            study.study_name,
            study.user_attrs.get("data_last_date"),
            data_last_date,
        )
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not (parent and tracking.reopen_run(parent, experiment_id)):
        params = {
            "tuning.study": study.study_name,
            "tuning.storage": storage_url(settings),
            "tuning.seed": t.seed,
            "tuning.pruner": t.pruner,
            "tuning.startup_trials": t.startup_trials,
            "tuning.warmup_epochs": t.warmup_epochs,
            "tuning.workers": workers,
            "tuning.objective": "validation RMSE in prices (minimize)",
            **{f"space.{k}": describe(p) for k, p in t.space.items()},
            **{f"fixed.{k}": v for k, v in settings.flat().items() if _fixed(k, t.space)},
        }
        parent = tracking.start_tuning_run(
            experiment_id,
            f"tune {ticker} {data_last_date} (running)",
            {
                tracking.TAG_TICKER: ticker,
                tracking.TAG_STUDY: study.study_name,
                tracking.TAG_DATA_LAST_DATE: data_last_date,
            },
            params,
        )
        study.set_user_attr("mlflow_parent_run_id", parent)

    objective = Objective(settings, ticker, seen, frames.train_end, experiment_id, parent)
    start = time.perf_counter()
    ok = False
    try:
        run_trials(objective, workers, before, target, timeout)
        ok = True
    finally:
        if not ok:
            tracking.fail_run(parent)
    seconds = time.perf_counter() - start

    study = load_study(settings, ticker)
    result = StudyResult(
        ticker=ticker,
        study_name=study.study_name,
        storage=storage_url(settings),
        parent_run_id=parent,
        counts=_counts(study),
        trials_run=len(study.trials) - before,
        seconds=seconds,
        resumed=resumed,
    )
    baseline = [
        x for x in study.trials if x.user_attrs.get("baseline") and x.state.name == "COMPLETE"
    ]
    if baseline:
        result.default_value = float(baseline[0].value)
    metrics = {f"trials_{k}": float(v) for k, v in result.counts.items()}
    tags: dict[str, Any] = {}
    if result.counts["complete"]:
        best = study.best_trial
        result.best_params, result.best_value = dict(best.params), float(best.value)
        metrics["best_val_rmse"] = result.best_value
        tags = {f"best.{k}": v for k, v in best.params.items()}
        tags["best.trial"] = best.number
        tags["best.run_id"] = best.user_attrs.get("mlflow_run_id", "")
    if math.isfinite(result.default_value):
        metrics["default_val_rmse"] = result.default_value
    figures = _figures(study)
    try:
        tracking.finish_tuning_run(
            parent,
            f"tune {ticker} {data_last_date} ({result.n_trials} trials)",
            metrics,
            tags,
            figures,
            study.trials_dataframe(),
        )
    finally:
        import matplotlib.pyplot as plt

        for fig in figures.values():
            plt.close(fig)
    log.info(
        "%s: study %s: %d trials this time (%s) in %.0f s",
        ticker,
        study.study_name,
        result.trials_run,
        ", ".join(f"{v} {k}" for k, v in result.counts.items() if v),
        seconds,
    )
    return result


def _fixed(key: str, space: dict[str, SearchParam]) -> bool:
    return key.partition(".")[0] in SECTIONS and key not in space


def best_settings(settings: Settings, result: StudyResult) -> Settings:
    """The configuration the study found best (unchanged when no trial completed)."""
    return apply_params(settings, result.best_params) if result.best_params else settings
