"""A project the user cannot write (read-only file system, or no permission): every command
that writes says so in one line naming the place and the system's error, exit code 2, before
Prefect or MLflow start; `status` still reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.pipelines.conftest import new_tiny_project, tree_bytes
from tests.reliability.conftest import BIN, TICKER, cli_env, copy_project

pytestmark = pytest.mark.slow  # the real CLI on a trained project: make test-fast leaves it out

# Root writes through file modes: for root, the folder is bind-mounted read-only in a mount
# namespace of the command's own (EROFS), which disappears with it.
_RO_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && shift && exec "$@"'


def _read_only_argv(folder: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _RO_MOUNT, str(folder)]
    if not shutil.which("unshare"):
        pytest.skip("running as root, and no unshare to mount the project read-only")
    probe = subprocess.run([*argv, "--", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and a read-only mount is refused: {probe.stderr.strip()}")
    return [*argv, "--"]


def _cli(project: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in `project` with `folder` unwritable (chmod -R a-w, or a read-only mount)."""
    argv = [str(BIN), args[0], "--config", str(project / "mlflow.yaml"), *args[1:]]
    return subprocess.run(
        [*_read_only_argv(folder), *argv],
        cwd=project,
        env=cli_env(project),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _chmod_tree(folder: Path, writable: bool) -> None:
    if os.geteuid() == 0:
        return  # the read-only mount does it
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if not path.is_symlink():
            path.chmod(mode | 0o200 if writable else mode & ~0o222)


@pytest.fixture
def read_only_project(trained_project, tmp_path):
    project = copy_project(trained_project.path, tmp_path / "project")
    _chmod_tree(project, writable=False)
    yield project
    _chmod_tree(project, writable=True)  # so that pytest can remove it


def _assert_one_line(out: subprocess.CompletedProcess[str], project: Path) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = lines[0]
    assert line.startswith("error: cannot write to " + str(project)), line
    assert "Read-only file system" in line or "Permission denied" in line, line
    return line


def test_writing_commands_refuse_a_read_only_project_in_one_line(read_only_project):
    project = read_only_project
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    seen = {}
    for args in (
        ("ingest", "prices/TEST.csv", "--ticker", TICKER),
        ("run", "--ticker", TICKER),
        ("forecast", "--ticker", TICKER),
        ("promote", "--ticker", TICKER, "--version", "1"),
    ):
        seen[args[0]] = _assert_one_line(_cli(project, project, *args), project)
    print(seen)
    assert str(project / "data" / "store") in seen["ingest"]
    assert str(project / "data" / "forecasts") in seen["forecast"]
    assert str(project / "mlflow.db") in seen["promote"]
    out = _cli(project, project, "status")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{TICKER} v1" in out.stdout, out.stdout
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before


def test_a_file_that_cannot_be_written_is_one_line_too(trained_project, tmp_path):
    # The folders pass the check, one file in them does not: the command-line's last resort
    # names the file instead of a traceback.
    project = copy_project(trained_project.path, tmp_path / "project")
    lock = project / ".locks" / f"promote-test-{TICKER}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    if os.geteuid() != 0:
        lock.chmod(0o444)
    out = _cli(project, lock, "promote", "--ticker", TICKER, "--version", "1")
    lock.chmod(0o644)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"error: {lock}: " + ("Read-only file system" if os.geteuid() == 0 else "Permission denied")
    ], out.stderr[-3000:]


def test_a_mistake_in_the_command_is_named_before_the_read_only_project(tmp_path):
    """The user's own mistake (a bad --ticker, a missing or unreadable file, a ticker not
    stored) is what to fix first: named as in a writable project, not as the write problem.
    Good input still meets the write check."""
    project = new_tiny_project(tmp_path / "project")
    (project / "prices" / "BAD.csv").write_text("Date,Open\nnot a date,1\n", encoding="utf-8")
    before = tree_bytes(project)
    cases = {
        ("ingest", "prices/TEST.csv", "--ticker", "a/b"): "error: --ticker: invalid ticker 'a/b'",
        ("ingest", "prices/MISSING.csv", "--ticker", TICKER): "prices/MISSING.csv",
        ("ingest", "prices/BAD.csv", "--ticker", TICKER): "prices/BAD.csv",
        ("run", "prices/MISSING.csv"): "prices/MISSING.csv",
        ("run", "--ticker", "a/b"): "error: --ticker: invalid ticker 'a/b'",
        ("run", "--ticker", "NOPE"): "error: no prices stored for ticker 'NOPE'",
        ("forecast", "--ticker", "a/b"): "error: --ticker: invalid ticker 'a/b'",
        ("promote", "--ticker", "a/b", "--version", "1"): "error: --ticker: invalid ticker",
        ("score", "--ticker", "NOPE"): "error: no prices stored for ticker 'NOPE'",
        ("tune", "--ticker", "a/b"): "error: --ticker: invalid ticker 'a/b'",
    }
    seen = {args: _cli(project, project, *args) for args in cases}
    wrong = {
        args: (out.returncode, out.stderr.strip())
        for args, out in seen.items()
        if out.returncode != 2
        or len(out.stderr.strip().splitlines()) != 1
        or cases[args] not in out.stderr
        or "cannot write" in out.stderr
    }
    assert not wrong, wrong
    _assert_one_line(
        _cli(project, project, "ingest", "prices/TEST.csv", "--ticker", TICKER), project
    )
    assert tree_bytes(project) == before
