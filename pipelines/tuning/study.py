"""A study end to end: split off the test part, open or resume the ticker's study (the
configured settings enqueued first as the baseline), run the trials, then log the study's parent
MLflow run (best trial, counts, Optuna's figures, the trials table)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lstm_core.data import DATE_COLUMN, split_frame
from pipelines import tracking
from pipelines.config import SearchParam, Settings
from pipelines.errors import PipelineError
from pipelines.tuning.objective import INTERRUPTED, Objective
from pipelines.tuning.space import (
    SECTIONS,
    apply_params,
    contains,
    current_values,
    describe,
    is_int,
)
from pipelines.tuning.storage import load_study, recorded, storage_url
from pipelines.tuning.workers import run_trials, started

log = logging.getLogger("pipelines")


@dataclass
class StudyResult:
    ticker: str
    study_name: str
    storage: str
    parent_run_id: str
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
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
    """Trials per state; those Optuna failed because Ctrl-C stopped them are `interrupted`."""
    out = {"complete": 0, "pruned": 0, "fail": 0, "interrupted": 0, "running": 0}
    for t in study.trials:
        key = t.state.name.lower()
        if key == "fail" and t.user_attrs.get(INTERRUPTED):
            key = "interrupted"
        if key in out:
            out[key] += 1
    return out


def _figures(study: Any, ticker: str) -> dict[str, Any]:
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
            # Optuna warns once per parameter when its importance rests on too few trials:
            # kept off stderr here, and said once below.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                try:
                    figures["param_importances"] = ovm.plot_param_importances(study).figure
                except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                    # e.g. all complete trials drew the same values: nothing to attribute
                    log.warning("no parameter-importance plot: %s", exc)
            doubts = [w for w in caught if issubclass(w.category, UserWarning)]
            if doubts and "param_importances" in figures:
                log.info(
                    "%s: parameter importances from %d complete trials may be inaccurate "
                    "(Optuna: %s)",
                    ticker,
                    len(complete),
                    str(doubts[0].message).split(". ")[0],
                )
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
    digest_through: Callable[[str], str] | None = None,
    data_digest: str | None = None,
) -> StudyResult:
    """Run (or continue) the ticker's study on `frame`'s training and validation parts.

    `frame` is the ticker's full price history; it is split chronologically as training
    does, and the rows of the test part are dropped here, before any trial exists. A resumed
    study's trials see the prices it began on (:func:`_prices_it_began_on`). A new study
    records `data_digest`, the digest of the stored rows through `data_last_date` (the store's
    manifest has it); `digest_through(day)`, the digest of the stored rows up to an ISO day,
    tells whether those were replaced since (None: not checked).
    """

    t = settings.tuning
    trials = trials or t.trials
    timeout = (timeout_minutes or t.timeout_minutes or 0) * 60 or None
    workers = max(1, min(workers or t.workers, trials))

    experiment_id = tracking.connect(settings)
    study = load_study(settings, ticker)
    # Trials waiting in the queue (enqueued, never started) are among the ones to run now.
    before = started(study)
    target = before + trials
    resumed = len(study.trials) > 0
    if not resumed:
        study.set_user_attr("ticker", ticker)
        study.set_user_attr(DATA_LAST_DATE, data_last_date)
        if data_digest is not None:
            study.set_user_attr(DATA_DIGEST, data_digest)
        study.set_user_attr(MADE_UNDER, made_under(settings))
        _enqueue_default(study, settings)
    elif MADE_UNDER not in study.user_attrs:
        # a study from before settings were recorded: what it was made under is unknown
        log.info("%s: study %s records its settings from now on", ticker, study.study_name)
        study.set_user_attr(MADE_UNDER, made_under(settings))
    else:
        refuse_other_settings(settings, ticker, study.user_attrs[MADE_UNDER])
    began = study.user_attrs.get(DATA_LAST_DATE, data_last_date)
    if began != data_last_date:
        frame = _prices_it_began_on(settings, study, frame, began, data_last_date, digest_through)
        data_last_date = began
    frames = split_frame(frame, settings.evaluation)
    seen = frames.frame.iloc[: frames.val_end].copy()  # the test rows stop here
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
            **made_under(settings),
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
        result.best_trial = best.number
        metrics["best_val_rmse"] = result.best_value
        tags = {f"best.{k}": v for k, v in best.params.items()}
        tags["best.trial"] = best.number
        tags["best.run_id"] = best.user_attrs.get("mlflow_run_id", "")
    if math.isfinite(result.default_value):
        metrics["default_val_rmse"] = result.default_value
    figures = _figures(study, ticker)
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


# The chronological split: which rows train a trial and which score it.
SPLIT_KEYS = ("evaluation.val_fraction", "evaluation.test_fraction")
MADE_UNDER = "made_under"  # the study's user attribute holding made_under()
DATA_LAST_DATE = "data_last_date"  # the last stored day when the study began
DATA_DIGEST = "data_digest"  # the digest of the stored rows through that day


def _prices_it_began_on(
    settings: Settings,
    study: Any,
    frame: pd.DataFrame,
    began: str,
    now: str,
    digest_through: Callable[[str], str] | None,
) -> pd.DataFrame:
    """The rows of `frame` through `began`: a resumed study's trials train and score on the
    split its earlier trials had, so that all of them compare; the days stored since are the
    retraining's after the study. Refused when stored days up to `began` were replaced."""
    ticker = study.user_attrs.get("ticker", "")
    recorded = study.user_attrs.get(DATA_DIGEST)
    if recorded and digest_through is not None and digest_through(began) != recorded:
        raise PipelineError(
            f"study {study.study_name} began on {ticker}'s prices through {began}, and stored "
            f"days up to it were replaced since: its trials would not compare with new ones: "
            + _own_study_or_delete(settings, ticker, "the stored prices", now)
        )
    kept = frame[frame[DATE_COLUMN] <= pd.Timestamp(began)]
    log.info(
        "%s: study %s continues on the prices it began on, through %s, so that its trials "
        "compare: the %d day(s) stored since are not used by its trials (the best "
        "configuration is retrained on all of them; a study of all stored days: --set "
        "tuning.study=%s-%s)",
        ticker,
        study.study_name,
        began,
        len(frame) - len(kept),
        settings.tuning.study,
        now,
    )
    return kept


def _fixed(key: str, space: dict[str, SearchParam]) -> bool:
    return (key.partition(".")[0] in SECTIONS and key not in space) or key in SPLIT_KEYS


def made_under(settings: Settings) -> dict[str, str]:
    """What a study's trials are trained and scored under besides their own parameters: the
    search space (`space.*`) and every setting held fixed (`fixed.*`: features, model and
    training keys not searched, and the split). Trials made under other values do not compare."""
    space = settings.tuning.space
    out = {f"space.{k}": describe(p) for k, p in sorted(space.items())}
    out.update({f"fixed.{k}": str(v) for k, v in settings.flat().items() if _fixed(k, space)})
    return out


def _differences(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """The settings whose `made_under` values differ, one phrase each: `training.epochs 2
    (now 1)`, `tuning.space features.lookback 20..90 step 10 (now 3..8)`, `model.dropout
    0.2 (now searched 0..0.4)`, `features.scaler searched choices minmax,standard (now
    fixed at standard)`."""

    def state(made: dict[str, str], name: str) -> tuple[str, str] | None:
        for kind in ("space", "fixed"):
            if f"{kind}.{name}" in made:
                return kind, made[f"{kind}.{name}"]
        return None

    def text(s: tuple[str, str] | None, moved: bool) -> str:
        if s is None:
            return "unset"
        kind, value = s
        return f"{'searched' if kind == 'space' else 'fixed at'} {value}" if moved else value

    out = []
    for name in sorted({key.partition(".")[2] for key in before.keys() | now.keys()}):
        old, new = state(before, name), state(now, name)
        if old == new:
            continue
        moved = old is None or new is None or old[0] != new[0]
        label = name if moved or old[0] == "fixed" else f"tuning.space {name}"
        out.append(f"{label} {text(old, moved)} (now {text(new, moved)})")
    return out


def refuse_other_settings(settings: Settings, ticker: str, before: dict[str, str]) -> None:
    """A study continues only under the settings its trials were made under: one line naming
    the keys that differ, a study name of the new settings' own and how to delete the old."""
    import hashlib
    import json

    now = made_under(settings)
    diffs = _differences(before, now)
    if not diffs:
        return
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    # the same settings get the same name, so running with it again continues that study
    digest = hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:6]
    raise PipelineError(
        f"study {settings.tuning.study_for(ticker)} was made with other settings: {shown}; its "
        f"trials would not compare with new ones: "
        + _own_study_or_delete(settings, ticker, "these settings", digest)
    )


def _own_study_or_delete(settings: Settings, ticker: str, what: str, suffix: str) -> str:
    """The way out of a study whose trials would not compare with new ones."""
    import shlex

    name = settings.tuning.study_for(ticker)
    url = storage_url(settings)
    backend = "" if "://" in url else " --storage-class JournalFileBackend"
    return (
        f"give {what} a study of their own (--set tuning.study={settings.tuning.study}-{suffix}), "
        f"or delete it: optuna delete-study{backend} --storage {shlex.quote(url)} "
        f"--study-name {shlex.quote(name)}"
    )


def check_study(settings: Settings, ticker: str) -> None:
    """Before any flow runs: the ticker's study, if it has trials, was made under these
    settings (a study from before settings were recorded passes)."""
    found = recorded(settings, ticker)
    if found is None:
        return
    attrs, n_trials = found
    if n_trials and MADE_UNDER in attrs:
        refuse_other_settings(settings, ticker, attrs[MADE_UNDER])


def best_settings(settings: Settings, result: StudyResult) -> Settings:
    """The configuration the study found best (unchanged when no trial completed)."""
    return apply_params(settings, result.best_params) if result.best_params else settings
