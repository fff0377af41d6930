"""The model: the forecaster logged as a pyfunc "from code" with pinned requirements, the
registered champion loaded back and asked for a forecast, a version's forecaster folder
downloaded."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.errors import PipelineError
from pipelines.tracking.connection import _client
from pipelines.tracking.runs import TAG_TICKER, library_versions

if TYPE_CHECKING:
    from lstm_core.predictor import Forecaster

# What a logged model carries as code: the pyfunc (pipelines/pyfunc_model.py) and lstm_core/.
PYFUNC_CODE = Path(__file__).parent.with_name("pyfunc_model.py")
CORE_PACKAGE = Path(__file__).resolve().parents[2] / "lstm_core"


# mlflow/pyfunc/utils/data_validation.py's warning (after the colour code it opens with)
_TYPE_HINT_ADVICE = re.compile(r"(\x1b\[\d+m)?Add type hints to the `predict` method")

# The request params a logged model declares in its signature, with their defaults (a model
# logged by an older version may declare fewer: `param_names` reads a loaded model's).
REQUEST_PARAMS = {"intervals": False, "days": 1, "recalibrate": False}


# What MLflow 3.17 refuses in a LoggedModel's name (mlflow/utils/validation.py:
# _validate_logged_model_name); a ticker may hold a dot (000001.SZ), a registered name may too.
_NOT_IN_LOGGED_NAME = re.compile(r"[/:.%\"']")


def logged_model_name(registered_name: str) -> str:
    """The LoggedModel's name for a version of ``registered_name`` (the experiment's Models
    tab lists them by it; `runs:/<run_id>/<this name>` loads the run's model)."""
    return _NOT_IN_LOGGED_NAME.sub("_", registered_name)


def pip_requirements() -> list[str]:
    v = library_versions()
    reqs = [f"mlflow=={v['mlflow']}"] if "mlflow" in v else ["mlflow"]
    for pkg in ("tensorflow", "keras", "pandas", "numpy"):
        if pkg in v:
            reqs.append(f"{pkg}=={v[pkg]}")
    return reqs


def log_forecaster(
    run_id: str,
    forecaster: Forecaster,
    forecaster_dir: Path,
    input_example: pd.DataFrame,
    *,
    name: str,
    ticker: str,
) -> str:
    """Save ``forecaster`` in ``forecaster_dir`` and log it as a pyfunc model 'from code',
    named after ``name`` (the registered model's, :func:`logged_model_name`) and tagged with
    ``ticker``; returns the model URI.

    The signature's inputs are `date` and the feature columns the network reads, nothing
    else, so a plain price frame (any other columns, any order) is accepted; its outputs are
    the default request's (`date`, `forecast`). MLflow loads the saved model through the
    pyfunc and forecasts the input example before it logs it: that is the check that the
    saved model serves, so the forecaster in hand is not asked first.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from lstm_core.data import DATE_COLUMN, model_input

    forecaster.save(forecaster_dir)
    input_example = model_input(input_example, forecaster.preprocessor)
    params = dict(REQUEST_PARAMS)
    # `date` is typed Any: MLflow's datetime check refuses ISO strings in a DataFrame (pandas
    # 3 string columns); the model itself reads datetimes and ISO strings alike.
    columns = forecaster.preprocessor.feature_cfg.columns
    inputs = Schema([ColSpec(AnyType(), DATE_COLUMN), *(ColSpec("double", c) for c in columns)])
    # `date` holds datetime.date (JSON: YYYY-MM-DD); MLflow's nearest type is datetime
    outputs = Schema([ColSpec("datetime", DATE_COLUMN), ColSpec("double", "forecast")])
    signature = ModelSignature(
        inputs=inputs, outputs=outputs, params=infer_signature(input_example, params=params).params
    )
    logged = _log_pyfunc(
        run_id, logged_model_name(name), ticker, forecaster_dir, signature, input_example
    )
    return logged.model_uri


# MLflow loads a model from code (to load it, and to check the input example when logging it)
# with a mock `dbutils` swapped into sys.modules and back: two loads at once in threads of one
# process leave the mock there for good. One load at a time.
_CODE_LOAD = threading.Lock()


def _log_pyfunc(
    run_id: str,
    name: str,
    ticker: str,
    forecaster_dir: Path,
    signature: Any,
    example: pd.DataFrame,
):
    import mlflow.pyfunc
    from mlflow.models import Model

    client = _client()
    # Created here in the run's own experiment: left to itself, Model.log(run_id=...) puts
    # the logged model (and its files) in the fluent API's current experiment instead.
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={TAG_TICKER: ticker},
        model_type="lstm-price-forecaster",
    )
    with _CODE_LOAD:
        return Model.log(
            artifact_path=None,
            name=name,
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


def load_model(name: str, alias: str):
    """The registered champion as a pyfunc model (the registry is the only source)."""
    import mlflow.pyfunc

    _hide_type_hint_advice()
    with _CODE_LOAD:
        return mlflow.pyfunc.load_model(f"models:/{name}@{alias}")


def param_names(model) -> set[str]:
    """The request params a loaded model's signature declares (MLflow drops any other, with
    a warning on the console)."""
    schema = model.metadata.get_params_schema()
    return {p.name for p in schema.params} if schema is not None else set()


def _hide_type_hint_advice() -> None:
    """Keep MLflow's advice to the author of a model whose `predict` has no type hints (one
    logged by an older version) off the console: it is raised as the model loads, nothing its
    user can act on. A filter cannot: MLflow raises it under its own `catch_warnings` with a
    "once" filter before every other; so the display drops it (installed once, for good:
    swapping it back and forth would race with other threads' `catch_warnings`)."""
    import warnings

    shown = warnings.showwarning
    if getattr(shown, "hides_type_hint_advice", False):
        return

    def showwarning(message, category, *args, **kwargs):
        if not (issubclass(category, UserWarning) and _TYPE_HINT_ADVICE.match(str(message))):
            shown(message, category, *args, **kwargs)

    showwarning.hides_type_hint_advice = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def predict(model, frame: pd.DataFrame, params: Mapping[str, Any], label: str) -> pd.DataFrame:
    """``model.predict``; a request the model refuses (lstm_core's DataError, which the pyfunc
    raises as INVALID_PARAMETER_VALUE) is the user's to fix: a PipelineError naming `label`."""
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(frame, params=params)
    except MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise PipelineError(f"{label}: {exc.message}") from None


def download_forecaster(name: str, version: str, dst: Path) -> Path:
    """Fetch a version's bundled forecaster folder (model.keras + preprocessing state)."""
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)
    )
    return Path(local) / "artifacts" / "forecaster"
