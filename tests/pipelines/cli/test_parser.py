"""The command line's grammar (pipelines/cli/parser.py): the commands, their arguments,
`--help` and `--version`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import BIN
from tests.user_path import cli, user_env


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
