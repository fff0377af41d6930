"""The `tune` summary's lines: RMSEs a user can tell apart, and how to keep the best settings."""

from __future__ import annotations

import re
import shlex

from tests.pipelines.tuning.conftest import tuning_settings


def _summary(settings, best: float, default: float, params: dict) -> str:
    from pipelines.flows.tuning import TunedTicker
    from pipelines.tuning import StudyResult

    study = StudyResult(
        ticker="TEST",
        study_name="tune-TEST",
        storage=".optuna/studies.journal",
        parent_run_id="abc",
        best_params=params,
        best_trial=2,
        best_value=best,
        default_value=default,
        counts={"complete": 3},
    )
    return TunedTicker(study).render(settings)


def test_best_and_default_rmse_never_read_the_same(tiny_project):
    settings = tuning_settings(tiny_project)
    params = {"model.units": 4}
    # as in the user test: 0.208106 and 0.208124 both printed 0.2081
    text = _summary(settings, 0.2081061, 0.2081243, params)
    assert "best validation RMSE 0.208106 (default configuration 0.208124)" in text
    # equal to the trial lines' 6 digits: more digits, until they differ
    text = _summary(settings, 0.20810612, 0.20810648, params)
    assert "best validation RMSE 0.2081061 (default configuration 0.2081065)" in text
    text = _summary(settings, 0.5, 0.5, params)
    assert "best validation RMSE 0.5 (default configuration 0.5)" in text


def test_summary_says_retraining_uses_mlflow_yaml_and_the_sets_that_keep_the_best(
    tiny_project,
):
    """The `--set`s the line gives, passed to the configuration loader, are the best trial's
    settings exactly (what `retrain --set ...` would train)."""
    from pipelines.config import load_settings
    from pipelines.tuning import StudyResult, best_settings

    settings = tuning_settings(tiny_project)
    params = {
        "features.lookback": 7,
        "model.units": 6,
        "model.learning_rate": 0.0031622776601683794,
        "features.scaler": "standard",
    }
    text = _summary(settings, 0.3, 0.4, params)
    [line] = [x for x in text.splitlines() if "retraining" in x]
    assert "retraining (retrain, serve, run) trains mlflow.yaml's configuration" in line
    sets = re.search(r"pass (.*)\)$", line).group(1)
    argv = shlex.split(sets)
    assert argv[::2] == ["--set"] * len(params)
    kept = load_settings(tiny_project / "mlflow.yaml", argv[1::2], env={})
    wanted = best_settings(
        load_settings(tiny_project / "mlflow.yaml", env={}),
        StudyResult("TEST", "s", "x", "r", best_params=params),
    )
    assert (kept.features, kept.model, kept.training) == (
        wanted.features,
        wanted.model,
        wanted.training,
    )
    assert kept.model.units == 6 and kept.features.scaler == "standard"
