"""The settings: one frozen, validated section per concern of `mlflow.yaml`."""

from __future__ import annotations

import datetime as dt
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _valid_cron(v: str) -> str:
    """A cron expression both readers of it accept: `status` (cronsim) and Prefect's scheduler."""
    if len(v.split()) != 5:
        raise ValueError(
            f"{v!r} is not a cron expression: it has five fields (minute hour day month weekday)"
        )
    from cronsim import CronSim, CronSimError

    try:
        CronSim(v, dt.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"{v!r} is not a valid cron expression: {exc}") from None
    day, weekday = v.upper().split()[2::2]
    # cronsim reads these, Prefect's scheduler (croniter) refuses them
    if "W" in day or "L" in weekday:
        raise ValueError(
            f"{v!r}: the scheduler does not take W in the day field or L in the weekday field"
        )
    return v


# MLflow's store schemes this project works with; a database scheme may name a driver
# (postgresql+psycopg://...). file: and plain paths are MLflow's file store, which
# MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SERVER_SCHEMES = ("http", "https")
_SUPPORTED_URIS = (
    "sqlite:///PATH (the default), postgresql://..., mysql://..., mssql://... (a database) "
    "or http(s)://HOST:PORT (a tracking server)"
)


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "lstm-stock-forecast"
    artifact_location: str = "mlartifacts"

    @field_validator("uri")
    @classmethod
    def _supported_store(cls, v: str, info: ValidationInfo) -> str:
        scheme = urlparse(v).scheme.lower()
        if scheme.split("+", 1)[0] in _DATABASE_SCHEMES or scheme in _SERVER_SCHEMES:
            return v
        if scheme in ("", "file") and v.strip():
            env = (info.context or {}).get("env", os.environ)
            if env.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
                return v
            raise ValueError(
                f"{v!r} is MLflow's file store, which MLflow refuses (maintenance mode) unless "
                f"MLFLOW_ALLOW_FILE_STORE=true: use {_SUPPORTED_URIS}"
            )
        what = f"the scheme {scheme!r}" if scheme else "an empty URI"
        raise ValueError(f"{v!r}: MLflow has no store for {what}: use {_SUPPORTED_URIS}")


class PromotionPolicy(_Section):
    metric: Literal["test_rmse", "test_mae", "mase"] = "test_rmse"
    # The challenger must beat the champion by at least this relative margin.
    min_improvement: float = Field(0.0, ge=0.0, lt=1.0)
    # Guard: model RMSE may exceed the naive forecast's by at most this fraction.
    max_worse_than_naive: float = Field(0.10, ge=0.0)


# MLflow 3.17's own rules for an alias (mlflow/utils/validation.py: _validate_model_alias_name
# and _validate_model_alias_name_reserved), checked at load so a bad one fails before training.
_ALIAS_CHARACTERS = re.compile(r"^[\w\-]*$")
_ALIAS_VERSION = re.compile(r"^[vV]\d+$")
_ALIAS_MAX_LENGTH = 255


class RegistryConfig(_Section):
    model_name: str = "lstm-{ticker}"
    alias: str = "champion"
    promotion: PromotionPolicy = PromotionPolicy()

    @field_validator("model_name")
    @classmethod
    def _has_ticker(cls, v: str) -> str:
        if "{ticker}" not in v:
            raise ValueError("must contain the placeholder {ticker}")
        return v

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, v: str) -> str:
        if not v:
            raise ValueError("MLflow refuses an empty alias: name one, e.g. champion")
        if not _ALIAS_CHARACTERS.match(v):
            raise ValueError(
                f"{v!r}: MLflow takes only letters, digits, underscores (_) and dashes (-) "
                "in an alias"
            )
        if len(v) > _ALIAS_MAX_LENGTH:
            raise ValueError(f"MLflow takes at most {_ALIAS_MAX_LENGTH} characters in an alias")
        if v.lower() == "latest":
            raise ValueError(f"{v!r}: MLflow reserves 'latest' (in any case): choose another alias")
        if _ALIAS_VERSION.match(v):
            raise ValueError(f"{v!r}: MLflow reserves v<number> for versions: choose another alias")
        return v

    def name_for(self, ticker: str) -> str:
        return self.model_name.replace("{ticker}", ticker)


class JumpLimits(_Section):
    """A day-over-day move beyond these is rejected as a likely split (unadjusted prices)."""

    drop: float = Field(0.45, gt=0.0, lt=1.0)
    rise: float = Field(0.80, gt=0.0)


class DataConfig(_Section):
    store: str = "data/store"
    incoming: str = "data/incoming"
    archive: str = "data/archive"
    rejected: str = "data/rejected"
    forecasts: str = "data/forecasts"
    sources: tuple[str, ...] = ("data/msft.csv",)
    ticker: str | None = "MSFT"
    column_map: dict[str, str] | None = None
    missing: Literal["error", "drop", "ffill"] = "error"
    replace: bool = False
    min_new_rows: int = Field(1, ge=1)
    # null turns the split-sized-jump check off (e.g. for knowingly unadjusted prices).
    max_daily_change: JumpLimits | None = JumpLimits()
    # The exchange whose trading days forecasts are dated on (exchange_calendars' code, e.g.
    # XNYS, XSHG); null: Monday to Friday.
    calendar: str | None = None

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import exchange_calendars

        names = exchange_calendars.get_calendar_names(include_aliases=True)
        if v not in names:
            if v.upper() in names:  # the codes are upper case
                raise ValueError(f"unknown exchange calendar {v!r}: did you mean {v.upper()!r}?")
            raise ValueError(
                f"unknown exchange calendar {v!r}: use an exchange_calendars code such as XNYS "
                "(New York), XSHG (Shanghai and Shenzhen), XLON, XHKG, or null for Monday-Friday"
            )
        return v


class ScheduleConfig(_Section):
    # 18:30 on weekdays, after the close of the trading day.
    cron: str = "30 18 * * 1-5"
    timezone: str = "UTC"
    event: str = "prices.updated"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _valid_cron(v)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import available_timezones

        if v not in available_timezones():  # the names Prefect's scheduler accepts
            raise ValueError(
                f"unknown timezone {v!r}: give an IANA name such as America/New_York or UTC"
            )
        return v


class MonitoringConfig(_Section):
    """Live scoring of the champion's logged forecasts, and when it counts as degraded."""

    window_days: int = Field(20, ge=1)  # rolling window, in scored trading days
    min_days: int = Field(10, ge=1)  # scored days needed before a verdict
    max_live_ratio: float = Field(1.5, gt=0.0)  # degraded: live RMSE > this x naive RMSE
    coverage_tolerance: float = Field(0.25, ge=0.0, le=1.0)  # degraded: below nominal - this
    event: str = "model.degraded"


class RuntimeConfig(_Section):
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    prefect_api_url: str | None = None


# Sections and keys a search may vary (their values are validated like the file's own).
_TUNABLE = {"features": FeatureConfig, "model": ModelConfig, "training": TrainingConfig}


class SearchParam(_Section):
    """One searched setting: an int or float range (`low`..`high`, `log`, `step`) or `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[str | int | float | bool, ...] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self


class TuningConfig(_Section):
    """`lstm-pipeline tune`: an Optuna study per ticker on the validation part."""

    trials: int = Field(40, ge=1)
    timeout_minutes: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    pruner: Literal["median", "hyperband", "none"] = "median"
    # median: trials finished before pruning starts, and epochs before a trial can be pruned
    startup_trials: int = Field(5, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    workers: int = Field(2, ge=1)
    # null: an Optuna journal file under the project (.optuna/studies.journal); a path: a
    # journal file there; a URL (postgresql+psycopg://...): a database. Not SQLite.
    storage: str | None = None
    study: str = "tune-{ticker}"
    # A cron expression for the served tuning deployment; null: not served.
    cron: str | None = None
    space: dict[str, SearchParam] = {
        "features.lookback": SearchParam(low=20, high=90, step=10),
        "features.scaler": SearchParam(choices=("minmax", "standard")),
        "features.target_transform": SearchParam(choices=("log_return", "price")),
        "model.layers": SearchParam(low=1, high=4),
        "model.units": SearchParam(low=10, high=100, step=10),
        "model.dropout": SearchParam(low=0.0, high=0.4),
        "model.learning_rate": SearchParam(low=1e-4, high=1e-2, log=True),
        "training.batch_size": SearchParam(choices=(16, 32, 64)),
    }

    @field_validator("storage")
    @classmethod
    def _not_sqlite(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("sqlite"):
            raise ValueError(
                "SQLite deadlocks under parallel Optuna workers: use a journal file path "
                "(or null) or a database server URL"
            )
        return v

    @field_validator("study")
    @classmethod
    def _study_has_ticker(cls, v: str) -> str:
        if "{ticker}" not in v:
            raise ValueError("must contain the placeholder {ticker}")
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else _valid_cron(v)

    @field_validator("space")
    @classmethod
    def _known_settings(cls, v: dict[str, SearchParam]) -> dict[str, SearchParam]:
        if not v:
            raise ValueError("the search space is empty")
        for key, param in v.items():
            section, _, name = key.partition(".")
            model = _TUNABLE.get(section)
            if model is None or name not in model.model_fields:
                raise ValueError(
                    f"{key!r} is not a setting a search can vary "
                    f"(features.*, model.*, training.* keys)"
                )
            default = model.model_fields[name].default
            if param.choices is None and (
                isinstance(default, bool) or not isinstance(default, int | float)
            ):
                raise ValueError(f"{key!r} is not numeric: give choices")
            if param.choices is None and isinstance(default, int) and param.log is False:
                whole = [x for x in (param.low, param.high, param.step) if x is not None]
                if any(float(x) != int(x) for x in whole):
                    raise ValueError(f"{key!r} is an integer setting: whole low/high/step")
            values = param.choices if param.choices is not None else (param.low, param.high)
            for value in values:
                if bool_as_number(model.model_fields[name].annotation, value, key):
                    raise ValueError(f"{key}={value!r}: expected a number, got a boolean")
                if isinstance(default, int) and not isinstance(default, bool):
                    value = int(value)
                try:
                    model.model_validate({name: value})
                except ValidationError as exc:
                    raise ValueError(f"{key}={value!r}: {exc.errors()[0]['msg']}") from None
        return v

    def study_for(self, ticker: str) -> str:
        return self.study.replace("{ticker}", ticker)


class Settings(_Section):
    """Every setting, one section per concern."""

    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    tuning: TuningConfig = TuningConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    # Folder the relative paths were resolved against (the config file's folder).
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def store_path(self) -> Path:
        return self.path(self.data.store)

    def flat(self) -> dict[str, Any]:
        """Every value as `section.key` (nested dicts joined with dots): stable MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k in sorted(value):
                    walk(f"{prefix}.{k}" if prefix else str(k), value[k])
            elif isinstance(value, list | tuple):
                out[prefix] = ",".join(str(v) for v in value)
            else:
                out[prefix] = value

        # A training run's params: the search settings belong to the tuning runs only.
        walk("", self.model_dump(mode="json", exclude={"base_dir", "tuning"}))
        return out


def _leaves(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (`int | None` -> int, NoneType), else itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(leaf for arg in typing.get_args(annotation) for leaf in _leaves(arg))
    return (annotation,)


def bool_as_number(annotation: Any, value: Any, key: str) -> str | None:
    """The dotted key where `value` gives true/false to a number field of `annotation`.

    Pydantic reads true as 1 for an int or float field (`epochs: true` trains one epoch);
    YAML also reads yes/no/on/off as booleans. Walks sections, lists and mappings.
    """
    leaves = _leaves(annotation)
    if isinstance(value, bool):
        numeric = int in leaves or float in leaves
        return key if numeric and bool not in leaves else None
    for leaf in leaves:
        origin, args = typing.get_origin(leaf), typing.get_args(leaf)
        if isinstance(leaf, type) and issubclass(leaf, BaseModel) and isinstance(value, dict):
            for name, field in leaf.model_fields.items():
                if name in value:
                    where = f"{key}.{name}" if key else name
                    hit = bool_as_number(field.annotation, value[name], where)
                    if hit:
                        return hit
        elif origin in (tuple, list) and isinstance(value, list | tuple) and args:
            for i, item in enumerate(value):
                if origin is list or (len(args) == 2 and args[1] is Ellipsis):
                    item_type = args[0]
                else:
                    item_type = args[i] if i < len(args) else None
                hit = bool_as_number(item_type, item, f"{key}.{i}")
                if hit:
                    return hit
        elif origin is dict and isinstance(value, dict) and len(args) == 2:
            for k, item in value.items():
                hit = bool_as_number(args[1], item, f"{key}.{k}")
                if hit:
                    return hit
    return None
