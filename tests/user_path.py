"""The new user's path through the command line, as the README tells it, in subprocesses.

Shared by the CLI test (editable install) and the packaging test (the built wheel in a fresh
virtual environment): a clean environment, tiny model settings, and the output checks.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pipelines.runtime import _DEFAULTS

REPO = Path(__file__).resolve().parents[1]

# A one-epoch model on 120 rows, promoted whatever its score (the mechanics are under test).
TINY = [
    f"--set={kv}"
    for kv in (
        "features.lookback=5",
        "model.layers=1",
        "model.units=4",
        "model.backend=keras",
        "training.epochs=1",
        "training.batch_size=16",
        "evaluation.backtest_folds=1",
        "evaluation.backtest_epochs=1",
        "evaluation.mc_samples=4",
        "registry.promotion.max_worse_than_naive=10",
    )
]

# Every line the CLI itself writes to stderr is a timestamped progress line.
PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d \S")


def user_env(keep_pythonpath: bool) -> dict[str, str]:
    """The user's environment: none of the quiet settings the CLI must apply by itself."""
    env = dict(os.environ)
    for key in (
        *_DEFAULTS,
        "PREFECT_HOME",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "PREFECT_API_URL",
        "PYTHONWARNINGS",
        "PYTHONUNBUFFERED",  # a cron job's stdout to a file is block-buffered by default
        "LSTM_PIPELINE_CONFIG",
    ):
        env.pop(key, None)
    if not keep_pythonpath:
        env.pop("PYTHONPATH", None)
    # A fresh Prefect database on a busy two-core machine can take longer than the default.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return env


def cli(
    exe: Path, *args: str, cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_only_progress(proc: subprocess.CompletedProcess[str]) -> None:
    """No TensorFlow/absl, MLflow, alembic or warnings lines: only the run's own progress."""
    noise = [line for line in proc.stderr.splitlines() if line and not PROGRESS_LINE.match(line)]
    assert not noise, "stderr has lines that are not progress:\n" + "\n".join(noise[:20])
    for text in ("cuda", "cuInit", "absl", "oneDNN", "database tables", "type hints"):
        assert text not in proc.stderr + proc.stdout, text


RUN_STATE = {"mlflow.db", ".prefect", "mlartifacts", "mlruns", "store", "forecasts", ".locks"}


def checkout_state() -> dict[str, float]:
    """What a run could leave in the checkout: names in its top folder and data/, and the
    modification times of the run-state ones among them."""
    state = {}
    for folder in (REPO, REPO / "data"):
        for p in folder.iterdir():
            if p.name not in (".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__"):
                mtime = p.stat().st_mtime if p.name in RUN_STATE else 0.0
                state[str(p.relative_to(REPO))] = mtime
    return state


def project_state(project: Path) -> list[str]:
    """The run's state that must land in the project folder."""
    expected = ["mlflow.db", ".prefect", "mlartifacts", "data/store", "data/incoming"]
    return [name for name in expected if not (project / name).exists()]


def prefect_server_child(pid: int) -> int | None:
    """The pid of Prefect's temporary API server started by process `pid`, once it exists.

    /proc lists a process's children per thread, and a thread of the command starts it.
    """
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread has ended
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"prefect.server.api.server:create_app" in cmdline:
                return int(child)
    return None
