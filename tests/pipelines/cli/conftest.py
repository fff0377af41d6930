"""What the CLI tests share: the installed command, and running it from a project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.user_path import cli, user_env

BIN = Path(sys.executable).with_name("lstm-pipeline")


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess: Prefect's own log lines would show on stderr."""
    return cli(BIN, *args, cwd=project, env=user_env(keep_pythonpath=True), timeout=300)
