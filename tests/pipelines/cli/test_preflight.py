"""The checks before Prefect, TensorFlow or any write (pipelines/cli/preflight.py): the
places a command writes, a run's files and series, and the tracking store."""

from __future__ import annotations

import shutil

import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import _cli, clashing_files
from tests.pipelines.conftest import price_frame, tree_bytes, write_prices


def test_a_place_the_command_writes_that_cannot_be_written_is_one_line_exit_2(
    tiny_project, capsys, monkeypatch
):
    # data/ is a file, so the store cannot be made: said before anything runs, as init says it
    # (tests/reliability/test_read_only.py: a read-only project through the installed CLI)
    cfg = str(tiny_project / "mlflow.yaml")
    (tiny_project / "data").write_text("not a folder\n", encoding="utf-8")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg]) == 2
    store, data = tiny_project / "data" / "store", tiny_project / "data"
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write to {store}: Not a directory ({data})"
    )
    # What the check cannot foresee (a file refused later) is still one line naming the path.
    import pipelines.promotion

    (tiny_project / "data").unlink()  # promote writes a new champion's forecast there

    def refused(*args: object) -> str:
        raise PermissionError(13, "Permission denied", str(tiny_project / ".locks" / "x.lock"))

    monkeypatch.setattr(pipelines.promotion, "manual_promote", refused)
    assert main(["promote", "--ticker", "TEST", "--version", "1", "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tiny_project / '.locks' / 'x.lock'}: Permission denied"


@pytest.mark.parametrize("clash", ["value", "jump"])
def test_run_refuses_files_that_clash_as_ingest_does_before_any_training(
    tiny_project, capsys, clash
):
    """`run FILE FILE` checks the files as `ingest` merges them: a clash between the two is
    refused with ingest's line, before Prefect, MLflow or any write."""
    cfg = str(tiny_project / "mlflow.yaml")
    first, second = clashing_files(tiny_project, clash)
    store = tiny_project / "data" / "store"
    before = tree_bytes(store)
    capsys.readouterr()
    files = [str(first), str(second)]
    names = sorted(p.name for p in tiny_project.iterdir())
    assert main(["run", *files, "--config", cfg]) == 2
    out, err = capsys.readouterr()
    assert (out, len(err.splitlines())) == ("", 1), err
    assert f"in {first}, line 6" in err
    assert tree_bytes(store) == before
    assert sorted(p.name for p in tiny_project.iterdir()) == names  # no mlflow.db, no .prefect
    assert main(["ingest", *files, "--config", cfg]) == 2
    assert capsys.readouterr().err == err


def test_run_judges_the_files_together_as_ingest_stores_them(tiny_project, capsys):
    """Two overlapping files each too short to train pass the pre-check together; nothing is
    stored until it has passed (a tracking server that does not answer stops the run next)."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = str(tiny_project / "mlflow.yaml")
    frame = price_frame(48)
    first = write_prices(tiny_project / "a" / "TEST.csv", frame.iloc[:25])
    second = write_prices(tiny_project / "b" / "TEST.csv", frame.iloc[20:])  # 5 days again
    sets = ["--set", "features.lookback=20", "--set", f"tracking.uri={uri}"]
    for path, rows in ((first, 25), (second, 28)):
        assert main(["run", str(path), "--config", cfg, *sets]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: cannot train TEST on its {rows} rows"), err
    assert main(["run", str(first), str(second), "--config", cfg, *sets]) == 2
    assert capsys.readouterr().err.startswith(f"error: tracking server {uri} does not answer")
    assert not (tiny_project / "data" / "store").exists()


def test_more_backtest_folds_than_test_rows_is_one_line_before_any_run(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    assert main(["ingest", src, "--config", cfg]) == 0
    before = sorted(p.name for p in tiny_project.iterdir())
    capsys.readouterr()
    folds = ["--set", "evaluation.backtest_folds=500"]
    for args in (["--ticker", "TEST"], [src]):  # a stored ticker, and a file to ingest first
        assert main(["run", *args, "--config", cfg, *folds]) == 2
        err = capsys.readouterr().err.strip()
        where = str(tiny_project / "data" / "store") if args[0] == "--ticker" else src
        assert err == (
            f"error: {where}: cannot backtest TEST on its 120 rows with {cfg}: test part has "
            "18 rows, fewer than 500 backtest folds: lower evaluation.backtest_folds (0 turns "
            "the backtest off) or raise evaluation.test_fraction"
        )
        # no MLflow store, no Prefect home: nothing ran
        assert sorted(p.name for p in tiny_project.iterdir()) == before


# ---------------------------------------------------------------- the tracking store


@pytest.mark.slow  # the CLI in subprocesses, or trainings: CI runs it
def test_a_tracking_server_that_does_not_answer_is_one_line_exit_2(tiny_project, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    capsys.readouterr()
    for command in (["status"], ["score"], ["run", "--ticker", "TEST"]):
        assert main([*command, "--config", cfg, "--set", f"tracking.uri={uri}"]) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error" in line.lower()]
        assert errors == [f"error: tracking server {uri} does not answer (connection "
                          "refused): start it, or point tracking.uri (mlflow.yaml) or "
                          "MLFLOW_TRACKING_URI at one that does"], (command, err)  # fmt: skip
        assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_demo_and_serve_settle_runs_a_killed_command_left_running(
    tiny_settings, monkeypatch, command
):
    """`demo` and `serve` use the project's tracking store as the other commands do: a run a
    killed command left RUNNING is marked FAILED before their flows start."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.cli import commands
    from pipelines.config import resolve_tracking_uri
    from pipelines.run_owner import TAG_SETTLED
    from tests.pipelines.test_run_owner import ended_process_tags

    client = MlflowClient(resolve_tracking_uri(tiny_settings))
    killed = client.create_run(tracking.connect(tiny_settings), tags=ended_process_tags())
    run_id = killed.info.run_id
    seen = []  # the run's status when the flows would start (they do not, here)

    def flows_start(*args, **kwargs):
        seen.append(client.get_run(run_id).info.status)

    monkeypatch.setattr(commands, "_before_flows", flows_start)
    monkeypatch.setattr("pipelines.demo.run_demo", flows_start)
    monkeypatch.setattr("pipelines.serve.serve", flows_start)
    assert main([command, "--config", str(tiny_settings.base_dir / "mlflow.yaml")]) == 0
    assert seen and set(seen) == {"FAILED"}, seen
    assert "marked FAILED" in client.get_run(run_id).data.tags[TAG_SETTLED]


# ---------------------------------------------------------------- a moved project


def test_a_moved_project_stops_in_one_line_before_writing(trained_settings, tmp_path, capsys):
    """SQLite's store keeps absolute artifact paths: after a move, no command that uses MLflow
    may read or write the old place (nor re-create it), and the error names it."""
    old = trained_settings.base_dir
    moved = shutil.move(old, tmp_path / "moved")
    cfg = str(moved / "mlflow.yaml")
    before = tree_bytes(moved)
    commands = (
        ["forecast", "--ticker", "TEST"],
        ["run", "--ticker", "TEST"],
        ["retrain"],
        ["score"],
        ["status"],
        ["promote", "--ticker", "TEST", "--version", "1"],
    )
    for command in commands:
        assert main([*command, "--config", cfg]) == 2, command
        out = capsys.readouterr()
        assert out.out == "", (command, out.out)
        [line] = out.err.splitlines()
        assert line.startswith(f"error: {moved / 'mlflow.db'} records the artifacts"), line
        assert (
            f"in {old / 'mlartifacts'}, but tracking.artifact_location gives "
            f"{moved / 'mlartifacts'}, and MLflow keeps the folder" in line
        ), line
        assert f"move the project back to {old}, where it was then, or use a new" in line, line
    assert not old.exists()
    assert tree_bytes(moved) == before


def test_a_changed_artifact_location_names_both_folders_and_the_ways_out(trained_settings, capsys):
    """tracking.artifact_location edited after the first run: MLflow keeps the folder the
    experiment was made with, so every command that uses MLflow stops in one line naming the
    recorded folder and the configured one, and how to go on; nothing is written."""
    project = trained_settings.base_dir
    cfg = project / "mlflow.yaml"
    text = cfg.read_text(encoding="utf-8")
    edited = text.replace(
        "  experiment: tests\n", "  experiment: tests\n  artifact_location: runs/a\n"
    )
    cfg.write_text(edited, encoding="utf-8")
    before = tree_bytes(project)
    expected = (
        f"error: {project / 'mlflow.db'} records the artifacts of experiment 'tests' in "
        f"{project / 'mlartifacts'}, but tracking.artifact_location gives {project / 'runs' / 'a'}, "
        "and MLflow keeps the folder an experiment was made with: set "
        "tracking.artifact_location back to mlartifacts, or use a new tracking.experiment or "
        "tracking database (put mlflow.db aside, or change tracking.uri) and train again from "
        "the stored prices (lstm-pipeline retrain)\n"
    )
    out = _cli(project, "run", "--ticker", "TEST")
    assert (out.returncode, out.stdout, out.stderr) == (2, "", expected)
    for command in (["forecast", "--ticker", "TEST"], ["retrain"], ["status"]):
        assert main([*command, "--config", str(cfg)]) == 2, command
        assert tuple(capsys.readouterr()) == ("", expected), command
    assert tree_bytes(project) == before and not (project / "runs").exists()
    cfg.write_text(text, encoding="utf-8")  # set back: the store serves again
    assert main(["status", "--config", str(cfg)]) == 0
