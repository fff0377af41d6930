"""What the console shows (pipelines/cli/console.py): commands to paste, and each line
once and in order wherever stdout and stderr go."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.pipelines.cli.conftest import BIN
from tests.pipelines.conftest import price_frame, write_prices
from tests.user_path import user_env

SPACED = "my proj ü 价格"  # a folder name a shell splits, with non-ASCII letters


def test_printed_commands_paste_into_a_shell_for_a_path_with_spaces(tmp_path, capsys):
    """`init`'s `next: cd ...` and the `mlflow ui` line that `run` and `retrain` print: split as
    a shell splits them, each gives the project's own path as one argument."""
    import shlex

    from pipelines import tracking
    from pipelines.config import load_settings

    folder = tmp_path / SPACED
    assert main(["init", str(folder)]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("next: ")]
    assert shlex.split(line.removeprefix("next: "))[:3] == ["cd", str(folder.resolve()), "&&"]
    settings = load_settings(folder / "mlflow.yaml", env={})
    assert shlex.split(tracking.ui_command(settings)) == [
        *("mlflow", "ui", "--backend-store-uri", f"sqlite:///{folder.resolve() / 'mlflow.db'}"),
        *("--host", "127.0.0.1", "--port", "5000"),
    ]


@pytest.mark.slow  # the retraining flow (a training) in a subprocess
def test_retrain_into_one_log_file_says_why_before_the_training_it_starts(trained_tiny, tmp_path):
    """`retrain > log 2>&1`, as cron runs it: the file reads in the order things happened
    (the ingest and the decision before the training's progress), and its `MLflow UI:` line
    pastes into a shell for a project whose path has spaces."""
    import shlex

    from tests.pipelines.conftest import copy_of

    with copy_of(trained_tiny, tmp_path / SPACED) as settings:
        project = settings.base_dir
    write_prices(project / "data" / "incoming" / "TEST.csv", price_frame(130).iloc[120:])
    log = tmp_path / "retrain.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [str(BIN), "retrain", "--set=evaluation.backtest_folds=0"],
            cwd=project,
            env=user_env(keep_pythonpath=True),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    lines = log.read_text(encoding="utf-8").splitlines()
    assert proc.returncode == 0, lines[-30:]

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    ingested, decided = first("ingested TEST.csv: TEST +10 new"), first("TEST: retrain (gained")
    assert ingested < decided < first("TEST: 130 rows ") < first("TEST: test RMSE"), lines
    assert sum("TEST: retrain (gained" in line for line in lines) == 1, lines  # once, in order
    [ui] = [x for x in lines if x.startswith("MLflow UI: ")]
    uri = f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert shlex.split(ui.removeprefix("MLflow UI: "))[:4] == [
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
    ]


def _retrain_with_streams(project: Path, where: str) -> list[str]:
    """`retrain` in a subprocess, its stdout and stderr as `where` says: `one file`
    (`retrain > log 2>&1`), `terminal` (both on one pseudo-terminal) or `file and terminal`
    (`retrain > log` typed at a terminal). Returns the text each place received."""
    import pty
    import select
    import time

    log = project / "retrain.log"
    chunks: list[bytes] = []
    main_fd, term_fd = pty.openpty()
    try:
        with log.open("w") as file:
            proc = subprocess.Popen(
                [str(BIN), "retrain"],
                cwd=project,
                env=user_env(keep_pythonpath=True),
                stdin=subprocess.DEVNULL,
                stdout=term_fd if where == "terminal" else file,
                stderr=file if where == "one file" else term_fd,
            )
            os.close(term_fd)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if not select.select([main_fd], [], [], 1)[0]:
                    continue
                try:
                    data = os.read(main_fd, 65536)
                except OSError:  # EIO: nothing holds the terminal open any more
                    break
                if not data:
                    break
                chunks.append(data)
            returncode = proc.wait(timeout=60)
    finally:
        os.close(main_fd)
    terminal = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    text = log.read_text(encoding="utf-8")
    assert returncode == 0, (text + terminal)[-3000:]
    return {"one file": [text], "terminal": [terminal], "file and terminal": [text, terminal]}[
        where
    ]


@pytest.mark.parametrize(
    "where",
    [  # 13-30 s each: a Prefect API server starts in the command (make test only)
        pytest.param("one file", marks=pytest.mark.slow),
        pytest.param("terminal", marks=pytest.mark.slow),
        pytest.param("file and terminal", marks=pytest.mark.slow),
    ],
)
def test_retrain_shows_each_decision_once_wherever_its_streams_go(trained_tiny, tmp_path, where):
    """Each ingested file and decision is a progress line on stderr as it happens (so a log of
    both streams reads in order) and a line of the summary on stdout. When both streams go to
    one file or one terminal it is read once; stdout on its own still holds the whole summary."""
    from tests.pipelines.conftest import copy_of

    with copy_of(trained_tiny, tmp_path / "project") as settings:
        project = settings.base_dir
    write_prices(project / "data" / "incoming" / "TEST.csv", price_frame(120).iloc[-5:])
    notes = [
        "ingested TEST.csv: TEST +0 new, 0 replaced, 5 unchanged rows",
        "TEST: skip (unchanged since v1 was trained)",
        "nothing changed: no ticker to retrain",
    ]
    places = _retrain_with_streams(project, where)
    for text in places:
        assert [text.count(note) for note in notes] == [1, 1, 1], text[-3000:]
        assert sorted(notes, key=text.index) == notes, text[-3000:]
    if where == "file and terminal":  # stdout, for scripts: the summary, without progress
        summary = places[0].splitlines()
        assert [any(line.startswith(n) for n in notes) for line in summary] == [True] * 3, summary
