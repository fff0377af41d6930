from __future__ import annotations

import subprocess
import sys

from pipelines.cli import main
from pipelines.store import PriceStore
from tests.pipelines.conftest import price_frame, write_prices


def test_ingest_reports_rows_and_is_idempotent(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    src = str(tiny_project / "prices" / "TEST.csv")
    assert main(["ingest", src, "--config", cfg]) == 0
    assert "TEST +120 new" in capsys.readouterr().out
    assert main(["ingest", src, "--config", cfg]) == 0
    assert "TEST +0 new, 0 replaced, 120 unchanged" in capsys.readouterr().out
    assert PriceStore(tiny_project / "data" / "store").manifest("TEST").rows == 120


def test_bad_input_is_one_line_exit_2_and_store_unchanged(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    main(["ingest", str(tiny_project / "prices" / "TEST.csv"), "--config", cfg])
    store = tiny_project / "data" / "store"
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    capsys.readouterr()
    bad = price_frame(121)
    bad.loc[120, "High"] = bad.loc[120, "Low"] / 2
    path = write_prices(tiny_project / "bad" / "TEST.csv", bad)
    assert main(["ingest", str(path), "--config", cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and "line 122" in err and "High" in err
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_unknown_config_key_exit_2_names_key(tiny_project, capsys):
    cfg = str(tiny_project / "mlflow.yaml")
    assert main(["ingest", "x.csv", "--config", cfg, "--set", "training.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "training.epoch" in err and "mlflow.yaml" in err


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("ingest", "run", "retrain", "forecast", "promote", "rollback", "serve"):
        assert command in out.stdout
