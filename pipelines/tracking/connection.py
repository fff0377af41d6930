"""Where MLflow is: the client, :func:`connect` (tracking URI, experiment, the server and
artifact-root checks) and the addresses a user opens (the UI command, a run's page)."""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

from pipelines.config import Settings, resolve_tracking_uri
from pipelines.errors import PipelineError, exception_chain, no_answer
from pipelines.fsio import file_lock


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _require_server(uri: str) -> None:
    """One quick request to the server's /health: a server that is down is one line, not
    MLflow's retries with backoff and then a traceback."""
    from pipelines.servers.process import no_answer_from

    reason = no_answer_from(f"{uri.rstrip('/')}/health", timeout=10)
    if reason:
        raise PipelineError(
            f"tracking server {uri} does not answer ({reason}): start it, or point "
            "tracking.uri (mlflow.yaml) or MLFLOW_TRACKING_URI at one that does"
        )


class ServerStopped(PipelineError):
    """The tracking server stopped answering in the middle of a command (it answered at its
    start: :func:`_require_server`)."""

    def __init__(self, uri: str, reason: str, during: str = "", outcome: str = "") -> None:
        self.uri, self.reason, self.during, self.outcome = uri, reason, during, outcome
        said = f"tracking server {uri} stopped answering"
        said += f" during {during}" if during else ""
        said += f" ({reason})"
        said += f": {outcome}" if outcome else ""
        # settle_orphaned_runs, in the preflight of every command that writes to MLflow
        super().__init__(
            f"{said}; start it again, and the next run, retrain, forecast or score marks the "
            "cut run FAILED"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str, str]]:
        # a Dask worker's branch sends it back pickled: rebuilt from its parts, not its line
        return type(self), (self.uri, self.reason, self.during, self.outcome)


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


class _Answers(contextlib.ContextDecorator):
    """:func:`server_answers`: a class, not a generator, so that a task it decorates
    pickles (a Dask worker receives the task)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if not isinstance(exc, Exception):
            return False  # none, or Ctrl-C: not this
        if isinstance(exc, PipelineError) and not isinstance(exc, ServerStopped):
            return False
        stopped = [e for e in exception_chain(exc) if isinstance(e, ServerStopped)]
        reason = stopped[0].reason if stopped else no_answer(exc)
        if reason is None:
            return False
        uri = exc.uri if isinstance(exc, ServerStopped) else _tracking_uri()
        raise ServerStopped(uri, reason) from None


def server_answers() -> _Answers:
    """Turn a failure because the tracking server stopped answering into one
    :class:`ServerStopped` line; any other error passes through. A decorator of the tasks
    that call MLflow (whose caller says whose run it cut: flows.training.map_tickers), or a
    context manager."""
    return _Answers()


# SQLite databases this process has opened: MLflow creates or migrates one at its first use.
_OPENED: set[str] = set()


@contextlib.contextmanager
def _first_open(uri: str) -> Iterator[None]:
    """Hold the SQLite database's lock (`.locks/` beside it) around this process's first use
    of it: MLflow creates and migrates a new database then, and two processes doing that at
    once break the migration (alembic: "expected to match one row")."""
    db = Path(uri.removeprefix("sqlite:///"))
    if uri in _OPENED or not uri.startswith("sqlite:///") or not db.is_absolute():
        yield
        return
    with contextlib.ExitStack() as stack:
        # where no lock file can be made, nor can the database be created or migrated
        with contextlib.suppress(OSError):
            stack.enter_context(file_lock(db.parent / ".locks" / f"{db.name}.lock"))
        yield
    _OPENED.add(uri)


def connect(settings: Settings) -> str:
    """Point MLflow at the configured tracking URI and make sure the experiment exists."""
    import mlflow

    uri = resolve_tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        _require_server(uri)
    # MLflow also exports the URI to this process's environment, where the next
    # load_settings() would take it for the user's MLFLOW_TRACKING_URI: keep the user's.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    with _first_open(uri):
        client = _client()
        exp = client.get_experiment_by_name(settings.tracking.experiment)
    if exp is not None:
        _check_artifact_root(settings, uri, exp.artifact_location)
        return exp.experiment_id
    location = settings.tracking.artifact_location
    # A SQLite store needs an explicit artifact location, or artifacts land in ./mlruns.
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        location = settings.path(location).resolve().as_uri()
    else:
        location = None  # a tracking server chooses its own artifact root
    try:
        return client.create_experiment(settings.tracking.experiment, artifact_location=location)
    except Exception:
        # Another process created it between our look-up and create.
        exp = client.get_experiment_by_name(settings.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def connect_to_read(settings: Settings) -> bool:
    """:func:`connect` for a command that only reads (status): False, and MLflow left alone,
    when the store is a SQLite file that does not exist yet, which MLflow's first use would
    create (nothing is registered there)."""
    uri = resolve_tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if db.is_absolute() and not db.exists():
            return False
    connect(settings)
    return True


def _check_artifact_root(settings: Settings, uri: str, recorded: str) -> None:
    """A SQLite store keeps the absolute artifact folder its experiment was made with. When
    `tracking.artifact_location` now points elsewhere (changed since, or the project folder
    moved or copied), MLflow would still read and write the old place, and has no call that
    changes an experiment's artifact location: stop before anything is written, naming both
    places and the ways out."""
    if not uri.startswith("sqlite:"):
        return  # a server or database owns its artifact root, wherever the project lies
    from urllib.parse import unquote, urlparse

    here = settings.path(settings.tracking.artifact_location).resolve()
    old = Path(unquote(urlparse(recorded).path) if recorded.startswith("file:") else recorded)
    if old.resolve() == here:
        return
    # A relative setting that still ends the recorded path: the project folder moved (or was
    # copied) and the setting is as it was; anything else is a changed setting.
    parts = Path(settings.tracking.artifact_location).parts
    moved = (
        not Path(settings.tracking.artifact_location).is_absolute()
        and old.is_absolute()
        and old.parts[-len(parts) :] == parts
    )
    if moved:
        back = f"move the project back to {old.parents[len(parts) - 1]}, where it was then"
    else:
        base = settings.base_dir.resolve()
        back = "set tracking.artifact_location back to " + str(
            old.relative_to(base) if old.is_relative_to(base) else old
        )
    raise PipelineError(
        f"{uri.removeprefix('sqlite:///')} records the artifacts of experiment "
        f"{settings.tracking.experiment!r} in {old}, but tracking.artifact_location gives "
        f"{here}, and MLflow keeps the folder an experiment was made with: {back}, or use a new "
        "tracking.experiment or tracking database (put mlflow.db aside, or change tracking.uri) "
        "and train again from the stored prices (lstm-pipeline retrain)"
    )


def ui_command(settings: Settings) -> str:
    uri = resolve_tracking_uri(settings)
    if uri.startswith("http"):
        return f"open {uri}"
    # quoted, so the line pastes into a shell whatever the project folder's name holds
    return shlex.join(
        ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5000"]
    )


def run_url(settings: Settings, run_id: str) -> str:
    """The run's page in the MLflow UI (the `mlflow ui` address for a local database)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(settings)
    # this process may never have connected (a fan-out's runs are made in the workers)
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run_id)
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
