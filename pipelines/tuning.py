"""Hyperparameter search with Optuna: one study per ticker, trials scored on the validation part.

The search space of `tuning.space` becomes Optuna distributions; each trial trains one
candidate on the training part and returns its validation RMSE in prices
(`lstm_core.search`), reporting every epoch's value to the pruner. The test part is cut off
before the study starts and never reaches a trial. Trials run in `tuning.workers` processes
that share the study through its storage (an Optuna journal file by default, or a database
URL), so a second `tune` with the same study continues it. Each trial is a nested MLflow run
under one parent run per study and ticker (all logging through `pipelines.tracking`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lstm_core.data import DataError, SplitFrames, split_frame
from pipelines import tracking
from pipelines.config import SearchParam, Settings
from pipelines.search_space import (
    SECTIONS,
    apply_params,
    contains,
    current_values,
    describe,
    is_int,
    suggest,
    trial_name,
)

log = logging.getLogger("pipelines")

JOURNAL_FILE = ".optuna/studies.journal"

# ---------------------------------------------------------------- storage and study


def storage_url(settings: Settings) -> str:
    """What `tuning.storage` names: a journal file (default under the project) or a URL."""
    raw = settings.tuning.storage
    if raw and "://" in raw:
        return raw
    return str(settings.path(raw or JOURNAL_FILE))


def open_storage(settings: Settings) -> Any:
    """A storage safe for concurrent writers: Optuna's journal file, or a database (RDB)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = storage_url(settings)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _pruner(settings: Settings) -> Any:
    import optuna

    t = settings.tuning
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs
        )
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, settings.training.epochs)
        )
    return optuna.pruners.NopPruner()


def load_study(settings: Settings, ticker: str, worker: int = 0, done: int = 0) -> Any:
    """Create the ticker's study, or load it to continue (same name, same storage).

    The sampler's seed is `tuning.seed` shifted by the worker's index and the number of
    trials already `done`: the same seed in two workers, or in a resumed study, would draw
    the same random candidates again.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = settings.tuning.seed + done + 100_003 * worker
    sampler = optuna.samplers.TPESampler(seed=seed)
    return optuna.create_study(
        study_name=settings.tuning.study_for(ticker),
        storage=open_storage(settings),
        direction="minimize",
        sampler=sampler,
        pruner=_pruner(settings),
        load_if_exists=True,
    )


# ---------------------------------------------------------------- the objective


@dataclass
class Objective:
    """Train one candidate on the training part, return its validation RMSE in prices.

    `seen` holds the training and validation rows only (the test rows are cut off by the
    caller); `train_end` is the row where validation starts.
    """

    settings: Settings
    ticker: str
    seen: pd.DataFrame
    train_end: int
    experiment_id: str
    parent_run_id: str

    def __call__(self, trial: Any) -> float:
        import optuna

        from lstm_core.search import epoch_scorer, search_data, train_candidate
        from lstm_core.train import TrainingDivergedError

        params = suggest(trial, self.settings.tuning.space)
        name = trial_name(trial.number, params)
        run_id = tracking.start_trial_run(
            self.experiment_id,
            self.parent_run_id,
            name,
            {
                tracking.TAG_TICKER: self.ticker,
                tracking.TAG_STUDY: trial.study.study_name,
                tracking.TAG_TRIAL: str(trial.number),
            },
            params,
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        state, note = "fail", ""
        try:
            candidate = apply_params(self.settings, params)
            frames = SplitFrames(self.seen, self.train_end, len(self.seen))
            data = search_data(frames, candidate.features)

            def report(epoch: int, value: float) -> None:
                tracking.log_metrics(run_id, {"epoch_val_rmse": value}, step=epoch)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned after epoch {epoch + 1}: validation RMSE {value:.6g}"
                    )

            callbacks = [tracking.epoch_logger(run_id), epoch_scorer(data, report)]
            try:
                result, value = train_candidate(
                    data, candidate.model, candidate.training, callbacks
                )
            except TrainingDivergedError as exc:
                raise optuna.TrialPruned(f"diverged: {exc}") from None
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"validation RMSE {value}")
            tracking.log_metrics(
                run_id, {"val_rmse": value, "epochs_run": float(result.epochs_run)}
            )
            state, note = "complete", f"validation RMSE {value:.6g}"
            return value
        except optuna.TrialPruned as exc:
            state, note = "pruned", str(exc)
            raise
        except Exception as exc:
            note = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            tracking.end_trial_run(run_id, state, note)
            log.info("%s trial %s: %s (%s)", self.ticker, name, state, note)


def _started(study: Any) -> int:
    """Trials started so far (an enqueued trial waits until a worker takes it)."""
    return sum(1 for x in study.trials if x.state.name != "WAITING")


def _optimize(
    objective: Objective, worker: int, done: int, target: int, timeout: float | None
) -> None:
    import optuna
    from optuna.study import MaxTrialsCallback

    tracking.connect(objective.settings)
    study = load_study(objective.settings, objective.ticker, worker, done)
    if _started(study) >= target:  # the other workers ran them all while this one started
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective,
            n_trials=None,
            timeout=timeout,
            # A candidate whose windows do not fit the data fails; the study goes on.
            catch=(DataError,),
            callbacks=[MaxTrialsCallback(target, states=None)],
        )


def _share_cores(workers: int) -> None:
    """Runs first in each worker process (before TensorFlow loads): its share of the cores."""
    import os

    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(key, threads)


@contextlib.contextmanager
def _pinned(worker: int, workers: int) -> Iterator[None]:
    """This process on worker ``worker``'s share of the cores, given back after: the engine
    then cuts a batch in no more slices than it has cores, instead of every worker's slices
    competing for all of them."""
    import os

    try:
        before = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: leave it to the scheduler
        yield
        return
    mine = before[worker % len(before) :: workers] or [before[worker % len(before)]]
    os.sched_setaffinity(0, mine)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _worker(
    objective: Objective, worker: int, workers: int, done: int, target: int, timeout: float | None
) -> None:
    """Entry point of one spawned worker process."""
    from pipelines.runtime import configure_environment

    configure_environment(objective.settings)
    logger = logging.getLogger("pipelines")
    if not logger.handlers:  # the trial lines, as the parent process prints them
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    with _pinned(worker, workers):
        _optimize(objective, worker, done, target, timeout)


# ---------------------------------------------------------------- a study end to end


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
    before = _started(study)
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
        if workers == 1:
            _optimize(objective, 0, before, target, timeout)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: TensorFlow and Numba's thread pools do not survive a fork
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                workers - 1, mp_context=ctx, initializer=_share_cores, initargs=(workers,)
            ) as pool:
                futures = [
                    pool.submit(_worker, objective, i, workers, before, target, timeout)
                    for i in range(1, workers)
                ]
                # This process is worker 0: it runs trials while the others start up.
                with _pinned(0, workers):
                    _optimize(objective, 0, before, target, timeout)
                for fut in futures:
                    fut.result()
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
