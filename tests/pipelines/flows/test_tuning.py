"""The tuning flow end to end: study, retrain the best, register, the same promotion gate."""

from __future__ import annotations

import math

import pytest

from tests.pipelines.conftest import NO_BACKTEST
from tests.pipelines.tuning.conftest import TUNING

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_tuned_version_goes_through_the_promotion_gate(trained_settings):
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_settings
    from pipelines.flows.tuning import tuning_flow
    from pipelines.promotion import decide

    project = trained_settings.base_dir  # test-TEST v1, trained by the training flow
    # No candidate has the configured 4 units, so retraining the configured settings instead
    # of the best ones shows in the retrained run's parameters.
    space = TUNING.replace("trials: 3", "trials: 2").replace(
        "model.units: {low: 2, high: 6, step: 2}", "model.units: {choices: [2, 6]}"
    )
    (project / "mlflow.yaml").write_text((project / "mlflow.yaml").read_text() + space)
    settings = load_settings(project / "mlflow.yaml", list(NO_BACKTEST), env={})
    tracking.connect(settings)
    assert tracking.champion("test-TEST", "champion").version == "1"

    summary = tuning_flow(settings=settings, tickers=["TEST"])
    assert summary.ok, summary.render()
    [result] = summary.results
    final = result.final
    assert final.version == "2"
    tags = tracking.get_version("test-TEST", "2").tags
    # the champion (v1) was re-scored on the tuned version's test window, as for any challenger
    champion_score = float(tags["promotion.champion_score"])
    assert math.isfinite(champion_score)
    expected = decide(
        settings.registry.promotion,
        final.metrics["test_rmse"],
        final.metrics["test_rmse"],
        final.metrics["naive_rmse"],
        champion_score,
    )
    assert tags[tracking.TAG_PROMOTED] == str(expected.promote).lower()
    assert tags[tracking.TAG_REASON] == expected.reason == final.reason
    assert (tracking.champion("test-TEST", "champion").version == "2") == expected.promote

    # the retrained run is the best configuration's, linked to the study's parent run
    assert result.study.best_params["model.units"] != settings.model.units == 4
    client_run = MlflowClient().get_run(final.run_id)
    for key, value in result.study.best_params.items():
        assert client_run.data.params[key] == str(value)
    assert client_run.data.tags[tracking.TAG_TUNED_BY] == result.study.parent_run_id
    parent = MlflowClient().get_run(result.study.parent_run_id)
    assert parent.data.tags[tracking.TAG_TUNED_RUN] == final.run_id
    assert parent.data.tags["tuning.registered_version"] == "2"

    text = summary.render()
    assert "best configuration: " in text and "best validation RMSE" in text
    assert "test RMSE" in text and "vs naive" in text
    assert ("CHAMPION" if expected.promote else "not promoted") in text


def test_tuning_deployment_only_with_a_cron(tiny_settings):
    from pipelines.serve import TUNING_DEPLOYMENT, deployments

    names = [d.name for d in deployments(tiny_settings, "mlflow.yaml")]
    assert TUNING_DEPLOYMENT not in names
    weekly = tiny_settings.model_copy(
        update={"tuning": tiny_settings.tuning.model_copy(update={"cron": "0 3 * * 6"})}
    )
    [tune] = [d for d in deployments(weekly, "mlflow.yaml") if d.name == TUNING_DEPLOYMENT]
    assert tune.schedules[0].schedule.cron == "0 3 * * 6"


@pytest.mark.slow  # a fresh process and a fresh project: Prefect's own server, a study, training
def test_tune_command_from_the_project_folder(tiny_project):
    """`python -m pipelines tune` in a folder of its own: study, retrained best, summary."""
    import os
    import subprocess
    import sys

    (tiny_project / "mlflow.yaml").write_text(
        (tiny_project / "mlflow.yaml").read_text() + TUNING.replace("trials: 3", "trials: 2")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(tiny_project / ".prefect")
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "tune", "--config", "mlflow.yaml", "--trials", "2"],
        cwd=tiny_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ingested" in out.stdout  # a fresh project: the configured sources first
    assert "study tune-TEST (2 trials" in out.stdout
    assert "best configuration: " in out.stdout and "vs naive" in out.stdout
    assert "registered test-TEST version 1: CHAMPION" in out.stdout
    assert (tiny_project / ".optuna" / "studies.journal").is_file()
