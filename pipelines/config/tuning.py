"""The `tuning:` section: an Optuna search per ticker, and the settings its space may vary."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from lstm_core.config import FeatureConfig, ModelConfig, TrainingConfig
from pipelines.config.checks import Section, bool_as_number, has_ticker, valid_cron

# Sections and keys a search may vary (their values are validated like the file's own).
_TUNABLE = {"features": FeatureConfig, "model": ModelConfig, "training": TrainingConfig}


class SearchParam(Section):
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


class TuningConfig(Section):
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
        return has_ticker(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else valid_cron(v)

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
