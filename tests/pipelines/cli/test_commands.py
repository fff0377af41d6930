"""`init`, `run` and `retrain` end to end, a new user's path, and how a command ends:
Ctrl-C, and a Prefect server that does not start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import BIN, _cli, project_beside
from tests.pipelines.conftest import price_frame, write_prices
from tests.user_path import TINY, assert_only_progress, checkout_state, cli, project_state, user_env


@pytest.mark.slow  # the CLI in subprocesses: CI runs it
def test_init_refuses_to_overwrite_and_run_names_ingest_for_an_unstored_ticker(tmp_path):
    env = user_env(keep_pythonpath=True)
    assert cli(BIN, "init", "p", cwd=tmp_path, env=env, timeout=120).returncode == 0
    project = tmp_path / "p"
    before = (project / "mlflow.yaml").read_bytes()
    again = cli(BIN, "init", cwd=project, env=env, timeout=120)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr and (project / "mlflow.yaml").read_bytes() == before
    # `run` alone trains data.sources: init's names none (no file the project lacks).
    out = cli(BIN, "run", cwd=project, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        f"error: {project.resolve() / 'mlflow.yaml'}: data.sources: none configured; give "
        "price files (run FILE...) or a stored ticker (run --ticker T)\n"
    )
    # `tune` checks the same before any flow runs: one line, no traceback, nothing written.
    out = cli(BIN, "tune", cwd=project, env=env, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "data.sources" in out.stderr and "tune --ticker T" in out.stderr
    out = cli(BIN, "tune", "--ticker", "ACME", cwd=project, env=env, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no prices stored for ticker 'ACME'" in out.stderr
    assert not (project / ".optuna").exists() and not (project / "mlflow.db").exists()
    # From a subfolder, found through the parents.
    out = cli(BIN, "run", "--ticker", "ACME", cwd=project / "data", env=env, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        f"error: no prices stored for ticker 'ACME' in {project.resolve() / 'data' / 'store'}: "
        "store them first with: lstm-pipeline ingest FILE --ticker ACME"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_init_where_no_folder_can_be_made_is_one_line_exit_2(tmp_path, capsys):
    assert main(["init", "/proc/forbidden"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: cannot create a project in /proc/forbidden: No such file or directory")
    # A failure half-way (data/ is a file, so data/store cannot be made): one line naming
    # the path, and the mlflow.yaml written before it is gone again.
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "data").write_text("not a folder\n", encoding="utf-8")
    assert main(["init", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: cannot create a project in {tmp_path / 'p'}: Not a directory "
        f"({tmp_path / 'p' / 'data' / 'store'})"
    )
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["data"]


def test_status_in_a_project_without_mlflow_data_creates_nothing(tmp_path):
    # README: `status` only reads. MLflow's first use would create mlflow.db (and the lock
    # beside it, .locks/): a project that has none gets none from status.
    prices = write_prices(tmp_path / "downloads" / "acme.csv", price_frame(120))
    assert main(["init", str(tmp_path / "acme")]) == 0
    project = tmp_path / "acme"
    cfg = str(project / "mlflow.yaml")
    assert main(["ingest", str(prices), "--ticker", "ACME", "--config", cfg]) == 0

    def listing() -> list[str]:
        return sorted(str(p.relative_to(project)) for p in project.rglob("*"))

    before = listing()
    assert "mlflow.db" not in before
    out = _cli(project, "status")
    assert out.returncode == 0, out.stderr[-3000:]
    assert listing() == before
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == "ACME", out.stdout
    assert "untrained" in lines[1], out.stdout


@pytest.mark.slow
def test_new_users_path_from_a_folder_of_its_own(tmp_path):
    """README's path with the installed command: init, ingest, run, forecast, models serve."""
    import json
    import urllib.request

    from pipelines.servers import start_model_server

    env = user_env(keep_pythonpath=True)  # PYTHONPATH: a worktree's code over the editable one
    before = checkout_state()
    prices = write_prices(tmp_path / "downloads" / "acme.csv", price_frame(120))
    assert cli(BIN, "init", "acme", cwd=tmp_path, env=env).returncode == 0
    project = tmp_path / "acme"
    out = cli(BIN, "ingest", str(prices), "--ticker", "ACME", cwd=project / "data", env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    out = cli(BIN, "run", "--ticker", "ACME", *TINY, cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CHAMPION" in out.stdout, out.stdout
    assert f"sqlite:///{project.resolve() / 'mlflow.db'}" in out.stdout  # the MLflow UI line
    assert_only_progress(out)
    for step in ("epoch 1/1", "evaluating on", "backtest:", "logging the model"):
        assert step in out.stderr, step

    out = cli(BIN, "forecast", "--ticker", "ACME", cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_only_progress(out)
    assert (project / "data" / "forecasts" / "ACME.parquet").is_file()
    assert project_state(project) == []
    assert checkout_state() == before

    # `mlflow models serve` on the champion, from the project folder, as the README says.
    server = start_model_server(
        "models:/lstm-ACME@champion", "sqlite:///mlflow.db", project, timeout=300
    )
    try:
        frame = price_frame(120).tail(30)  # Date, Open, High, ... as downloaded
        frame.columns = [c.lower() for c in frame.columns]
        body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)})
        request = urllib.request.Request(
            f"{server.url}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as resp:
            predictions = json.loads(resp.read())["predictions"]
    finally:
        server.stop()
    assert len(predictions) == 1 and predictions[0]["forecast"] > 0


# ---------------------------------------------------------------- run and retrain


@pytest.mark.parametrize("calendar", ["XNYS", "XSHG"])
def test_demo_in_an_init_project_trains_the_bundled_sample(tmp_path, monkeypatch, capsys, calendar):
    """An `init` project has no data of its own: the demo takes the sample the package ships,
    on New York's calendar whatever the project's (a user's test: in an XSHG project it
    refused the sample's 2010-02-16, a file it wrote itself); a demo that fails leaves no
    `outputs/` behind."""
    from pipelines import flows
    from pipelines.cli import commands
    from pipelines.errors import PipelineError

    class Started(PipelineError):
        pass

    seen = {}

    @contextlib.contextmanager
    def fan_out(settings, flow):
        def training(**kwargs):  # the demo's first flow: its input, then stop
            seen.update(kwargs)
            [head] = kwargs["files"]
            seen["lines"] = len(Path(head).read_text(encoding="utf-8").splitlines())
            raise Started("stopped after the training flow's start")

        yield training

    assert main(["init", str(tmp_path / "p")]) == 0
    project = (tmp_path / "p").resolve()
    config = project / "mlflow.yaml"
    text = config.read_text(encoding="utf-8")
    assert "  calendar: XNYS " in text
    config.write_text(text.replace("  calendar: XNYS ", f"  calendar: {calendar} "), "utf-8")
    monkeypatch.setattr(commands, "_before_flows", lambda *a, **k: None)
    monkeypatch.setattr(flows, "fan_out", fan_out)
    capsys.readouterr()
    assert main(["demo", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    said = (
        "the bundled sample is New York prices: the demo uses data.calendar XNYS for it "
        "(this project's is XSHG)\n"
        if calendar == "XSHG"
        else ""
    )
    assert out == f"{said}== 1. training flow on msft.csv up to 2017-10-13\n", (out, err)
    assert err == "error: stopped after the training flow's start\n"
    assert seen["ticker"] == "MSFT"
    assert seen["settings"].data.calendar == "XNYS"
    [head] = seen["files"]
    assert head == str(project / "outputs" / "demo" / "MSFT.csv")
    assert seen["lines"] == 1 + 1980 - 20
    assert not (project / "outputs").exists()  # the failed demo made it, and removed it


@pytest.mark.usefixtures("prefect_harness")
def test_run_params_name_the_files_it_read_and_none_when_trained_from_the_store(
    trained_settings,
):
    """A run's `data.sources`/`data.ticker` params are what it read, not the configured
    defaults, and every run has the same param names."""
    from mlflow import MlflowClient

    from pipelines import tracking

    project = trained_settings.base_dir
    cfg = ["--config", str(project / "mlflow.yaml"), "--set", "evaluation.backtest_folds=0"]
    assert main(["run", "--ticker", "TEST", *cfg]) == 0
    other = project / "OTHER.csv"
    write_prices(other, price_frame(120, seed=3))
    assert main(["run", str(other), *cfg]) == 0
    tracking.connect(trained_settings)
    client = MlflowClient()

    def params(name: str, version: str) -> dict[str, str]:
        return client.get_run(client.get_model_version(name, version).run_id).data.params

    first = params("test-TEST", "1")  # `run` of the configured sources (prices/TEST.csv)
    stored = params("test-TEST", "2")  # `run --ticker TEST`: read no file
    read = params("test-OTHER", "1")  # `run OTHER.csv`: ticker from the file name
    # (the copy's path: copying the project re-points the store's absolute paths)
    assert (first["data.sources"], first["data.ticker"]) == (
        str(project / "prices/TEST.csv"),
        "TEST",
    )
    assert (stored["data.sources"], stored["data.ticker"]) == ("", "")
    assert (read["data.sources"], read["data.ticker"]) == (str(other), "")
    assert set(first) == set(stored) == set(read)


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_run_trains_every_ticker_named(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    for ticker in ("AAA", "BBB"):
        assert main(["ingest", src, "--ticker", ticker, "--config", cfg]) == 0
    assert main(["run", src, "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 2
    assert "give it once" in capsys.readouterr().err
    assert main(["run", "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "registered test-AAA version 1" in out and "registered test-BBB version 1" in out


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_prints_the_mlflow_ui_line_only_when_a_run_exists(
    trained_settings, capsys, monkeypatch
):
    """A training that fails before its MLflow run starts (here: splitting the rows the
    decision read fails) leaves no run to look at in the UI."""
    from pipelines import tasks

    def broken(frame, settings):
        raise RuntimeError("no split today")

    project = trained_settings.base_dir
    write_prices(project / "data" / "incoming" / "NEW.csv", price_frame(120, seed=2))
    monkeypatch.setattr(tasks, "split", broken)
    capsys.readouterr()
    assert main(["retrain", "--config", str(project / "mlflow.yaml")]) == 1
    out = capsys.readouterr().out
    assert "NEW: retrain (no model yet)" in out
    assert "NEW: FAILED: RuntimeError: no split today" in out
    assert "MLflow UI" not in out


# ---------------------------------------------------------------- promotion


@pytest.mark.slow  # a training in a subprocess
def test_a_champion_that_cannot_be_rescored_keeps_the_alias(trained_settings):
    from pipelines import tracking

    project = trained_settings.base_dir
    [files] = (project / "mlartifacts").glob("models/m-*")  # v1's model, the champion
    shutil.rmtree(files)
    out = _cli(project, "run", "--ticker", "TEST", "--set", "evaluation.backtest_folds=0")
    assert out.returncode == 0, (out.stdout, out.stderr)
    [line] = [x.strip() for x in out.stdout.splitlines() if "registered test-TEST" in x]
    assert line.startswith(
        "registered test-TEST version 2: not promoted (refused: champion v1 could not be "
        "re-scored ("
    ), line
    assert line.endswith(
        "so it keeps the alias; to promote this version anyway: "
        "lstm-pipeline promote --ticker TEST --version 2)"
    ), line
    assert "ERROR" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    tracking.connect(trained_settings)
    assert tracking.champion("test-TEST", "champion").version == "1"
    v2 = tracking.get_version("test-TEST", "2").tags
    assert (
        v2[tracking.TAG_PROMOTED] == "false" and "could not be re-scored" in v2["promotion.reason"]
    )


def _registry(first: Path) -> tuple[dict, dict]:
    """test-TEST's aliases and every version, as a fresh client of `first`'s store sees them."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{first / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'test-TEST'")
    aliases = client.get_registered_model("test-TEST").aliases
    return {a: str(v) for a, v in aliases.items()}, {
        str(v.version): (v.tags, v.description, v.source, v.run_id, v.aliases) for v in versions
    }


def _project_id(project: Path) -> str:
    return (project / ".lstm-project").read_text(encoding="utf-8").strip()


def _challenged_on_scores(first: Path, version: str, before: tuple[dict, dict]) -> None:
    """`version` was compared with champion v1 on scores (not refused for whose v1 is) and
    the alias went where that decision says; v1 is as it was, but for a lost alias's tags."""
    aliases, versions = _registry(first)
    tags = versions[version][0]
    assert tags["promotion.reason"].startswith(("promoted: test_rmse", "refused: test_rmse")), tags
    assert "promotion.champion_score" in tags, tags
    won = tags["promotion.promoted"] == "true"
    assert aliases == {"champion": version if won else "1"}, (aliases, tags)
    if not won:
        assert versions["1"] == before[1]["1"]


@pytest.mark.slow  # trainings in subprocesses
def test_a_second_project_does_not_challenge_another_projects_champion(trained_settings, tmp_path):
    """A user's test: two projects on one tracking store, the same ticker (so the same
    registered model), other prices. The second's `run` re-scored the first's champion on its
    own prices and could take the alias from it, replacing the model the first serves."""
    first = trained_settings.base_dir
    other = project_beside(first, tmp_path / "other")
    # its prices climb steadily: a challenger trained on them beats by far the first's
    # champion, trained on a random walk, re-scored on them (it took the alias before)
    prices = price_frame(120, seed=7)
    noise = np.random.default_rng(7).normal(0, 0.001, len(prices))
    opens = 20 * np.exp(np.cumsum(0.01 + noise))
    prices["Open"], prices["Close"] = opens.round(4), (opens * 1.002).round(4)
    prices["High"], prices["Low"] = (opens * 1.01).round(4), (opens * 0.99).round(4)
    write_prices(other.parent / "prices" / "TEST.csv", prices)

    aliases, versions = _registry(first)
    assert (aliases, list(versions)) == ({"champion": "1"}, ["1"])
    theirs = _project_id(first)
    assert versions["1"][0]["lstm.project"] == theirs  # the first project's own
    assert _cli(other.parent, "ingest", "prices/TEST.csv").returncode == 0
    status = _cli(other.parent, "status")  # as it is before: v1 is another project's
    assert status.returncode == 0, status.stderr
    foreign = status.stdout.splitlines()[1]
    assert foreign.split()[-4] == "FOREIGN", foreign
    assert not (other.parent / ".lstm-project").exists()  # status only reads
    out = _cli(other.parent, "run", "--ticker", "TEST", "--set", "evaluation.backtest_folds=0")
    # a refused promotion is not a failed run: exit 0, as the promotion gate's refusals
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert_only_progress(out)
    ours = _project_id(other.parent)
    assert ours != theirs
    why = (
        f"test-TEST v1 is another project's model: its lstm.project tag is {theirs}, this "
        f"project's id is {ours} ({other.parent / '.lstm-project'}), so test-TEST v2, trained "
        "here, does not challenge it and is not promoted: give this project model names of its "
        'own with registry.model_name (e.g. "myproject-{ticker}") and train them: '
        "lstm-pipeline run --ticker TEST"
    )
    # the first project's champion and its version exactly as they were; v2 kept, refused
    after_aliases, after = _registry(first)
    assert after_aliases == aliases and after["1"] == versions["1"], out.stdout
    assert [x[9:] for x in out.stderr.splitlines() if "another project's" in x] == [f"TEST: {why}"]
    [line] = [x.strip() for x in out.stdout.splitlines() if "registered test-TEST" in x]
    assert line == f"registered test-TEST version 2: not promoted (refused: {why})", line
    tags = after["2"][0]
    assert (tags["promotion.promoted"], tags["promotion.reason"]) == ("false", f"refused: {why}")
    assert tags["lstm.project"] == ours
    assert "promotion.champion_score" not in tags
    assert after["2"][1].startswith("Not promoted: test_rmse "), after["2"][1]
    assert ", not compared with champion v1, naive forecast RMSE " in after["2"][1]
    # status in the second project: v1 is still FOREIGN there, its own refusal the last word
    out = _cli(other.parent, "status")
    assert out.returncode == 0, out.stderr
    header, row, *below = out.stdout.splitlines()
    assert row == foreign
    assert f"TEST last decision: v2 refused: {why}" in below, below
    # the first project, told another calendar (null: its New York days are all weekdays):
    # its own champion cannot forecast on it, so sets no bar: one trained with it that passes
    # the guards replaces it (only the second project's version is refused for whose v1 is)
    weekdays = ("--set", "data.calendar=null", "--set", "evaluation.backtest_folds=0")
    out = _cli(first, "run", "--ticker", "TEST", *weekdays)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "another project's" not in out.stderr
    aliases, versions = _registry(first)
    tags = versions["3"][0]
    assert tags["promotion.reason"].startswith(
        "promoted: passes the guards, and champion v1 was trained with data.calendar XNYS, "
        "not this project's null, so it cannot forecast here and is not compared (test_rmse="
    ), tags
    assert "promotion.champion_score" not in tags, tags
    assert aliases == {"champion": "3"}, aliases
    assert versions["3"][1].startswith("Promoted to champion: test_rmse "), versions["3"][1]
    assert ", not compared with champion v1, naive forecast RMSE " in versions["3"][1]
    assert versions["1"][0]["champion.replaced_by"] == "3", versions["1"][0]


def _refused_by_hand(out: subprocess.CompletedProcess[str], first: Path, before, why: str):
    """A promote or rollback refused: one line naming why, exit 2, the registry unchanged."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr == f"error: {why}\n", out.stderr
    assert _registry(first) == before


@pytest.mark.slow  # the CLI in subprocesses
def test_promote_and_rollback_by_hand_respect_whose_model_it_is(trained_settings, tmp_path):
    """A user's test: two projects on one tracking store. A hand in the second project took
    the first's champion without a word (its forecasts then refused); a hand gave the alias
    to a version `forecast` refuses; the first's `status` showed the second's refusal as its
    last decision; and a promotion by hand never said the gate had refused the version."""
    import uuid

    from mlflow import MlflowClient

    from pipelines import tracking

    first = trained_settings.base_dir
    other = project_beside(first, tmp_path / "other").parent
    ours, theirs = _project_id(first), uuid.uuid4().hex
    (other / ".lstm-project").write_text(f"{theirs}\n", encoding="utf-8")
    uri = f"sqlite:///{first / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # MLflow resolves a `models:/m-...` source through the global tracking URI: this copy's,
    # not the session's original project (whose artifacts a load would then write to)
    tracking.connect(trained_settings)
    v1 = client.get_model_version("test-TEST", "1")
    gate = "test_rmse 2 does not beat champion's 1 on the same test window"

    def version(project: str, reason: str, at: str) -> None:
        tags = {"lstm.project": project, "promotion.promoted": "false"}
        tags |= {"promotion.reason": f"refused: {reason}", "promotion.decided_at": at}
        client.create_model_version("test-TEST", v1.source, v1.run_id, tags=tags)

    version(theirs, "the second project's own", "2999-01-02T00:00:00.000000Z")  # v2, the latest
    version(ours, gate, "2999-01-01T00:00:00.000000Z")  # v3, this project's, the gate refused it
    before = _registry(first)
    assert before[0] == {"champion": "1"}

    # status in the first project: its own last decision, not the second project's refusal
    out = _cli(first, "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f"TEST last decision: v3 refused: {gate}", out.stdout
    out = _cli(first, "status", "--json")
    assert json.loads(out.stdout)[0]["last_decision"] == f"v3 refused: {gate}", out.stdout

    # the second project does not take the first's champion
    taken = (
        f"test-TEST v1 is another project's champion (its lstm.project tag is {ours}, this "
        f"project's id is {theirs} ({other / '.lstm-project'})), so the alias stays on it: "
        "promote in that project, or give this project model names of its own with "
        'registry.model_name (e.g. "myproject-{ticker}") and train them: lstm-pipeline run '
        "--ticker TEST"
    )
    out = _cli(other, "promote", "--ticker", "TEST", "--version", "2", "--reason", "ours")
    _refused_by_hand(out, first, before, taken)

    # the first project does not promote a version forecast refuses: the reason status gives
    out = _cli(first, "promote", "--ticker", "TEST", "--version", "2")
    _refused_by_hand(
        out,
        first,
        before,
        f"test-TEST v2 is another project's model: its lstm.project tag is {theirs}, this "
        f"project's id is {ours} ({first / '.lstm-project'}): give this project model names of "
        'its own with registry.model_name (e.g. "myproject-{ticker}") and train them: '
        "lstm-pipeline run --ticker TEST",
    )
    xshg = ("--set", "data.calendar=XSHG")
    out = _cli(first, "promote", "--ticker", "TEST", "--version", "3", *xshg)
    calendar = (
        "test-TEST v{} was trained on these prices with data.calendar XNYS, this project's is XSHG"
    )
    assert out.returncode == 2 and out.stderr.startswith(f"error: {calendar.format(3)}: ")
    _refused_by_hand(out, first, before, out.stderr[7:-1])

    # promoted by hand, the gate's refusal said
    out = _cli(first, "promote", "--ticker", "TEST", "--version", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == [
        "test-TEST: version 3 is now champion (was 1)",
        f"(the promotion gate had refused it: {gate})",
    ]
    _first_forecast_of(out, first, "3")
    before = _registry(first)
    assert before[0] == {"champion": "3"}

    # rollback: not in the second project (v3 is the first's), not onto a refused calendar
    out = _cli(other, "rollback", "--ticker", "TEST")
    _refused_by_hand(out, first, before, taken.replace("v1 is", "v3 is"))
    out = _cli(first, "rollback", "--ticker", "TEST", *xshg)
    assert out.returncode == 2 and out.stderr.startswith(f"error: {calendar.format(1)}: ")
    _refused_by_hand(out, first, before, out.stderr[7:-1])
    out = _cli(first, "rollback", "--ticker", "TEST")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "test-TEST: rolled back champion from v3 to v1"
    _first_forecast_of(out, first, "1")
    assert _registry(first)[0] == {"champion": "1"}
    # the second project's v2 took the alias from the first's v1, as a hand could before:
    # the first takes it back (the second could not: v1 is not its model)
    client.set_registered_model_alias("test-TEST", "champion", "2")
    client.set_model_version_tag("test-TEST", "2", "champion.replaced", "1")
    out = _cli(first, "rollback", "--ticker", "TEST")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "test-TEST: rolled back champion from v2 to v1"
    assert _registry(first)[0] == {"champion": "1"}


def _first_forecast_of(out: subprocess.CompletedProcess[str], project: Path, version: str) -> None:
    """A champion set by hand forecasts at once, as one a run promotes: its row is in the log."""
    said = [line for line in out.stdout.splitlines() if "forecast written to" in line]
    assert len(said) == 1 and f"(test-TEST v{version}, made on " in said[0], out.stdout
    latest = pd.read_parquet(project / "data" / "forecasts" / "TEST.parquet")
    assert set(latest["version"].astype(str)) == {version}, latest
    log = pd.read_parquet(project / "data" / "forecasts" / "log")
    assert version in set(log["version"].astype(str)), log


@pytest.mark.slow  # trainings in subprocesses
def test_a_projects_own_champion_is_challenged_after_its_stored_days_are_corrected(
    trained_settings,
):
    """A user's test: `ingest --replace` corrects stored days the champion was trained on.
    The champion is still this project's own (its lstm.project tag): `status` and `forecast`
    take it as before, and the retrained version is compared with it on scores. Before, it
    looked like another project's (other prices): FOREIGN, refused by `forecast`, and its
    retrained versions were never promoted."""
    project = trained_settings.base_dir
    before = _registry(project)
    assert before[1]["1"][0]["lstm.project"] == _project_id(project)
    # the last three stored days, each open corrected by a cent
    fixed = price_frame(120).iloc[-3:].copy()
    fixed["Open"] = (fixed["Open"] + 0.01).round(4)
    write_prices(project / "fixes" / "TEST.csv", fixed)
    out = _cli(project, "ingest", "fixes/TEST.csv", "--replace")
    assert out.returncode == 0, out.stderr
    assert "TEST +0 new, 3 replaced" in out.stdout, out.stdout
    out = _cli(project, "status")
    assert out.returncode == 0, out.stderr
    header, row, *below = out.stdout.splitlines()
    assert row.split()[-4] == "ok", out.stdout
    out = _cli(project, "forecast", "--ticker", "TEST")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "test-TEST v1" in out.stdout, out.stdout
    out = _cli(project, "run", "--ticker", "TEST", "--set", "evaluation.backtest_folds=0")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert_only_progress(out)
    assert "not this project's" not in out.stdout + out.stderr
    assert "does not challenge" not in out.stdout + out.stderr
    _challenged_on_scores(project, "2", before)
    assert _registry(project)[1]["2"][0]["lstm.project"] == _project_id(project)


def test_rollback_to_a_deleted_version_is_one_line_exit_2_and_changes_nothing(
    trained_settings, capsys
):
    from mlflow import MlflowClient

    from pipelines import tracking

    cfg = ["--ticker", "TEST", "--config", str(trained_settings.base_dir / "mlflow.yaml")]
    tracking.connect(trained_settings)
    v1 = tracking.get_version("test-TEST", "1")
    source = MlflowClient().get_model_version("test-TEST", "1").source
    tracking.register("test-TEST", source, v1.run_id, {"ticker": "TEST"})
    tracking.register("test-TEST", source, v1.run_id, {"ticker": "TEST"})
    assert main(["promote", "--version", "2", *cfg]) == 0
    # v2 replaced v1; the user deletes v1 in the MLflow UI.
    MlflowClient().delete_model_version("test-TEST", "1")
    before = {v.version: v.tags for v in tracking.versions("test-TEST")}
    capsys.readouterr()
    assert main(["rollback", *cfg]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "error: test-TEST v2 replaced v1, which no longer exists (deleted?): promote another "
        "version with lstm-pipeline promote --ticker TEST --version N (versions: 2, 3)\n"
    ), err
    assert tracking.champion("test-TEST", "champion").version == "2"
    assert {v.version: v.tags for v in tracking.versions("test-TEST")} == before


# ---------------------------------------------------------------- Ctrl-C, Prefect's server


@pytest.mark.slow  # a training in a subprocess, interrupted
@pytest.mark.parametrize("signalled", ["group", "command"])
def test_ctrl_c_during_run_is_one_line_exit_130_and_a_failed_mlflow_run(tmp_path, signalled):
    """Ctrl-C while `run` trains: after the progress lines only `interrupted` (no Prefect
    crash lines, no traceback), exit code 130, the MLflow run FAILED, no process left. A
    terminal signals its whole foreground process group (Prefect's temporary API server
    included); `kill -INT` signals the command alone."""
    import signal

    from mlflow.tracking import MlflowClient

    from tests.pipelines.conftest import new_tiny_project
    from tests.user_path import PROGRESS_LINE, Started

    project = new_tiny_project(tmp_path / "project")
    with Started(
        [str(BIN), "run", "--set=training.epochs=1000", "--set=evaluation.backtest_folds=0"],
        cwd=project,
        env=user_env(keep_pythonpath=True),
        until=" epoch 1/1000 ",
    ) as cmd:
        cmd.wait_seen(300)
        if signalled == "group":
            os.killpg(cmd.pid, signal.SIGINT)
        else:
            cmd.proc.send_signal(signal.SIGINT)
        code = cmd.finish(timeout=300)
    lines = cmd.lines
    err = "\n".join(lines)
    assert code == 130, err
    assert "Crash detected" not in err and "Traceback" not in err, err
    assert [line for line in lines if not PROGRESS_LINE.match(line)] == ["interrupted"], err
    assert lines[-1] == "interrupted"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    with pytest.raises(ProcessLookupError):  # Prefect's server stopped with the command
        os.killpg(cmd.pid, 0)


def _trials_training(db: Path) -> int:
    """How many trials have scored an epoch, in the project's MLflow database (0 before it
    exists)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            query = "SELECT COUNT(DISTINCT run_uuid) FROM metrics WHERE key = 'epoch_val_rmse'"
            return con.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return 0


def _live_in_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` that have not ended (zombies left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow  # a study in two worker processes, interrupted
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_ctrl_c_during_tune_is_one_line_exit_130_and_the_trials_interrupted_not_failed(tmp_path):
    """The terminal's Ctrl-C while both workers (this command and the process it spawned)
    train a trial: after the progress lines only `interrupted` (no Optuna warning or
    traceback, no TensorFlow start-up lines from the worker), exit code 130, and the trials
    recorded as interrupted, not as failed configurations."""
    import signal
    import time

    import optuna
    from mlflow.tracking import MlflowClient

    from pipelines import tracking
    from pipelines.promotion import settle_orphaned_runs
    from pipelines.tuning.storage import open_storage
    from pipelines.tuning.study import _counts
    from tests.pipelines.conftest import new_tiny_project
    from tests.pipelines.tuning.conftest import TUNING, tuning_settings
    from tests.user_path import PROGRESS_LINE, Started

    project = new_tiny_project(tmp_path / "project")
    settings = tuning_settings(project, TUNING.replace("workers: 1", "workers: 2"), ())
    with Started(
        [str(BIN), "tune", "--trials=4", "--set=training.epochs=1000"],
        cwd=project,
        env=user_env(keep_pythonpath=True),
    ) as cmd:
        t0 = time.monotonic()
        while _trials_training(project / "mlflow.db") < 2 and cmd.proc.poll() is None:
            assert time.monotonic() - t0 < 300, "\n".join(cmd.lines[-20:])
            time.sleep(0.2)
        os.killpg(cmd.pid, signal.SIGINT)
        code = cmd.finish(timeout=300)
    lines = cmd.lines
    err = "\n".join(lines)
    assert code == 130, err
    assert [line for line in lines if not PROGRESS_LINE.match(line)] == ["interrupted"], err
    assert lines[-1] == "interrupted"
    stopped = [line for line in lines if line.endswith(": interrupted (stopped by Ctrl-C)")]
    assert len(stopped) == 2, err
    # the worker ended with the command; multiprocessing's resource tracker ends when it
    # sees the command gone (a zombie where PID 1 of a container reaps no orphans)
    t0 = time.monotonic()
    while _live_in_group(cmd.pid) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    assert _live_in_group(cmd.pid) == []
    # Optuna's FAIL, but counted as interrupted: no configuration failed
    study = optuna.load_study(study_name="tune-TEST", storage=open_storage(settings))
    assert _counts(study) == {
        "complete": 0,
        "pruned": 0,
        "fail": 0,
        "interrupted": 2,
        "running": 0,
    }
    # Ctrl-C can cut a write short and leave SQLite locked until its process ends: a run the
    # command could not end is its owner's orphan, which the next command marks FAILED
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    left = [
        r.info.run_id for r in client.search_runs([experiment_id]) if r.info.status == "RUNNING"
    ]
    tracking.connect(settings)
    assert sorted(settle_orphaned_runs(experiment_id)) == sorted(left)
    runs = client.search_runs([experiment_id])
    trials = [r for r in runs if tracking.TAG_TRIAL in r.data.tags]
    assert len(trials) == 2
    for run in trials:
        ended = run.data.tags.get(tracking.TAG_TRIAL_STATE) == "interrupted"
        assert ended or run.info.run_id in left, run.data.tags
    assert {r.info.status for r in runs} == {"FAILED"}


def _prefect_servers(home: Path) -> list[int]:
    """Prefect's temporary API servers running with PREFECT_HOME `home`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"prefect.server.api.server:create_app" not in (entry / "cmdline").read_bytes():
                continue
            pairs = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
        if os.path.realpath(env.get("PREFECT_HOME", "")) == os.path.realpath(home):
            found.append(int(entry.name))
    return found


@pytest.mark.slow  # a forecast in a subprocess, interrupted while its server starts
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_ctrl_c_while_prefect_server_starts_is_one_line_exit_130_and_no_process_left(tmp_path):
    """The terminal's Ctrl-C (its whole process group) once Prefect's temporary server has
    started, while the command loads TensorFlow: `interrupted`, exit 130, the server stopped."""
    import signal
    import time

    from tests.pipelines.conftest import new_tiny_project
    from tests.user_path import PROGRESS_LINE, prefect_server_child

    project = new_tiny_project(tmp_path / "project")
    # once in CI the command printed `interrupted` and then did not end: should it hang again,
    # SIGABRT makes it print every thread's stack (faulthandler) into the failure
    env = {**user_env(keep_pythonpath=True), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(
        [str(BIN), "forecast", "--ticker", "TEST"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's command has
    )
    try:
        t0, server = time.monotonic(), None
        while server is None and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.05)
            server = prefect_server_child(proc.pid)
        assert server is not None, proc.communicate()[1][-3000:]
        # the server writes to the command's stderr, not where TensorFlow's lines are caught
        server_stderr = os.readlink(f"/proc/{server}/fd/2")
        command_stderr = f"pipe:[{os.fstat(proc.stderr.fileno()).st_ino}]"
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"no exit 300 s after Ctrl-C; its stacks at SIGABRT:\n{err[-20000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.splitlines()
    assert proc.returncode == 130, err
    assert [line for line in lines if not PROGRESS_LINE.match(line)] == ["interrupted"], err
    assert server_stderr == command_stderr
    with pytest.raises(ProcessLookupError):  # Prefect's server stopped with the command
        os.killpg(proc.pid, 0)
    assert _prefect_servers(project / ".prefect") == []


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_prefect_server_that_does_not_start_fails_the_command_with_prefects_error(tmp_path):
    from tests.pipelines.conftest import new_tiny_project

    project = new_tiny_project(tmp_path / "project")
    env = user_env(keep_pythonpath=True)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "1"  # it needs more
    out = cli(BIN, "forecast", "--ticker", "TEST", cwd=project, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.splitlines()[-1] == (
        "RuntimeError: Timed out while attempting to connect to ephemeral Prefect API server."
    ), out.stderr[-3000:]
    assert _prefect_servers(project / ".prefect") == []
