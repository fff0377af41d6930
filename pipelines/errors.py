"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """An error caused by the user's input or configuration, reported without a traceback."""

    exit_code = 2


# What to change when the test part cannot be cut into evaluation.backtest_folds blocks.
FOLDS_ADVICE = (
    "lower evaluation.backtest_folds (0 turns the backtest off) or raise evaluation.test_fraction"
)


class InputError(PipelineError):
    """Bad input data; names the file, line (as the file counts it) and column."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.column = column
        self.problem = problem
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


class ConfigError(PipelineError):
    """Bad configuration; names the file and the key."""

    def __init__(self, path: str | Path, key: str, problem: str, named: bool = False) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        # no key (the file's or folder's own problem), or `named`: the problem names the key
        said = f"{self.path}: {problem}" if named or not key else f"{self.path}: {key}: {problem}"
        super().__init__(said)


class OverrideError(ConfigError):
    """A bad `--set SECTION.KEY=VALUE`: names the option as given, not the config file."""

    def __init__(self, assignment: str, key: str, problem: str) -> None:
        super().__init__("--set", key, problem)
        self.assignment = assignment
        self.args = (f"--set {assignment}: {problem}",)


def os_problem(exc: OSError, where: str | Path) -> str:
    """The system's error in words, with the path it names when that is not ``where``."""
    what = exc.strerror or str(exc)
    if exc.filename and Path(exc.filename) != Path(where):
        what += f" ({exc.filename})"
    return what


def user_error_types() -> tuple[type[Exception], ...]:
    """Errors the user can act on (bad input, configuration, unusable data, a server that does
    not answer): reported in one line, exit code 2, no traceback. Subclasses included."""
    from lstm_core.data import DataError
    from lstm_core.train import TrainingDivergedError

    return (PipelineError, DataError, TrainingDivergedError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, user_error_types())
