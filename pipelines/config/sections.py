"""The settings: one frozen, validated section per concern of `mlflow.yaml` (the `tuning:`
section in :mod:`.tuning`, what sections share in :mod:`.checks`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationInfo, field_validator

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
from pipelines.config.checks import Section, has_ticker, valid_cron
from pipelines.config.tuning import TuningConfig

# MLflow's store schemes this project works with; a database scheme may name a driver
# (postgresql+psycopg://...). file: and plain paths are MLflow's file store, which
# MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true.
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_SERVER_SCHEMES = ("http", "https")
_SUPPORTED_URIS = (
    "sqlite:///PATH (the default), postgresql://..., mysql://..., mssql://... (a database) "
    "or http(s)://HOST:PORT (a tracking server)"
)


class TrackingConfig(Section):
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


class PromotionPolicy(Section):
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


class RegistryConfig(Section):
    model_name: str = "lstm-{ticker}"
    alias: str = "champion"
    promotion: PromotionPolicy = PromotionPolicy()

    @field_validator("model_name")
    @classmethod
    def _has_ticker(cls, v: str) -> str:
        return has_ticker(v)

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


class JumpLimits(Section):
    """A day-over-day move beyond these is rejected as a likely split (unadjusted prices)."""

    drop: float = Field(0.45, gt=0.0, lt=1.0)
    rise: float = Field(0.80, gt=0.0)


class DataConfig(Section):
    store: str = "data/store"
    incoming: str = "data/incoming"
    archive: str = "data/archive"
    rejected: str = "data/rejected"
    forecasts: str = "data/forecasts"
    sources: tuple[str, ...] = ()
    ticker: str | None = None
    column_map: dict[str, str] | None = None
    missing: Literal["error", "drop", "ffill"] = "error"
    replace: bool = False
    min_new_rows: int = Field(1, ge=1)
    # null turns the split-sized-jump check off (e.g. for knowingly unadjusted prices).
    max_daily_change: JumpLimits | None = JumpLimits()
    # The exchange whose trading days forecasts are dated on (exchange_calendars' code, e.g.
    # XNYS, XSHG); null: Monday to Friday. The default is the template's (init's mlflow.yaml).
    calendar: str | None = "XNYS"

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


class ScheduleConfig(Section):
    # 18:30 on weekdays in New York, after the close of the default calendar's (XNYS) day.
    cron: str = "30 18 * * 1-5"
    timezone: str = "America/New_York"
    event: str = "prices.updated"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return valid_cron(v)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import available_timezones

        if v not in available_timezones():  # the names Prefect's scheduler accepts
            raise ValueError(
                f"unknown timezone {v!r}: give an IANA name such as America/New_York or UTC"
            )
        return v


class MonitoringConfig(Section):
    """Live scoring of the champion's logged forecasts, and when it counts as degraded."""

    window_days: int = Field(20, ge=1)  # rolling window, in scored trading days
    min_days: int = Field(10, ge=1)  # scored days needed before a verdict
    max_live_ratio: float = Field(1.5, gt=0.0)  # degraded: live RMSE > this x naive RMSE
    coverage_tolerance: float = Field(0.25, ge=0.0, le=1.0)  # degraded: below nominal - this
    event: str = "model.degraded"


class RuntimeConfig(Section):
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    prefect_api_url: str | None = None


class Settings(Section):
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
