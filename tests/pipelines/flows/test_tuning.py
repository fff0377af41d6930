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


def test_without_a_configured_ticker_the_sources_are_stored_and_their_tickers_searched(
    tiny_project,
):
    from pipelines.flows.tuning import tuning_flow
    from pipelines.store import PriceStore
    from tests.pipelines.tuning.conftest import tuning_settings

    settings = tuning_settings(
        tiny_project, TUNING.replace("trials: 3", "trials: 1"), ("data.ticker=null", *NO_BACKTEST)
    )
    assert settings.data.ticker is None and not PriceStore(settings.store_path).tickers()
    summary = tuning_flow(settings=settings)
    assert PriceStore(settings.store_path).tickers() == ["TEST"]  # from prices/TEST.csv
    [result] = summary.results
    assert result.study.ticker == "TEST" and result.study.counts["complete"] == 1
    assert "ingested prices/TEST.csv" in summary.render()


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
    """`python -m pipelines tune` in a folder of its own: study, retrained best, summary; on
    stderr only progress lines. (A spawned worker's start-up lines are checked by the Ctrl-C
    tune test, where both workers are sure to have trained: here this process may run every
    trial before a worker starts.)"""
    import subprocess
    import sys

    from tests.user_path import assert_only_progress, user_env

    tuning = TUNING.replace("trials: 3", "trials: 2")
    (tiny_project / "mlflow.yaml").write_text((tiny_project / "mlflow.yaml").read_text() + tuning)
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "tune", "--config", "mlflow.yaml", "--trials", "2"],
        cwd=tiny_project,
        env=user_env(keep_pythonpath=True),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert_only_progress(out)
    assert "ingested" in out.stdout  # a fresh project: the configured sources first
    assert "study tune-TEST (2 trials" in out.stdout
    assert "best configuration: " in out.stdout and "vs naive" in out.stdout
    assert "retraining (retrain, serve, run) trains mlflow.yaml's configuration" in out.stdout
    assert "registered test-TEST version 1: CHAMPION" in out.stdout
    assert (tiny_project / ".optuna" / "studies.journal").is_file()


@pytest.mark.slow  # three `tune` calls in fresh processes, each a study and a retraining
def test_tune_again_continues_only_its_own_settings_and_registers_a_best_once(tiny_project):
    """`tune` twice more on the same study: other fixed settings or another space are refused
    in one line; Optuna's importance warnings stay off stderr; an unchanged best on unchanged
    data is not registered again."""
    import sys
    from pathlib import Path

    import optuna
    from mlflow import MlflowClient
    from optuna.distributions import IntDistribution

    from pipelines import tracking
    from pipelines.config import load_settings
    from pipelines.store import PriceStore
    from pipelines.tuning import check_study
    from pipelines.tuning.storage import open_storage
    from tests.pipelines.tuning.conftest import tuning_settings
    from tests.user_path import assert_only_progress, cli, user_env

    settings = tuning_settings(tiny_project, TUNING, ())
    bin_ = Path(sys.executable).with_name("lstm-pipeline")
    env = user_env(keep_pythonpath=True)

    def tune(*args: str):
        return cli(bin_, "tune", "--trials", "1", *args, cwd=tiny_project, env=env, timeout=600)

    first = tune()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "registered test-TEST version 1" in first.stdout

    # Trials made under another space (a study from before settings were recorded) leave
    # some parameter's "regime" with one trial: Optuna then warns once per parameter when it
    # computes importances. This one also becomes the best (an RMSE of 0 cannot be beaten).
    journal = tiny_project / ".optuna" / "studies.journal"
    study = optuna.load_study(study_name="tune-TEST", storage=open_storage(settings))
    # the digest of the rows it began on: the store's manifest's, which replaced days change
    manifest = PriceStore(settings.store_path).manifest("TEST")
    assert study.user_attrs["data_digest"] == manifest.digest
    baseline = study.trials[0]
    other_space = {**baseline.distributions, "features.lookback": IntDistribution(3, 6)}
    study.add_trial(
        optuna.trial.create_trial(params=baseline.params, distributions=other_space, value=0.0)
    )
    best = len(study.trials) - 1
    second = tune()
    assert second.returncode == 0, second.stderr[-3000:]
    assert_only_progress(second)  # no `UserWarning: Some regimes for parameter ...`
    assert "parameter importances from" in second.stderr and "may be inaccurate" in second.stderr
    assert "registered test-TEST version 2" in second.stdout  # a new best: retrained

    third = tune()  # whatever its one trial scores, trial `best` stays the best
    assert third.returncode == 0, third.stderr[-3000:]
    assert (
        f"not retrained: best trial #{best} and the data are unchanged since version 2"
        in third.stdout
    ), third.stdout
    assert "registered test-TEST version" not in third.stdout
    tracking.connect(settings)
    versions = MlflowClient().search_model_versions("name = 'test-TEST'")
    assert sorted(int(v.version) for v in versions) == [1, 2]

    # Other fixed settings, or another space: one line each, exit 2, the study untouched.
    journal_bytes = journal.read_bytes()
    runs = len(MlflowClient().search_runs([tracking.connect(settings)], max_results=1000))
    refused = [
        tune("--set", "training.epochs=2"),
        tune("--set", "tuning.space={features.lookback: {low: 3, high: 10}}"),
    ]
    needles = ["training.epochs 1 (now 2)", "tuning.space features.lookback 3..8 (now 3..10)"]
    for out, needle in zip(refused, needles, strict=True):
        assert out.returncode == 2, out.stderr[-3000:]
        [line] = out.stderr.strip().splitlines()
        assert needle in line and "study tune-TEST" in line, line
        assert "--set tuning.study=tune-{ticker}-" in line and "optuna delete-study" in line
    assert journal.read_bytes() == journal_bytes
    assert len(MlflowClient().search_runs([tracking.connect(settings)], max_results=1000)) == runs

    # the study name offered is a valid setting, and names a study of the new settings' own
    offered = refused[0].stderr.split("--set ")[1].split(")")[0]
    other = load_settings(tiny_project / "mlflow.yaml", ["training.epochs=2", offered], env={})
    assert other.tuning.study_for("TEST") != "tune-TEST"
    check_study(other, "TEST")  # nothing recorded under that name: no refusal
    # a space beyond the stored series is refused before the study (a stored configured ticker)
    wide = tune("--set", "tuning.space={features.lookback: {low: 3, high: 100}}")
    assert wide.returncode == 2 and "allow a lookback of at most" in wide.stderr, wide.stderr

    # New days stored: the study goes on with the prices it began on (its trials compare), and
    # the best is retrained on every stored day. A day replaced before that: one line, exit 2.
    from tests.pipelines.conftest import price_frame, write_prices

    write_prices(tiny_project / "prices" / "TEST.csv", price_frame(130))
    assert (
        cli(
            bin_, "ingest", "prices/TEST.csv", "--ticker", "TEST", cwd=tiny_project, env=env
        ).returncode
        == 0
    )
    newer = tune()
    assert newer.returncode == 0, newer.stderr[-3000:]
    assert "continues on the prices it began on, through 2020-06-16" in newer.stderr, newer.stderr
    assert "the 10 day(s) stored since are not used by its trials" in newer.stderr
    assert "registered test-TEST version 3" in newer.stdout
    replaced = price_frame(130)
    replaced.loc[5, ["Open", "High", "Low", "Close"]] *= 1.01  # a day corrected
    write_prices(tiny_project / "prices" / "TEST.csv", replaced)
    args = ("ingest", "prices/TEST.csv", "--ticker", "TEST", "--replace")
    assert cli(bin_, *args, cwd=tiny_project, env=env).returncode == 0
    trials = len(optuna.load_study(study_name="tune-TEST", storage=open_storage(settings)).trials)
    refused = tune()
    assert refused.returncode == 2, refused.stderr[-3000:]
    [line] = refused.stderr.strip().splitlines()
    assert "began on TEST's prices through 2020-06-16" in line and "replaced since" in line, line
    study = optuna.load_study(study_name="tune-TEST", storage=open_storage(settings))
    assert len(study.trials) == trials
