"""A run and what it holds: start and end, params, metrics (and the Keras callback that logs
each epoch), figures, tables, JSON files, the training data as a dataset input, and the
lineage tags (library and package versions, the git commit of a checkout); also the run that
records a batch forecast."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import DISTRIBUTION
from pipelines.config import Settings
from pipelines.retries import note_retry
from pipelines.run_owner import TAG_SETTLED, owner_tags
from pipelines.tracking.connection import _client, connect, server_answers

# Run tags every kind of run may carry (training, tuning, monitoring, forecast).
TAG_TICKER = "ticker"
TAG_KIND = "kind"
TAG_DATA_LAST_DATE = "data.last_date"
TAG_DATA_DIGEST = "data.digest"
TAG_DATA_ROWS = "data.rows"

# The folder holding pipelines/ and lstm_core/ (a git checkout, or site-packages).
_CHECKOUT = Path(__file__).resolve().parents[2]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_CHECKOUT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    """Versions of Python, the libraries a run depends on and this project's own distribution
    (the code's version when it is installed, not run from a git checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    # numba: the "fast" backend trains with its kernels, so a run records its version too
    for pkg in (
        DISTRIBUTION,
        "tensorflow",
        "keras",
        "mlflow",
        "prefect",
        "pandas",
        "numpy",
        "numba",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


@server_answers()
def start_run(
    settings: Settings, experiment_id: str, ticker: str, data_tags: Mapping[str, str]
) -> str:
    """Create the one run of a training, with a descriptive name and lineage tags."""
    f, m = settings.features, settings.model
    name = (
        f"{ticker} to {data_tags.get(TAG_DATA_LAST_DATE, '?')} "
        f"{m.layers}x{m.units} {f.target_transform} lb{f.lookback}"
    )
    # kind: as every run of the experiment has, so the UI can filter (`tags.kind = 'training'`)
    tags = {TAG_TICKER: ticker, TAG_KIND: "training", **data_tags, **owner_tags()}
    tags.update({f"lib.{k}": v for k, v in library_versions().items()})
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = _client().create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


@server_answers()
def log_params(
    run_id: str, settings: Settings, read: Sequence[str] = (), read_as: str | None = None
) -> None:
    """Every configuration value, flat. `data.sources` and `data.ticker` say what this run
    read (the files, the ticker given for them), not the configured ones it may not have
    used: empty for a run trained from the store. The names are the same for every run."""
    from mlflow.entities import Param

    flat = settings.flat()
    flat["data.sources"] = ",".join(read)
    flat["data.ticker"] = read_as if read else None
    params = [Param(k, "" if v is None else str(v)) for k, v in flat.items()]
    # MLflow caps a batch at 100 params.
    for i in range(0, len(params), 100):
        _client().log_batch(run_id, params=params[i : i + 100])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    for i in range(0, len(batch), 500):
        _client().log_batch(run_id, metrics=batch[i : i + 500])


def epoch_logger(run_id: str):
    """A Keras callback that logs every epoch's losses as step metrics of `run_id`."""
    import keras

    class _EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            values = {
                "train_loss" if k == "loss" else k: v
                for k, v in logs.items()
                if k in ("loss", "val_loss")
            }
            log_metrics(run_id, values, step=epoch)

    return _EpochLogger()


def log_figures(run_id: str, figures: Mapping[str, Any]) -> list[str]:
    paths = []
    for name, fig in figures.items():
        path = f"plots/{name}.png"
        _client().log_figure(run_id, fig, path, save_kwargs={"dpi": 110})
        paths.append(path)
    return paths


def log_table(run_id: str, frame: pd.DataFrame, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_file).name
        if local.suffix == ".parquet":
            frame.to_parquet(local, index=False)
        else:
            frame.to_csv(local, index=False)
        _client().log_artifact(run_id, str(local), str(Path(artifact_file).parent))


def write_json_artifact(run_id: str, payload: Mapping[str, Any], artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_file).name
        local.write_text(json.dumps(payload, indent=2, default=str))
        parent = str(Path(artifact_file).parent)
        _client().log_artifact(run_id, str(local), None if parent == "." else parent)


@server_answers()
def log_dataset(
    run_id: str,
    frame: pd.DataFrame,
    *,
    source: str,
    digest: str,
    name: str,
    context: str = "training",
) -> None:
    """Record the training data as an MLflow dataset input with its lineage."""
    import mlflow.data
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    ds = mlflow.data.from_pandas(
        frame, source=LocalArtifactDatasetSource(source), name=name, digest=digest[:36]
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=tags)]
    for attempt in range(3):
        try:
            _client().log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:
            # Two runs logging the same new dataset at once: MLflow's store looks it up, finds
            # nothing, and both insert it; the second insert breaks the datasets table's unique
            # key and is rolled back. Once the first commits, a retry finds and reuses it.
            if attempt == 2 or not _is_duplicate_key(exc):
                raise
            note_retry("log_dataset (duplicate key)", exc)
            time.sleep(0.2 * (attempt + 1))


def _is_duplicate_key(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    # SQLite says "UNIQUE constraint failed", PostgreSQL "duplicate key value violates ...".
    return any(
        m in text
        for m in ("IntegrityError", "UNIQUE constraint failed", "UniqueViolation", "duplicate key")
    )


@server_answers()
def end_run(run_id: str, ok: bool) -> None:
    _client().set_terminated(run_id, "FINISHED" if ok else "FAILED")


def fail_run(run_id: str) -> None:
    _client().set_terminated(run_id, "FAILED")


def running_runs(experiment_id: str) -> dict[str, dict[str, str]]:
    """The experiment's runs still RUNNING: run id -> tags."""
    client, found, token = _client(), {}, None
    while True:
        page = client.search_runs(
            [experiment_id], "attributes.status = 'RUNNING'", max_results=500, page_token=token
        )
        found.update({r.info.run_id: dict(r.data.tags) for r in page})
        token = page.token
        if not token:
            return found


def fail_orphan(experiment_id: str, run_id: str, note: str) -> None:
    """End a run its own process left RUNNING (killed), saying why in a tag; the model it
    was logging when cut (a LoggedModel left PENDING for good) is marked FAILED with it."""
    from mlflow.entities import LoggedModelStatus

    client = _client()
    client.set_tag(run_id, TAG_SETTLED, note)
    # by status in Python: MLflow 3.17's SQL store matches no `status = 'PENDING'` filter
    of_run = f"source_run_id = '{run_id}'"
    for model in client.search_logged_models([experiment_id], filter_string=of_run):
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    client.set_terminated(run_id, "FAILED")


def run_params(run_id: str) -> dict[str, str]:
    return dict(_client().get_run(run_id).data.params)


def run_running(run_id: str | None) -> bool:
    """Is the run still RUNNING (False for none, or a deleted one)?"""
    from mlflow.exceptions import MlflowException

    try:
        return bool(run_id) and _client().get_run(run_id).info.status == "RUNNING"
    except MlflowException:
        return False


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(_client().get_run(run_id).data.metrics)


@server_answers()
def artifact_uri(run_id: str) -> str:
    return _client().get_run(run_id).info.artifact_uri


def log_forecast(settings: Settings, ticker: str, version: str, path: Path) -> str:
    """Record a batch forecast as its own run, with the Parquet file attached."""
    experiment_id = connect(settings)
    run = _client().create_run(
        experiment_id,
        run_name=f"forecast {ticker} v{version}",
        tags={TAG_TICKER: ticker, TAG_KIND: "forecast", "model_version": version, **owner_tags()},
    )
    try:
        _client().log_artifact(run.info.run_id, str(path), "forecast")
    finally:
        end_run(run.info.run_id, True)
    return run.info.run_id
