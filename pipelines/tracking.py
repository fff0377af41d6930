"""Every MLflow call of the project lives here.

Functions take a `run_id` and log through `MlflowClient` instead of relying on the
thread-local active run, so logging stays correct when Prefect runs tasks in threads or
in other processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.config import Settings, resolve_tracking_uri
from pipelines.errors import PipelineError
from pipelines.fsio import file_lock
from pipelines.retries import note_retry
from pipelines.run_owner import TAG_SETTLED, owner_tags

if TYPE_CHECKING:
    from lstm_core.predictor import Forecaster

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# MLflow loads a model from code (to load it, and to check the input example when logging it)
# with a mock `dbutils` swapped into sys.modules and back: two loads at once in threads of one
# process leave the mock there for good. One load at a time.
_CODE_LOAD = threading.Lock()
CORE_PACKAGE = Path(__file__).resolve().parent.parent / "lstm_core"

TAG_TICKER = "ticker"
TAG_DATA_LAST_DATE = "data.last_date"
TAG_DATA_DIGEST = "data.digest"
TAG_DATA_ROWS = "data.rows"
TAG_PROMOTED = "promotion.promoted"
TAG_REASON = "promotion.reason"
TAG_REPLACED_BY = "champion.replaced_by"
TAG_REPLACED = "champion.replaced"
TAG_RUN_ID = "run_id"
# Set when a version is registered, cleared when its promotion is decided: a version still
# pending later belongs to a run that died in between.
TAG_PENDING = "promotion.pending"


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _require_server(uri: str) -> None:
    """One quick request to the server's /health: a server that is down is one line, not
    MLflow's retries with backoff and then a traceback."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
            return
    except urllib.error.HTTPError:
        return  # it answered: whatever the status, MLflow's own calls say what is wrong
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"tracking server {uri} does not answer ({reason}): start it, or point "
            "tracking.uri (mlflow.yaml) or MLFLOW_TRACKING_URI at one that does"
        ) from None


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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=CORE_PACKAGE.parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    # numba: the "fast" backend trains with its kernels, so a run records its version too
    for pkg in (
        "tensorflow",
        "keras",
        "mlflow",
        "prefect",
        "pandas",
        "numpy",
        "scikit-learn",
        "numba",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def start_run(
    settings: Settings, experiment_id: str, ticker: str, data_tags: Mapping[str, str]
) -> str:
    """Create the one run of a training, with a descriptive name and lineage tags."""
    f, m = settings.features, settings.model
    name = (
        f"{ticker} to {data_tags.get(TAG_DATA_LAST_DATE, '?')} "
        f"{m.layers}x{m.units} {f.target_transform} lb{f.lookback}"
    )
    tags = {TAG_TICKER: ticker, **data_tags, **owner_tags()}
    tags.update({f"lib.{k}": v for k, v in library_versions().items()})
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = _client().create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def log_params(run_id: str, settings: Settings) -> None:
    from mlflow.entities import Param

    params = [Param(k, "" if v is None else str(v)) for k, v in settings.flat().items()]
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


def end_run(run_id: str, ok: bool) -> None:
    _client().set_terminated(run_id, "FINISHED" if ok else "FAILED")


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


def fail_orphan(run_id: str, note: str) -> None:
    """End a run its own process left RUNNING (killed), saying why in a tag."""
    client = _client()
    client.set_tag(run_id, TAG_SETTLED, note)
    client.set_terminated(run_id, "FAILED")


def pip_requirements() -> list[str]:
    v = library_versions()
    reqs = [f"mlflow=={v['mlflow']}"] if "mlflow" in v else ["mlflow"]
    for pkg in ("tensorflow", "keras", "pandas", "numpy", "scikit-learn"):
        if pkg in v:
            reqs.append(f"{pkg}=={v[pkg]}")
    return reqs


def log_forecaster(
    run_id: str, forecaster: Forecaster, forecaster_dir: Path, input_example: pd.DataFrame
) -> str:
    """Save ``forecaster`` in ``forecaster_dir`` and log it as a pyfunc model 'from code';
    returns the model URI.

    The signature's inputs are `date` and the feature columns the network reads, nothing
    else, so a plain price frame (any other columns, any order) is accepted. MLflow loads the
    saved model through the pyfunc and forecasts the input example before it logs it.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from lstm_core.data import DATE_COLUMN, model_input

    forecaster.save(forecaster_dir)
    input_example = model_input(input_example, forecaster.preprocessor)
    output = forecaster.forecast(input_example, 1, intervals=False)
    inferred = infer_signature(
        input_example,
        output,
        params={"intervals": False, "days": 1, "samples": 30, "seed": 0, "recalibrate": False},
    )
    # `date` is typed Any: MLflow's datetime check refuses ISO strings in a DataFrame (pandas
    # 3 string columns); the model itself reads datetimes and ISO strings alike.
    columns = forecaster.preprocessor.feature_cfg.columns
    inputs = Schema([ColSpec(AnyType(), DATE_COLUMN), *(ColSpec("double", c) for c in columns)])
    signature = ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)
    info = _log_pyfunc(run_id, forecaster_dir, signature, input_example)
    # What the training process itself predicts for the input example: any later load of
    # the model (another process, the registry, a server) must reproduce these numbers.
    write_json_artifact(
        run_id,
        {"model_uri": info.model_uri, "forecast": output.to_dict(orient="list")},
        "model_check/input_example_forecast.json",
    )
    return info.model_uri


def _log_pyfunc(run_id: str, forecaster_dir: Path, signature: Any, example: pd.DataFrame):
    import mlflow.pyfunc
    from mlflow.models import Model

    client = _client()
    # Created here in the run's own experiment: left to itself, Model.log(run_id=...) puts
    # the logged model (and its files) in the fluent API's current experiment instead.
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        name="model",
        source_run_id=run_id,
        model_type="lstm-price-forecaster",
    )
    with _CODE_LOAD:
        return Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(PYFUNC_CODE),
            artifacts={"forecaster": str(forecaster_dir)},
            code_paths=[str(CORE_PACKAGE)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


def _version(mv) -> RegisteredVersion:
    return RegisteredVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def register(name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> RegisteredVersion:
    """Create a new version of the ticker's registered model, waiting until it is READY."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    model_id = model_uri.split("/", 2)[-1] if model_uri.startswith("models:/m-") else None
    source = model_uri
    mv = client.create_model_version(
        name, source, run_id=run_id, tags={**tags, TAG_PENDING: "true"}, model_id=model_id
    )
    return _version(mv)


def champion(name: str, alias: str) -> RegisteredVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return _version(_client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def get_version(name: str, version: str) -> RegisteredVersion:
    return _version(_client().get_model_version(name, version))


def versions(name: str) -> list[RegisteredVersion]:
    found = _client().search_model_versions(f"name = '{name}'")
    return sorted((_version(v) for v in found), key=lambda v: int(v.version))


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, version)


def set_version_description(name: str, version: str, text: str) -> None:
    _client().update_model_version(name, version, description=text)


def set_model_description(name: str, text: str) -> None:
    _client().update_registered_model(name, description=text)


def run_params(run_id: str) -> dict[str, str]:
    return dict(_client().get_run(run_id).data.params)


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(_client().get_run(run_id).data.metrics)


def load_model(name: str, alias: str):
    """The registered champion as a pyfunc model (the registry is the only source)."""
    import mlflow.pyfunc

    with _CODE_LOAD:
        return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def download_forecaster(name: str, version: str, dst: Path) -> Path:
    """Fetch a version's bundled forecaster folder (model.keras + preprocessing state)."""
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)
    )
    return Path(local) / "artifacts" / "forecaster"


def write_json_artifact(run_id: str, payload: Mapping[str, Any], artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_file).name
        local.write_text(json.dumps(payload, indent=2, default=str))
        parent = str(Path(artifact_file).parent)
        _client().log_artifact(run_id, str(local), None if parent == "." else parent)


def ui_command(settings: Settings) -> str:
    uri = resolve_tracking_uri(settings)
    if uri.startswith("http"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def registered_model_exists(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_registered_model(name)
    except MlflowException:
        return False
    return True


def log_forecast(settings: Settings, ticker: str, version: str, path: Path) -> str:
    """Record a batch forecast as its own run, with the Parquet file attached."""
    experiment_id = connect(settings)
    run = _client().create_run(
        experiment_id,
        run_name=f"forecast {ticker} v{version}",
        tags={TAG_TICKER: ticker, "kind": "forecast", "model_version": version, **owner_tags()},
    )
    try:
        _client().log_artifact(run.info.run_id, str(path), "forecast")
    finally:
        end_run(run.info.run_id, True)
    return run.info.run_id


def artifact_uri(run_id: str) -> str:
    return _client().get_run(run_id).info.artifact_uri


# ---------------------------------------------------------------- tuning (Optuna studies)

TAG_PARENT = "mlflow.parentRunId"  # what makes a run nested under another in the UI
TAG_KIND = "kind"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_TRIAL_STATE = "optuna.state"
TAG_TUNED_BY = "tuning.parent_run_id"
TAG_TUNED_RUN = "tuning.final_run_id"
TRIAL_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "fail": "FAILED"}


def start_tuning_run(
    experiment_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    """The parent run of one study and ticker; trials become its nested runs."""
    from mlflow.entities import Param

    tags = {**tags, TAG_KIND: "tuning", **owner_tags()}
    tags.update({f"lib.{k}": v for k, v in library_versions().items()})
    run_id = _client().create_run(experiment_id, run_name=name, tags=tags).info.run_id
    batch = [Param(k, "" if v is None else str(v)) for k, v in params.items()]
    for i in range(0, len(batch), 100):
        _client().log_batch(run_id, params=batch[i : i + 100])
    return run_id


def reopen_run(run_id: str, experiment_id: str) -> bool:
    """Mark an earlier parent run running again (a resumed study); False if it is gone."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return False
    from mlflow.entities import RunTag

    # its owner now: set before it runs again, so no one takes it for the old owner's orphan
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])
    client.update_run(run_id, status="RUNNING")
    return True


def start_trial_run(
    experiment_id: str,
    parent_run_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    """One trial as a child run of the study's parent run, with the trial's parameters."""
    from mlflow.entities import Param

    client = _client()
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={**tags, TAG_PARENT: parent_run_id, TAG_KIND: "tuning-trial", **owner_tags()},
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def end_trial_run(run_id: str, state: str, note: str = "") -> None:
    """Record the trial's Optuna state (complete, pruned, fail) as a tag and a run status."""
    client = _client()
    client.set_tag(run_id, TAG_TRIAL_STATE, state)
    if note:
        client.set_tag(run_id, "optuna.note", note[:5000])
    client.set_terminated(run_id, TRIAL_STATUS[state])


def finish_tuning_run(
    run_id: str,
    name: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    figures: Mapping[str, Any],
    trials: pd.DataFrame,
) -> None:
    """Best parameters and value, counts, Optuna's plots and the trials table on the parent."""
    client = _client()
    log_metrics(run_id, metrics)
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
    log_figures(run_id, figures)
    log_table(run_id, trials, "optuna/trials.csv")
    client.update_run(run_id, name=name)
    client.set_terminated(run_id, "FINISHED")


def fail_run(run_id: str) -> None:
    _client().set_terminated(run_id, "FAILED")


def link_tuned_run(parent_run_id: str, run_id: str, version: str | None) -> None:
    """Tie the retrained best configuration's run and the study's parent run together."""
    client = _client()
    client.set_tag(run_id, TAG_TUNED_BY, parent_run_id)
    client.set_tag(parent_run_id, TAG_TUNED_RUN, run_id)
    if version is not None:
        client.set_tag(parent_run_id, "tuning.registered_version", version)


# ---------------------------------------------------------------- live monitoring

KIND_MONITORING = "monitoring"


def run_url(settings: Settings, run_id: str) -> str:
    """The run's page in the MLflow UI (the `mlflow ui` address for a local database)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(settings)
    # this process may never have connected (a fan-out's runs are made in the workers)
    run = MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run_id)
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def monitoring_run(settings: Settings, ticker: str, version: str) -> str:
    """The one monitoring run of a ticker's champion version (`live MSFT v3`), made once."""
    experiment_id = connect(settings)
    client = _client()
    found = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.{TAG_KIND} = '{KIND_MONITORING}' and tags.{TAG_TICKER} = '{ticker}' "
            f"and tags.model_version = '{version}'"
        ),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"live {ticker} v{version}",
        tags={
            TAG_TICKER: ticker,
            TAG_KIND: KIND_MONITORING,
            "model_version": version,
            "model_name": settings.registry.name_for(ticker),
            **owner_tags(),
        },
    )
    return run.info.run_id


def log_live_series(run_id: str, series: pd.DataFrame) -> int:
    """Log each row of `series` (step, target_date, metrics) once; returns points added.

    The step is trading days since deployment and the timestamp the target date, so a
    re-scoring finds its steps already logged and adds nothing.
    """
    from mlflow.entities import Metric

    client = _client()
    keys = [c for c in series.columns if c not in ("step", "target_date")]
    batch = []
    for key in keys:
        done = {m.step for m in client.get_metric_history(run_id, key)}
        for row in series.itertuples(index=False):
            value = float(getattr(row, key))
            if row.step in done or math.isnan(value):
                continue
            stamp = int(pd.Timestamp(row.target_date).timestamp() * 1000)
            batch.append(Metric(key, value, stamp, int(row.step)))
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i : i + 500])
    return len(batch)


def tag_live(name: str, version: str, figures: Mapping[str, float], through: str) -> None:
    """Version tags `live.rmse`, `live.skill_vs_naive`, `live.coverage_<L>`, ... (latest)."""
    tags = {f"live.{k.removeprefix('live_')}": f"{v:.6g}" for k, v in figures.items()}
    tag_version(name, version, {**tags, "live.scored_through": through})


def live_tags(name: str, version: str) -> dict[str, str]:
    return {k: v for k, v in get_version(name, version).tags.items() if k.startswith("live.")}
