"""What the CLI tests share: the installed command, and running it from a project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.pipelines.conftest import TINY_CONFIG, price_frame, write_prices
from tests.user_path import cli, user_env

BIN = Path(sys.executable).with_name("lstm-pipeline")


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess: Prefect's own log lines would show on stderr."""
    return cli(BIN, *args, cwd=project, env=user_env(keep_pythonpath=True), timeout=300)


def project_beside(first: Path, folder: Path) -> Path:
    """A second tiny project in `folder` on `first`'s tracking store (MLflow database and
    artifacts), as two projects on one tracking server are: the same ticker is the same
    registered model. Returns its config file."""
    store = f"sqlite:///{first / 'mlflow.db'}\n  artifact_location: {first / 'mlartifacts'}"
    config = folder / "mlflow.yaml"
    folder.mkdir()
    config.write_text(TINY_CONFIG.replace("sqlite:///mlflow.db", store), encoding="utf-8")
    return config


def clashing_files(project: Path, clash: str) -> tuple[Path, Path]:
    """TEST stored from the project's prices (its first 120 days), then two files of the next
    days that clash with each other: `value`, the first file's last day again with another
    open; `jump`, the day after it at twice its close."""
    from pipelines.cli import main

    main(["ingest", str(project / "prices" / "TEST.csv"), "--config", str(project / "mlflow.yaml")])
    frame = price_frame(130)
    first = write_prices(project / "a" / "TEST.csv", frame.iloc[120:125])
    if clash == "value":
        second = frame.iloc[124:126].copy()
        second.loc[124, "Open"] = second.loc[124, "Open"] * 1.001
    else:
        second = frame.iloc[125:126].copy()
        second[["Open", "High", "Low", "Close"]] = float(frame["Close"].iloc[124]) * 2
    return first, write_prices(project / "b" / "TEST.csv", second)
