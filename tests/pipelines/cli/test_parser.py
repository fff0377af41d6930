"""The command line's grammar (pipelines/cli/parser.py): the commands, their arguments,
`--help` and `--version`."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import BIN
from tests.user_path import REPO, cli, user_env


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("init", "ingest", "run", "retrain", "forecast", "promote", "rollback", "serve"):
        assert command in out.stdout


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert (out, err) == (f"lstm-pipeline {version('lstm-stock-pipeline')}\n", "")


def test_serve_takes_a_repeated_ticker_like_every_other_command(tiny_project, monkeypatch):
    """`serve --ticker A --ticker B` serves both (its former `--tickers A B` took the prefix
    `--ticker` for itself and kept the last one only); a bad name is one line, exit 2, and
    nothing is served."""
    from pipelines import serve as serve_module

    served = []
    monkeypatch.setattr(
        serve_module, "serve", lambda settings, path, overrides, tickers: served.append(tickers)
    )
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["serve", "--ticker", "AAA", "--ticker", "BBB", "--config", cfg]) == 0
    assert main(["serve", "--config", cfg]) == 0  # the default: every stored ticker
    assert served == [["AAA", "BBB"], None]

    env = user_env(keep_pythonpath=True)
    out = cli(BIN, "serve", "--ticker", "AAA", "--ticker", "../x", cwd=tiny_project, env=env)
    assert (out.returncode, out.stdout) == (2, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == (
        "error: --ticker: invalid ticker '../x': only letters, digits, '.', '_' and '-' are "
        "allowed\n"
    )
    out = cli(BIN, "serve", "--tickers", "AAA", cwd=tiny_project, env=env)
    assert out.returncode == 2 and "unrecognized arguments: --tickers" in out.stderr, out.stderr
    out = cli(BIN, "serve", "--help", cwd=tiny_project, env=env)
    assert "--ticker TICKERS" in out.stdout and "repeatable" in out.stdout, out.stdout


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from pipelines.cli.parser import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommands_help_opens_with_a_description(command, capsys):
    """`lstm-pipeline CMD --help`: a description between the usage and the options (ut4 L5:
    only `run` had one)."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0].startswith("usage: lstm-pipeline " + command)
    first_line = blocks[1].splitlines()[0]
    # argparse puts the description here; without one the options section comes next
    assert first_line.strip() and not first_line.endswith(":"), blocks[:2]


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_the_readme_command_list_names_every_option(command):
    """Every option of a command (but the common --config/--set) is on its line(s) of the
    README's command list (ut4 L5: `promote --reason` was missing)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listing = readme.split("## Commands", 1)[1].split("```")[1]
    lines = [ln for ln in listing.splitlines() if ln.startswith(f"lstm-pipeline {command}")]
    assert lines, f"no README line for {command}"
    text = " ".join(ln.split("#", 1)[0] for ln in lines)
    options = {
        opt
        for a in _subcommands()[command]._actions
        for opt in a.option_strings
        if opt.startswith("--") and opt not in ("--help", "--config", "--set")
    }
    assert {o for o in options if o not in text} == set()


@pytest.mark.slow  # the CLI in subprocesses
def test_an_older_projects_config_runs_with_a_warning_and_mc_dropout_is_one_line(tmp_path):
    """As a user upgrading sees it: the template an earlier version wrote (with `horizon: 1`,
    `intervals: conformal`, `mc_samples: 30` and `moving_average_window: 5`) still runs a command,
    told to delete the four lines; a project that asked for MC dropout gets one line and exit 2."""
    from pipelines.config.loader import MC_DROPOUT_GONE

    env = user_env(keep_pythonpath=True)
    assert cli(BIN, "init", "project", cwd=tmp_path, env=env).returncode == 0
    project = tmp_path / "project"
    config = project / "mlflow.yaml"
    text = config.read_text()
    assert text.count("\nevaluation:\n") == 1 and text.count("\nfeatures:\n") == 1
    old = "  intervals: conformal\n  mc_samples: 30\n  moving_average_window: 5\n"
    text = text.replace("\nfeatures:\n", "\nfeatures:\n  horizon: 1\n")
    config.write_text(text.replace("\nevaluation:\n", "\nevaluation:\n" + old))
    out = cli(BIN, "status", cwd=project, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    warned = [line.split(" ", 1)[1] for line in out.stderr.splitlines()]
    assert warned == [
        f"{config}: evaluation.intervals is no longer read (the bands are always split "
        "conformal): delete it",
        f"{config}: evaluation.mc_samples is no longer read (Monte-Carlo dropout intervals "
        "were removed): delete it",
        f"{config}: evaluation.moving_average_window is no longer read (the moving-average "
        "baseline was removed): delete it",
        f"{config}: features.horizon is no longer read (every model forecasts one day ahead): "
        "delete it",
    ], out.stderr
    config.write_text(config.read_text().replace("intervals: conformal", "intervals: mc_dropout"))
    out = cli(BIN, "status", cwd=project, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"error: {config}: evaluation.intervals: {MC_DROPOUT_GONE}"]
