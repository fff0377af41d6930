"""The new user's path through the command line, as the README tells it, in subprocesses.

Shared by the CLI test (editable install) and the packaging test (the built wheel in a fresh
virtual environment): a clean environment, tiny model settings, and the output checks.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


class Started:
    """A command started as a terminal starts it, in a session (process group) of its own,
    its stderr lines collected by a thread as they come.

    `seen` is set at the first line that matches `until` (a pattern, or a test of all the
    lines so far); used as a context manager, the process group is killed on the way out (a
    no-op once it has ended).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        until: str | Callable[[list[str]], bool] | None = None,
        stdout: int | IO[str] = subprocess.DEVNULL,
    ) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.proc.pid  # also its process group's id
        self.lines: list[str] = []
        self.seen = threading.Event()
        self._pattern = isinstance(until, str)
        self._until = re.compile(until).search if isinstance(until, str) else until
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self._until is not None and self._until(line if self._pattern else self.lines):
                self.seen.set()

    def wait_seen(self, timeout: float) -> None:
        """Wait for the `until` line; fail with the last lines if the command ends or
        `timeout` seconds pass without it."""
        deadline = time.monotonic() + timeout
        while not self.seen.wait(0.2):
            if self.proc.poll() is not None:
                self._reader.join(timeout=30)  # a last line may still be in the pipe
                break
            if time.monotonic() > deadline:
                break
        assert self.seen.is_set(), "\n".join(self.lines[-20:])

    def finish(self, timeout: float) -> int:
        """Wait for the command's exit code and for the rest of its stderr."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL what is left of the process group (the command, Prefect's server)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def assert_only_progress(proc: subprocess.CompletedProcess[str]) -> None:
    """No TensorFlow/absl, MLflow, alembic or warnings lines: only the run's own progress."""
    noise = [line for line in proc.stderr.splitlines() if line and not PROGRESS_LINE.match(line)]
    assert not noise, "stderr has lines that are not progress:\n" + "\n".join(noise[:20])
    for text in ("cuda", "cuInit", "absl", "oneDNN", "database tables", "type hints"):
        assert text not in proc.stderr + proc.stdout, text


RUN_STATE = {
    "mlflow.db",
    ".prefect",
    "mlartifacts",
    "mlruns",
    "store",
    "forecasts",
    ".locks",
    ".lstm-project",
}


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
