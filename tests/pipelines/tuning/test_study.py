"""Optuna studies on tiny data: the storage, the parent/child runs, pruning, the untouched test
part, resuming, parallel workers."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.pipelines.conftest import price_frame
from tests.pipelines.tuning.conftest import TUNING, tuning_settings


def test_storage_is_a_journal_under_the_project_or_a_url(tmp_path):
    from pipelines import tuning

    settings = tuning_settings(tmp_path)
    assert tuning.storage_url(settings) == str(tmp_path / ".optuna" / "studies.journal")
    other = settings.model_copy(
        update={"tuning": settings.tuning.model_copy(update={"storage": "postgresql://h/db"})}
    )
    assert tuning.storage_url(other) == "postgresql://h/db"


# ---------------------------------------------------------------- a study end to end


def _poisoned_frame(settings, n: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Prices whose test rows are NaN: any read of them fails validation or gives NaN."""
    from lstm_core.data import split_frame

    frame = price_frame(n).rename(columns=str.lower)
    frame["date"] = pd.to_datetime(frame["date"])
    frames = split_frame(frame, settings.evaluation)
    test_rows = frames.frame.index[frames.val_end :]
    poisoned = frame.copy()
    poisoned.loc[test_rows, ["open", "high", "low", "close", "volume"]] = np.nan
    return frame, poisoned


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One study run twice: 2 trials, then (resumed) an absurd candidate + 1.

    Both runs in this process; a study in two worker processes is a test of its own."""
    from pipelines import tracking, tuning

    folder = tmp_path_factory.mktemp("tune")
    settings = tuning_settings(folder)
    frame, poisoned = _poisoned_frame(settings)
    first = tuning.run_study(settings, "TEST", poisoned, "2020-06-16", trials=2)
    study = tuning.load_study(settings, "TEST")
    absurd = {**study.trials[0].params, "model.learning_rate": 50.0}
    study.enqueue_trial(absurd, user_attrs={"absurd": True})
    with warnings.catch_warnings():  # the absurd rate lies outside the space on purpose
        warnings.filterwarnings("ignore", "Fixed parameter .* is out of range", UserWarning)
        second = tuning.run_study(settings, "TEST", poisoned, "2020-06-16", trials=2)
    tracking.connect(settings)
    return settings, first, second, tuning.load_study(settings, "TEST")


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_parent_run_holds_the_study_and_children_are_nested(searched):
    from pipelines import tracking

    settings, first, second, study = searched
    client = _client()
    parent = client.get_run(first.parent_run_id)
    assert parent.info.run_name == f"tune TEST 2020-06-16 ({len(study.trials)} trials)"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_STUDY] == "tune-TEST"
    assert parent.data.params["tuning.pruner"] == "median"
    assert parent.data.params["space.model.learning_rate"] == "0.001..0.01 log"
    assert math.isclose(parent.data.metrics["best_val_rmse"], study.best_value)
    assert parent.data.tags["best.model.units"] == str(study.best_params["model.units"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in artifacts
    assert "plots/param_importances.png" in artifacts

    exp = parent.info.experiment_id
    children = client.search_runs(
        [exp], f"tags.`{tracking.TAG_PARENT}` = '{parent.info.run_id}'", max_results=100
    )
    assert len(children) == len(study.trials) == 4
    by_trial = {int(r.data.tags[tracking.TAG_TRIAL]): r for r in children}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert run.info.run_name.startswith(f"#{trial.number} ")
        assert run.data.params["model.units"] == str(trial.params["model.units"])
        assert run.data.tags[tracking.TAG_TRIAL_STATE] == trial.state.name.lower()
        history = client.get_metric_history(run.info.run_id, "epoch_val_rmse")
        assert len(history) >= 1
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert math.isclose(run.data.metrics["val_rmse"], trial.value)
            assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    # the configured values were tried first: the baseline the search is compared with
    assert study.trials[0].user_attrs.get("baseline") is True
    assert math.isclose(first.default_value, study.trials[0].value)


def test_absurd_learning_rate_is_pruned_early(searched):
    from pipelines import tracking

    settings, first, second, study = searched
    [absurd] = [t for t in study.trials if t.user_attrs.get("absurd")]
    assert absurd.state.name == "PRUNED"
    run = _client().get_run(absurd.user_attrs["mlflow_run_id"])
    assert run.data.tags[tracking.TAG_TRIAL_STATE] == "pruned"
    assert run.info.status == "KILLED"
    # stopped after its first of two epochs
    assert len(_client().get_metric_history(run.info.run_id, "epoch_val_rmse")) == 1
    assert second.counts["pruned"] >= 1


def _objective(settings):
    """The objective of one ticker's study under a parent tuning run, as `tune` builds it."""
    from lstm_core.data import split_frame
    from pipelines import tracking
    from pipelines.tuning.objective import Objective

    frame, _ = _poisoned_frame(settings)
    frames = split_frame(frame, settings.evaluation)
    experiment_id = tracking.connect(settings)
    parent = tracking.start_tuning_run(experiment_id, "tune", {}, {})
    seen = frames.frame.iloc[: frames.val_end]
    return Objective(settings, "TEST", seen, frames.train_end, experiment_id, parent)


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    """A pruner that would stop every trial: with two epochs the trial stops after the first;
    after the last one it has trained fully, so its score counts and the trial completes."""
    import optuna

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    states = {}
    for epochs in (2, 1):
        (tmp_path / str(epochs)).mkdir()
        settings = tuning_settings(tmp_path / str(epochs), overrides=(f"training.epochs={epochs}",))
        objective = _objective(settings)
        study = optuna.create_study(pruner=AlwaysPrune())
        study.optimize(objective, n_trials=1)
        [trial] = study.trials
        states[epochs] = trial.state.name, sorted(trial.intermediate_values)
    assert states == {2: ("PRUNED", [0]), 1: ("COMPLETE", [0])}


def test_ctrl_c_stays_the_news_when_the_trials_run_cannot_be_ended(tmp_path, monkeypatch):
    """Ctrl-C during training, then the write ending the trial's run fails (SQLite left locked
    by a write the signal cut short): the KeyboardInterrupt goes on, not the database's error,
    and the trial is counted as interrupted."""
    import optuna
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.tuning.objective import INTERRUPTED

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    objective = _objective(tuning_settings(tmp_path))
    # imported by the trial as it runs (the module is heavy)
    monkeypatch.setattr("lstm_core.search.train_candidate", stopped)
    monkeypatch.setattr(tracking, "end_trial_run", locked)
    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    [trial] = study.trials
    assert trial.user_attrs[INTERRUPTED] is True
    assert objective.interrupted == {0}


@pytest.fixture
def stop_flag():
    """The worker's Ctrl-C flag, cleared after the test."""
    from pipelines.tuning.objective import STOP

    yield STOP
    STOP.clear()


def test_a_ctrl_c_whose_interrupt_was_lost_stops_the_trial_at_its_next_epoch(tmp_path, stop_flag):
    """A worker saw Ctrl-C (the flag is set) but the KeyboardInterrupt its handler raised was
    discarded somewhere: the trial stops at its next epoch, as interrupted, and it is the last."""
    from pipelines.tuning.objective import INTERRUPTED
    from pipelines.tuning.storage import load_study
    from pipelines.tuning.workers import _optimize

    settings = tuning_settings(tmp_path)
    objective = _objective(settings)
    stop_flag.set()
    with pytest.raises(KeyboardInterrupt):
        _optimize(objective, 0, 0, 3, None)
    [trial] = load_study(settings, "TEST").trials
    assert trial.user_attrs[INTERRUPTED] is True
    assert objective.interrupted == {0}


def test_no_new_trial_starts_after_a_ctrl_c_seen_during_the_last_epoch(
    tmp_path, monkeypatch, stop_flag
):
    """Ctrl-C seen after the trial's last epoch: the trial keeps its result and the study of
    three trials ends after it."""
    import lstm_core.search
    from pipelines.tuning.storage import load_study
    from pipelines.tuning.workers import _optimize

    real = lstm_core.search.train_candidate

    def trained_then_stopped(*args, **kwargs):
        result = real(*args, **kwargs)
        stop_flag.set()
        return result

    settings = tuning_settings(tmp_path, overrides=("training.epochs=1",))
    objective = _objective(settings)
    monkeypatch.setattr(lstm_core.search, "train_candidate", trained_then_stopped)
    _optimize(objective, 0, 0, 3, None)
    assert [t.state.name for t in load_study(settings, "TEST").trials] == ["COMPLETE"]


def test_search_never_reads_the_test_part(searched):
    # The study ran on a frame whose test rows are all NaN: a read would have failed the
    # trial (validation) or made its score NaN (arithmetic).
    settings, first, second, study = searched
    # which trials the median pruner stops depends on the scores; none may fail
    assert second.counts["fail"] == 0 and second.counts["complete"] >= 2
    for t in study.trials:
        assert all(math.isfinite(v) for v in t.intermediate_values.values()), t.number
        if t.state.name == "COMPLETE":
            assert math.isfinite(t.value)


def test_second_run_continues_the_study(searched):
    settings, first, second, study = searched
    assert not first.resumed and second.resumed
    assert (first.trials_run, second.trials_run) == (2, 2)
    assert second.parent_run_id == first.parent_run_id
    assert len(study.trials) == 4
    assert (settings.base_dir / ".optuna" / "studies.journal").is_file()
    # the resumed run did not draw the first run's candidates again
    rates = [t.params["model.learning_rate"] for t in study.trials]
    assert len(set(rates)) == len(rates)


def test_a_study_resumes_only_under_the_settings_its_trials_were_made_under(searched):
    """What a served tuning run (no command-line pre-flight) meets: other fixed settings are
    refused before any trial or MLflow run, and the parent keeps the study's own."""
    from pipelines import tuning
    from pipelines.errors import PipelineError

    settings, first, second, study = searched
    one_epoch = settings.model_copy(
        update={"training": settings.training.model_copy(update={"epochs": 1})}
    )
    _, poisoned = _poisoned_frame(settings)
    with pytest.raises(PipelineError, match=r"training\.epochs 2 \(now 1\)"):
        tuning.run_study(one_epoch, "TEST", poisoned, "2020-06-16", trials=1)
    assert len(tuning.load_study(settings, "TEST").trials) == len(study.trials)
    assert study.user_attrs["made_under"]["fixed.training.epochs"] == "2"
    parent = _client().get_run(first.parent_run_id)
    assert parent.data.params["fixed.training.epochs"] == "2"


@pytest.mark.slow  # two spawned worker processes, each importing TensorFlow, MLflow and Optuna
def test_a_resumed_study_continues_in_two_worker_processes(tmp_path):
    from pipelines import tracking, tuning

    settings = tuning_settings(tmp_path)
    _, poisoned = _poisoned_frame(settings)
    first = tuning.run_study(settings, "TEST", poisoned, "2020-06-16", trials=1)
    cores = os.sched_getaffinity(0)
    second = tuning.run_study(settings, "TEST", poisoned, "2020-06-16", trials=2, workers=2)
    # this process ran as worker 0 on its share of the cores, and has them all back
    assert os.sched_getaffinity(0) == cores
    study = tuning.load_study(settings, "TEST")
    assert second.resumed and second.parent_run_id == first.parent_run_id
    assert (first.trials_run, second.trials_run) == (1, 2) and len(study.trials) == 3
    assert second.counts["fail"] == 0
    # the two workers started together: neither drew the other's (or the first run's) candidate
    rates = [t.params["model.learning_rate"] for t in study.trials]
    assert len(set(rates)) == len(rates)
    # each worker logged its trial as a child run of the study's parent run
    tracking.connect(settings)
    parent = _client().get_run(first.parent_run_id)
    children = _client().search_runs(
        [parent.info.experiment_id], f"tags.`{tracking.TAG_PARENT}` = '{parent.info.run_id}'"
    )
    assert sorted(int(r.data.tags[tracking.TAG_TRIAL]) for r in children) == [0, 1, 2]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)


def test_same_objective_on_the_unpoisoned_frame_scores_the_same(searched, tmp_path):
    """The poison changed nothing: the default configuration scores identically on clean data."""
    from pipelines import tuning

    settings, first, second, study = searched
    clean = tuning_settings(tmp_path, TUNING.replace("trials: 3", "trials: 1"))
    frame, _ = _poisoned_frame(clean)
    again = tuning.run_study(clean, "TEST", frame, "2020-06-16")
    assert math.isclose(again.default_value, first.default_value, rel_tol=1e-6)


def test_a_study_resumed_after_new_days_keeps_the_split_its_trials_had(tmp_path, caplog):
    """New days in the store: the resumed study's trials train and score on the prices it
    began on, so the same configuration scores the same as before and the best compares like
    with like; days replaced up to where it began are refused in one line, nothing run."""
    import logging

    from pipelines import tuning
    from pipelines.errors import PipelineError

    settings = tuning_settings(tmp_path, TUNING.replace("trials: 3", "trials: 1"))
    full = price_frame(140).rename(columns=str.lower)
    full["date"] = pd.to_datetime(full["date"])
    stored = {"frame": full.iloc[:120]}  # the store as it is at each call

    def digest_through(day: str) -> str:
        rows = stored["frame"][stored["frame"]["date"] <= pd.Timestamp(day)]
        return str(pd.util.hash_pandas_object(rows, index=False).sum())

    began = digest_through("2020-06-16")  # as the store's manifest would give it
    first = tuning.run_study(
        settings,
        "TEST",
        stored["frame"],
        "2020-06-16",
        digest_through=digest_through,
        data_digest=began,
    )
    study = tuning.load_study(settings, "TEST")
    assert study.user_attrs["data_digest"] == began
    study.enqueue_trial(study.trials[0].params)  # the same configuration again
    stored["frame"] = full  # 20 new days stored
    last = str(full["date"].iloc[-1].date())
    with caplog.at_level(logging.INFO, logger="pipelines"):
        second = tuning.run_study(settings, "TEST", full, last, digest_through=digest_through)
    trials = tuning.load_study(settings, "TEST").trials
    assert math.isclose(trials[1].value, trials[0].value, rel_tol=1e-6)
    assert second.parent_run_id == first.parent_run_id
    assert "continues on the prices it began on, through 2020-06-16" in caplog.text
    assert "the 20 day(s) stored since are not used by its trials" in caplog.text
    parent = _client().get_run(first.parent_run_id)
    assert parent.info.run_name.startswith("tune TEST 2020-06-16 ")

    replaced = full.copy()
    replaced.loc[10, "close"] *= 1.05  # a stored day before 2020-06-16 replaced
    stored["frame"] = replaced
    with pytest.raises(PipelineError) as refused:
        tuning.run_study(settings, "TEST", replaced, last, digest_through=digest_through)
    line = str(refused.value)
    assert "began on TEST's prices through 2020-06-16" in line and "replaced since" in line
    assert f"--set tuning.study=tune-{{ticker}}-{last}" in line and "optuna delete-study" in line
    assert len(tuning.load_study(settings, "TEST").trials) == len(trials)


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trials", "0"], "--trials"),
        (["--timeout", "-1"], "--timeout"),
        (["--ticker", "../x"], "--ticker"),
        (["--set", "tuning.workers=0"], "tuning.workers"),
    ],
)
def test_tune_bad_arguments_exit_2_in_one_line(tmp_path, capsys, args, needle):
    from pipelines.cli import main

    tuning_settings(tmp_path)
    assert main(["tune", "--config", str(tmp_path / "mlflow.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / ".optuna").exists() and not (tmp_path / "mlflow.db").exists()


def test_configured_values_outside_the_space_are_said_not_silently_skipped(tiny_project, caplog):
    import logging

    import optuna

    from pipelines.config import load_settings
    from pipelines.tuning.study import _enqueue_default

    settings = load_settings(tiny_project / "mlflow.yaml", ["model.units=4"], env={})
    study = optuna.create_study()
    logger = logging.getLogger("pipelines")  # the CLI's main() stops it propagating
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="pipelines"):
            _enqueue_default(study, settings)
    finally:
        logger.removeHandler(caplog.handler)
    assert study.trials == []
    assert "no baseline trial" in caplog.text and "model.units 4" in caplog.text


def test_a_space_the_data_cannot_window_is_one_line_before_any_study(tiny_project):
    """`tune` checks the space's longest lookback as `run` checks the configured one: one line
    naming the key and the longest lookback the data allow, exit 2, nothing written."""
    import re
    import sys
    from pathlib import Path

    from lstm_core.backtest import untrainable
    from pipelines.config import load_settings
    from tests.user_path import cli, user_env

    space = TUNING.replace("{low: 3, high: 8}", "{low: 3, high: 100}")
    config = tiny_project / "mlflow.yaml"
    config.write_text(config.read_text() + space, encoding="utf-8")
    before = sorted(p.name for p in tiny_project.iterdir())
    bin_ = Path(sys.executable).with_name("lstm-pipeline")
    out = cli(bin_, "tune", cwd=tiny_project, env=user_env(keep_pythonpath=True), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert "tuning.space" in line and "features.lookback reaches 100" in line, line
    largest = int(re.search(r"at most (\d+)", line).group(1))
    # the number named is the longest lookback the 120 rows can train, as `run` checks it
    settings = load_settings(config, env={})
    frame = price_frame(120).rename(columns=str.lower)  # the tiny project's prices
    frame["date"] = pd.to_datetime(frame["date"])
    for lookback, ok in ((largest, True), (largest + 1, False)):
        features = settings.features.model_copy(update={"lookback": lookback})
        assert (untrainable(frame, features, settings.evaluation) is None) == ok, lookback
    assert sorted(p.name for p in tiny_project.iterdir()) == before


def test_tune_checks_the_study_of_each_configured_sources_ticker(tiny_project):
    """No configured ticker, an empty store: the sources' tickers are the ones the flow will
    search, so their studies are checked before Prefect starts, as a stored ticker's are."""
    import sys
    from pathlib import Path

    import optuna
    from optuna.distributions import IntDistribution

    from pipelines.tuning.storage import open_storage
    from pipelines.tuning.study import MADE_UNDER, made_under
    from tests.user_path import cli, user_env

    other = tuning_settings(tiny_project, TUNING, ("training.epochs=2",))  # the file: epochs 1
    study = optuna.create_study(study_name="tune-TEST", storage=open_storage(other))
    study.set_user_attr(MADE_UNDER, made_under(other))
    units = IntDistribution(2, 6, step=2)
    study.add_trial(optuna.trial.create_trial(params={"model.units": 2}, distributions={"model.units": units}, value=1.0))  # fmt: skip
    journal = (tiny_project / ".optuna" / "studies.journal").read_bytes()
    bin_ = Path(sys.executable).with_name("lstm-pipeline")
    out = cli(bin_, "tune", "--set", "data.ticker=null", cwd=tiny_project,
              env=user_env(keep_pythonpath=True), timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    [line] = out.stderr.strip().splitlines()
    assert "study tune-TEST" in line and "training.epochs 2 (now 1)" in line, line
    assert (tiny_project / ".optuna" / "studies.journal").read_bytes() == journal
    assert not (tiny_project / "mlflow.db").exists() and not (tiny_project / "store").exists()
