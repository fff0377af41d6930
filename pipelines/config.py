"""`mlflow.yaml`: parsed and validated once into typed, frozen settings.

Unknown keys, wrong types and impossible values are errors naming the file and the key.
Relative paths resolve against the config file's folder. `MLFLOW_TRACKING_URI` and
`PREFECT_API_URL` from the environment win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig
from pipelines.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "mlflow.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "lstm-stock-forecast"
    artifact_location: str = "mlartifacts"


class PromotionPolicy(_Section):
    metric: Literal["test_rmse", "test_mae", "mase"] = "test_rmse"
    # The challenger must beat the champion by at least this relative margin.
    min_improvement: float = Field(0.0, ge=0.0, lt=1.0)
    # Guard: model RMSE may exceed the naive forecast's by at most this fraction.
    max_worse_than_naive: float = Field(0.10, ge=0.0)


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


class ScheduleConfig(_Section):
    # 18:30 on weekdays, after the close of the trading day.
    cron: str = "30 18 * * 1-5"
    timezone: str = "UTC"
    event: str = "prices.updated"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("a cron expression has five fields")
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

        walk("", self.model_dump(mode="json", exclude={"base_dir"}))
        return out


def _parse_value(raw: str) -> Any:
    # YAML scalars give `--set training.epochs=3` an int and `features.columns=[open,close]` a list.
    return yaml.safe_load(raw) if raw != "" else ""


def _apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    if "=" not in assignment:
        raise ConfigError(source, assignment, "expected --set section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(source, dotted, "expected section.key")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"{k!r} is not a section")
        node = child
    node[keys[-1]] = _parse_value(raw)


def _error_key(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def load_settings(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Settings:
    """Read, override, validate. Raises ConfigError naming the file and the key."""
    env = dict(os.environ) if env is None else env
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    cfg_path = cfg_path.expanduser().resolve()
    if not cfg_path.is_file():
        raise ConfigError(cfg_path, "(file)", "configuration file not found")
    try:
        raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"line {line + 1}" if line is not None else "(file)"
        raise ConfigError(cfg_path, where, f"not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(cfg_path, "(top level)", "expected a mapping of sections")
    for assignment in overrides:
        _apply_override(raw, assignment, f"{cfg_path} (--set)")

    tracking = raw.setdefault("tracking", {}) if isinstance(raw.get("tracking", {}), dict) else {}
    if env.get("MLFLOW_TRACKING_URI"):
        tracking["uri"] = env["MLFLOW_TRACKING_URI"]
    runtime = raw.setdefault("runtime", {}) if isinstance(raw.get("runtime", {}), dict) else {}
    if env.get("PREFECT_API_URL"):
        runtime["prefect_api_url"] = env["PREFECT_API_URL"]

    try:
        settings = Settings.model_validate({**raw, "base_dir": cfg_path.parent})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(cfg_path, _error_key(first), first["msg"]) from None
    return settings


def resolve_tracking_uri(settings: Settings) -> str:
    """Make a relative SQLite path absolute against the config folder."""
    uri = settings.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(settings.path(uri[len(prefix) :]))
    return uri
