"""Running a study's trials: in this process, or in `tuning.workers` processes that share the
study through its storage, each pinned to its share of the cores."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from lstm_core.data import DataError
from pipelines import tracking
from pipelines.tuning.objective import STOP, Objective, QuietInterrupted
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
    import signal
    from concurrent.futures import ProcessPoolExecutor

    # spawn: TensorFlow and Numba's thread pools do not survive a fork
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers - 1, mp_context=ctx, initializer=_start_worker, initargs=(objective, workers)
    ) as pool:
        # The workers start with SIGINT blocked (a child inherits the mask): a Ctrl-C while
        # one imports its modules waits for its handler (_start_worker) instead of ending it
        # with a traceback. Here it is only deferred until the workers exist.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            futures = [
                pool.submit(_worker, objective, i, workers, done, target, timeout)
                for i in range(1, workers)
            ]
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            # This process is worker 0: it runs trials while the others start up.
            with _pinned(0, workers):
                _optimize(objective, 0, done, target, timeout)
        except KeyboardInterrupt:
            # `kill -INT` reaches this process alone: stop the workers' trials too, rather
            # than wait for them to run the study to its end (a second signal is ignored).
            for child in multiprocessing.active_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGINT)
            raise
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
    quiet = QuietInterrupted(objective)
    optuna_log = logging.getLogger("optuna.study._optimize")  # where Optuna says it failed
    optuna_log.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                n_trials=None,
                timeout=timeout,
                # A candidate whose windows do not fit the data fails; the study goes on.
                catch=(DataError,),
                callbacks=[MaxTrialsCallback(target, states=None), _stop_when_asked],
            )
    finally:
        optuna_log.removeFilter(quiet)


def _stop_when_asked(study: Any, trial: Any) -> None:
    """After each trial: no new one once Ctrl-C was seen (see `STOP`)."""
    if STOP.is_set():
        study.stop()


# In a worker process: whether a trial runs (the only time the interrupt is raised there).
_running = False


def _on_interrupt(signum: int, frame: Any) -> None:
    if STOP.is_set():  # the terminal's Ctrl-C and the parent's relay: the trial stops once
        return
    STOP.set()
    if _running:
        raise KeyboardInterrupt


def _start_worker(objective: Objective, workers: int) -> None:
    """Runs first in each worker process: its share of the cores, the quiet start-up of the
    command line (TensorFlow's C++ lines filtered) and its handling of Ctrl-C."""
    import signal

    from pipelines.runtime import (
        configure_environment,
        progress_logging,
        quiet_interrupts,
        quiet_tensorflow,
    )

    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(key, threads)
    configure_environment(objective.settings)
    progress_logging()  # the trial lines, as the parent process prints them
    quiet_interrupts()
    quiet_tensorflow()
    # Outside a trial, Ctrl-C ends nothing with a traceback: the worker returns (below),
    # or the pool ends it when the parent shuts down.
    signal.signal(signal.SIGINT, _on_interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _pinned(worker: int, workers: int) -> Iterator[None]:
    """This process on worker ``worker``'s share of the cores, given back after: the engine
    then cuts a batch in no more slices than it has cores, instead of every worker's slices
    competing for all of them."""
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
    """Entry point of one spawned worker process (after `_start_worker`)."""
    global _running
    if STOP.is_set():
        return
    _running = True
    try:
        with _pinned(worker, workers):
            _optimize(objective, worker, done, target, timeout)
    except KeyboardInterrupt:  # the trial said so; the parent says `interrupted`
        return
    finally:
        _running = False
