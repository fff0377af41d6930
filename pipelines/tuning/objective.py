"""One trial: draw a candidate from the space, train it on the training part and return its
validation RMSE in prices (`lstm_core.search`), reporting every epoch's value to the pruner and
logging the trial as a nested MLflow run under the study's parent run."""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lstm_core.data import SplitFrames
from pipelines import tracking
from pipelines.config import Settings
from pipelines.runtime import cut_by_interrupt
from pipelines.tuning.space import apply_params, suggest, trial_name

log = logging.getLogger("pipelines")

INTERRUPTED = "interrupted"  # the user attribute of a trial stopped by Ctrl-C
# Set by a worker process's Ctrl-C handler (`workers`). The KeyboardInterrupt that handler
# raises lands wherever the worker's Python code happens to be, and library code that discards
# errors can lose it: the trial then stops at its next epoch and the study starts no new one.
STOP = threading.Event()


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
    # numbers of the trials Ctrl-C stopped in this process (see QuietInterrupted)
    interrupted: set[int] = field(default_factory=set)

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
                if STOP.is_set():
                    raise KeyboardInterrupt
                tracking.log_metrics(run_id, {"epoch_val_rmse": value}, step=epoch)
                trial.report(value, epoch)
                # After the last epoch the training is done: pruning would save nothing and
                # drop the trial's result.
                if epoch + 1 < candidate.training.epochs and trial.should_prune():
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
        except KeyboardInterrupt:
            state, note = "interrupted", "stopped by Ctrl-C"
            self._stopped(trial)
            raise
        except Exception as exc:
            if cut_by_interrupt(exc):  # e.g. MLflow's "database is locked" as it wrote a metric
                state, note = "interrupted", "stopped by Ctrl-C"
                self._stopped(trial)
                raise KeyboardInterrupt from exc
            note = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                tracking.end_trial_run(run_id, state, note)
            except Exception:
                # Ctrl-C may have cut a write short in either process and left SQLite locked:
                # the stop is what to tell, and the next command marks the run FAILED
                # (settle_orphaned_runs)
                if state != "interrupted":
                    raise
            log.info("%s trial %s: %s (%s)", self.ticker, name, state, note)

    def _stopped(self, trial: Any) -> None:
        """Optuna records the trial as failed; it is the user's stop, not the candidate's
        failure: counted apart (INTERRUPTED), and said in the trial's line, not in Optuna's
        warning."""
        self.interrupted.add(trial.number)
        trial.set_user_attr(INTERRUPTED, True)


class QuietInterrupted(logging.Filter):
    """Drops Optuna's "Trial N failed ..." warnings (one with the KeyboardInterrupt's
    traceback) of the trials `objective` saw stopped by Ctrl-C: its own line said so."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.objective = objective

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.match(r"Trial (\d+) failed ", record.getMessage())
        return found is None or int(found.group(1)) not in self.objective.interrupted
