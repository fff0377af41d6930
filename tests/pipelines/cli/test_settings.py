"""The settings every command starts from (`--config`, `--set`, mlflow.yaml, found in the
folder or above it): a value nothing can use is one line naming where it came from."""

from __future__ import annotations

import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import BIN
from tests.user_path import cli, user_env


def test_outside_any_project_the_cli_names_init(tmp_path):
    out = cli(BIN, "run", cwd=tmp_path, env=user_env(keep_pythonpath=True), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        f"error: no mlflow.yaml in {tmp_path.resolve()} or any folder above it (and no --config "
        "or LSTM_PIPELINE_CONFIG); create a project here with: lstm-pipeline init"
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_key_exit_2_names_key(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", "x.csv", "--config", cfg, "--set", "training.epoch=3"]) == 2
    assert capsys.readouterr().err == (
        "error: --set training.epoch=3: unknown key training.epoch (did you mean "
        "training.epochs?)\n"
    )
    assert main(["ingest", "x.csv", "--config", cfg, "--set", "trainin.epochs=3"]) == 2
    assert capsys.readouterr().err == (
        "error: --set trainin.epochs=3: unknown key trainin (did you mean training?)\n"
    )
    text = (tiny_project / "mlflow.yaml").read_text(encoding="utf-8")
    (tiny_project / "mlflow.yaml").write_text(text + "monitoring:\n  window: 5\n", encoding="utf-8")
    assert main(["ingest", "x.csv", "--config", cfg]) == 2
    assert capsys.readouterr().err == (
        f"error: {cfg}: unknown key monitoring.window (did you mean monitoring.window_days?)\n"
    )
    (tiny_project / "mlflow.yaml").write_text(text + "monitoring:\n  zzz: 5\n", encoding="utf-8")
    assert main(["ingest", "x.csv", "--config", cfg]) == 2
    assert capsys.readouterr().err == f"error: {cfg}: unknown key monitoring.zzz\n"


def test_init_where_a_project_is_names_the_file_once(tmp_path, capsys):
    assert main(["init", str(tmp_path)]) == 0
    before = (tmp_path / "mlflow.yaml").read_bytes()
    capsys.readouterr()
    assert main(["init", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path.resolve() / 'mlflow.yaml'}: already exists; init never overwrites it\n"
    )
    assert (tmp_path / "mlflow.yaml").read_bytes() == before


@pytest.mark.slow  # a dozen CLI subprocesses (about 30 s): in make test, not make test-fast
def test_a_bad_set_value_is_blamed_on_the_option_and_a_bad_file_value_on_the_file(tiny_project):
    """`--set training.epochs=abc` names the option as typed, not mlflow.yaml, which holds no
    such value; the same value in the file names the file; the last --set of a key wins."""
    env = user_env(keep_pythonpath=True)
    cfg = tiny_project / "mlflow.yaml"
    bad = "Input should be a valid integer, unable to parse string as an integer"
    for sets, says in (
        (["--set", "training.epochs=abc"], f"--set training.epochs=abc: {bad}"),
        (["--set=training.epochs=abc", "--set=training.epochs=2"], None),
        (["--set=training.epochs=2", "--set=training.epochs=x"], f"--set training.epochs=x: {bad}"),
        (["--set", "training.epochs=yes"], "--set training.epochs=yes: expected a number, got a "
                                           "boolean (true/false/yes/no)"),
        (["--set", "features.columns=[close, 7]"], "--set features.columns=[close, 7]: "
                                                   "features.columns.1: Input should be a valid string"),
        (["--set", "training.epochs"], "--set training.epochs: expected section.key=value"),
        # not YAML: a list or mapping left open is refused, anything else is the text as typed
        (["--set", "features.columns=[open"], "--set features.columns=[open: not valid YAML "
                                              "(expected ',' or ']', but got '<stream end>')"),
        (["--set", "data.column_map={date: Date, open: Adj Close"],
         "--set data.column_map={date: Date, open: Adj Close: not valid YAML (expected ',' or "
         "'}', but got '<stream end>')"),
        (["--set", "training.epochs=@x"], f"--set training.epochs=@x: {bad}"),
        (["--set", "schedule.cron=* * * * *"], None),  # YAML would read an alias
    ):  # fmt: skip
        out = cli(BIN, "status", *sets, cwd=tiny_project, env=env, timeout=120)
        if says is None:
            assert out.returncode == 0, out.stderr
            continue
        assert (out.returncode, out.stderr) == (2, f"error: {says}\n"), sets
    text = cfg.read_text(encoding="utf-8").replace("  epochs: 1\n", "  epochs: abc\n")
    cfg.write_text(text, encoding="utf-8")
    out = cli(BIN, "status", "--set", "training.batch_size=8", cwd=tiny_project, env=env)
    assert (out.returncode, out.stderr) == (2, f"error: {cfg}: training.epochs: {bad}\n")
    # a whole section's check, with a key of it given by --set: both named
    out = cli(BIN, "status", "--set", "features.target=volume", cwd=tiny_project, env=env)
    assert out.returncode == 2 and out.stderr.startswith(
        f"error: {cfg}: features (with --set features.target=volume): target must be one of"
    ), out.stderr


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        ("status", "schedule.cron=61 25 * * 1-5"),
        ("status", "schedule.timezone=Mars/Olympus"),
        ("status", "tuning.cron=0 3 * * 8"),
        ("status", "tracking.uri=foo://bar"),
        ("ingest", "training.epochs=true"),
        ("ingest", "monitoring.window_days=yes"),
        # MLflow's alias rules: reserved names, characters, empty, length
        ("run", "registry.alias=latest"),
        ("status", "registry.alias=LaTeSt"),
        ("status", "registry.alias=v3"),
        ("status", "registry.alias=V12"),
        ("run", "registry.alias=Champion!"),
        ("status", "registry.alias=a b"),
        ("status", "registry.alias="),
        ("status", f"registry.alias={'a' * 256}"),
    ],
)
def test_a_setting_nothing_can_use_is_one_line_exit_2(tiny_project, capsys, command, setting):
    cfg = str(tiny_project / "mlflow.yaml")
    before = sorted(p.name for p in tiny_project.iterdir())
    args = [str(tiny_project / "prices" / "TEST.csv")] if command == "ingest" else []
    assert main([command, *args, "--config", cfg, "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --set {setting}: "), err
    assert sorted(p.name for p in tiny_project.iterdir()) == before  # no store, no mlflow.db


def test_a_key_twice_in_the_config_is_one_line_exit_2(tiny_project, capsys):
    cfg = tiny_project / "mlflow.yaml"
    lines = cfg.read_text(encoding="utf-8").splitlines()
    first, again = lines.index("training:") + 1, len(lines) + 1
    cfg.write_text("\n".join([*lines, "training:", "  epochs: 5", ""]), encoding="utf-8")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {cfg}: training: given twice, on line {first} and line {again}: keep one of them"
    )
    assert not (tiny_project / "data").exists()


def test_run_refuses_a_bad_schedule_before_it_trains(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg]) == 0
    before = sorted(p.name for p in tiny_project.iterdir())
    capsys.readouterr()
    code = main(["run", "--ticker", "TEST", "--config", cfg, "--set", "schedule.cron=61 25 * * *"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --set schedule.cron=61 25 * * *: '61 25 * * *' is not a valid cron expression: "
        "Bad minute"
    )
    assert sorted(p.name for p in tiny_project.iterdir()) == before  # no mlflow.db, no .prefect


def test_a_reader_that_closes_stdout_early_gets_no_traceback(tiny_project):
    """`lstm-pipeline status | head -1`: the reader is gone before the command writes (its
    read end closed at once here, so the write always meets a closed pipe): no
    BrokenPipeError traceback on stderr, and SIGPIPE's exit code."""
    import subprocess

    proc = subprocess.Popen(
        [str(BIN), "status"],
        cwd=tiny_project,
        env=user_env(keep_pythonpath=True),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # as `head` exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err


def test_an_error_raised_while_ctrl_c_was_handled_is_the_stop(tiny_project, monkeypatch, capsys):
    """A write that Ctrl-C cut short fails as the stop unwinds (SQLite's "database is locked"):
    the user pressed Ctrl-C, so one line, `interrupted`, and 130; not the database's traceback."""
    from pipelines.cli import commands

    def status(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("(sqlite3.OperationalError) database is locked") from None

    monkeypatch.chdir(tiny_project)
    monkeypatch.setitem(commands.COMMANDS, "status", status)
    assert commands.main(["status"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
