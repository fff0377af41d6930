"""Security basics: names never escape the configured folders, safe model loading, local binds."""

from __future__ import annotations

import ast
import re

import pytest

from pipelines.errors import PipelineError
from pipelines.ingest import InvalidTickerError, validate_ticker
from pipelines.store import PriceStore
from tests.reliability.conftest import REPO, cli, copy_project, snapshot

HOSTILE = ["../x", "a/b", "..", ".", "/abs", "a\\b", "x/../../y", "a\x00b", "", "~root", "T" * 65]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_tickers_are_refused_before_any_path_is_built(name, tmp_path):
    with pytest.raises(InvalidTickerError):
        validate_ticker(name)
    store = PriceStore(tmp_path / "store")
    with pytest.raises(PipelineError):
        store.path(name)
    with pytest.raises(PipelineError):
        store.read_table(name)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["store"])


def test_every_store_path_stays_under_the_root(tmp_path):
    store = PriceStore(tmp_path / "store")
    for name in ("MSFT", "000001.SZ", "平安银行", "BRK-B", "a_b"):
        assert store.path(name).resolve().is_relative_to((tmp_path / "store").resolve())


@pytest.mark.slow  # trains a project through the real CLI
def test_cli_ticker_escape_writes_nothing_anywhere(trained_project, tmp_path):
    project = copy_project(trained_project.path, tmp_path / "box" / "project", prefect=False)
    before = snapshot(project)
    for name in ("../x", "a/b", "../../escaped"):
        out = cli(project, "ingest", "prices/TEST.csv", "--ticker", name)
        assert out.returncode == 2 and "invalid ticker" in out.stderr
    assert snapshot(project) == before
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["project"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]


def test_models_load_in_keras_safe_mode():
    """Forecaster.load passes safe_mode=True (no Lambda/arbitrary code from a .keras file)."""
    src = (REPO / "lstm_core" / "predictor.py").read_text(encoding="utf-8")
    calls = [
        node
        for node in ast.walk(ast.parse(src))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load_model"
    ]
    assert calls, "Forecaster.load no longer calls keras.models.load_model"
    for call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        assert isinstance(kw.get("safe_mode"), ast.Constant) and kw["safe_mode"].value is True
    # and nobody turns it off elsewhere, nor unpickles models
    for folder in ("lstm_core", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "safe_mode=False" not in text, path
            assert "enable_unsafe_deserialization" not in text, path
            assert not re.search(r"\bpickle\.loads?\(", text), path


def test_servers_bind_to_localhost_only():
    offenders = []
    for path in (REPO / "pipelines").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "0.0.0.0" in text or re.search(r"""host\s*=\s*["'](?!127\.0\.0\.1)""", text):
            offenders.append(str(path))
    assert not offenders
    servers = REPO / "pipelines" / "servers" / "process.py"
    assert 'HOST = "127.0.0.1"' in servers.read_text(encoding="utf-8")


def test_forecast_output_names_come_from_validated_tickers():
    """forecast writes <forecasts>/<ticker>.parquet: the ticker must have passed validation."""
    src = (REPO / "pipelines" / "flows" / "forecast.py").read_text(encoding="utf-8")
    assert 'f"{ticker}.parquet"' in src
    # the forecast flow only ever gets tickers that are in the store or pass the CLI check
    cli_src = (REPO / "pipelines" / "cli" / "commands.py").read_text(encoding="utf-8")
    assert "[checked_ticker(t) for t in args.tickers]" in cli_src


@pytest.mark.parametrize("command", ["forecast", "promote", "rollback"])
def test_cli_refuses_hostile_tickers_for_every_command(command, tmp_path):
    (tmp_path / "mlflow.yaml").write_text("data:\n  ticker: null\n", encoding="utf-8")
    extra = ["--version", "1"] if command == "promote" else []
    out = cli(tmp_path, command, "--ticker", "../x", *extra)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        "error: --ticker: invalid ticker '../x': only letters, digits, '.', '_' and '-' are allowed"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.yaml"]
