"""Running a study's trials: in this process, or in `tuning.workers` processes that share the
study through its storage, each pinned to its share of the cores."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from lstm_core.data import DataError
from pipelines import tracking
from pipelines.tuning.objective import Objective
from pipelines.tuning.storage import load_study


def started(study: Any) -> int:
    """Trials started so far (an enqueued trial waits until a worker takes it)."""
    return sum(1 for x in study.trials if x.state.name != "WAITING")


def run_trials(
    objective: Objective, workers: int, done: int, target: int, timeout: float | None
) -> None:
    """Run trials until the study has `target` started ones (or `timeout` seconds passed).

    `done` trials had started before; with more than one worker, this process is worker 0
    and the others are spawned processes.
    """
    if workers == 1:
        _optimize(objective, 0, done, target, timeout)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: TensorFlow and Numba's thread pools do not survive a fork
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers - 1, mp_context=ctx, initializer=_share_cores, initargs=(workers,)
    ) as pool:
        futures = [
            pool.submit(_worker, objective, i, workers, done, target, timeout)
            for i in range(1, workers)
        ]
        # This process is worker 0: it runs trials while the others start up.
        with _pinned(0, workers):
            _optimize(objective, 0, done, target, timeout)
        for fut in futures:
            fut.result()


def _optimize(
    objective: Objective, worker: int, done: int, target: int, timeout: float | None
) -> None:
    import optuna
    from optuna.study import MaxTrialsCallback

    tracking.connect(objective.settings)
    study = load_study(objective.settings, objective.ticker, worker, done)
    if started(study) >= target:  # the other workers ran them all while this one started
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
    from pipelines.runtime import configure_environment, progress_logging

    configure_environment(objective.settings)
    progress_logging()  # the trial lines, as the parent process prints them
    with _pinned(worker, workers):
        _optimize(objective, worker, done, target, timeout)
