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


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every error it holds: causes, contexts, urllib's and urllib3's `reason`,
    requests' `args` (MLflow raises its MlflowException inside the `except` of the requests
    error, or `from` it, which holds urllib3's, which holds the socket's)."""
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is seen for seen in chain):
            continue
        chain.append(e)
        linked = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        todo.extend(x for x in linked if isinstance(x, BaseException))
    return chain


def no_answer(exc: BaseException) -> str | None:
    """Why a server did not answer, when ``exc`` (urllib's, requests', an MlflowException, a
    task's error) comes from a connection to it refused, reset, lost or timed out; None for
    any other failure. The one classifier of the tracking client's errors and of the
    health probes (servers.process.no_answer_from)."""
    import requests
    import urllib3.exceptions

    chain = exception_chain(exc)
    # the socket's own reason first: urllib3's NewConnectionError is a ConnectTimeoutError
    # even when the connection was refused
    kinds: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
        ("connection refused", (ConnectionRefusedError,)),
        ("connection reset", (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)),
        (
            "no answer in time",
            (TimeoutError, requests.Timeout, urllib3.exceptions.ReadTimeoutError),
        ),
        ("connection lost", (requests.ConnectionError, urllib3.exceptions.ProtocolError)),
    )
    for reason, types in kinds:
        if any(isinstance(e, types) for e in chain):
            return reason
    return None


def user_error_types() -> tuple[type[Exception], ...]:
    """Errors the user can act on (bad input, configuration, unusable data, a server that does
    not answer): reported in one line, exit code 2, no traceback. Subclasses included."""
    from lstm_core.data import DataError
    from lstm_core.train import TrainingDivergedError

    return (PipelineError, DataError, TrainingDivergedError)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, user_error_types())
