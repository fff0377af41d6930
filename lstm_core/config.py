"""Frozen, validated configuration of the pure computation (the pipelines build it from
`mlflow.yaml`).  Defaults are the tutorial's (60-day windows on the opening price, four LSTM(50)
layers with Dropout(0.2), Adam, MSE, 20 epochs, batch 32) but for the log-return target (README).
"""

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRICE_COLUMNS = ("open", "high", "low", "close")
FEATURE_COLUMNS = (*PRICE_COLUMNS, "volume")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class FeatureConfig(_Frozen):
    lookback: int = Field(60, ge=1, description="days of history in one input window")
    columns: tuple[str, ...] = ("open",)
    target: str = "open"
    target_transform: Literal["price", "log_return"] = "log_return"
    # unset (None): "standard" for log returns (benchmarks/bench_transform.py, README), "minmax"
    # for price levels (the tutorial)
    scaler: Literal["minmax", "standard"] = "standard"

    @model_validator(mode="before")
    @classmethod
    def _default_scaler(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("scaler") is None:
            price = data.get("target_transform") == "price"
            return {**data, "scaler": "minmax" if price else "standard"}
        return data

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one feature column is required")
        if bad := [c for c in v if c not in FEATURE_COLUMNS]:
            known = list(FEATURE_COLUMNS)
            raise ValueError(f"unknown feature column(s) {bad}; choose from {known}")
        if len(set(v)) != len(v):
            raise ValueError("feature columns must be unique")
        return v

    @model_validator(mode="after")
    def _target_is_a_price(self) -> Self:
        if self.target not in PRICE_COLUMNS:
            raise ValueError(f"target must be one of {list(PRICE_COLUMNS)}, got {self.target!r}")
        if self.target not in self.columns:
            raise ValueError(f"target {self.target!r} must also be one of the feature columns")
        return self


class ModelConfig(_Frozen):
    layers: int = Field(4, ge=1, le=16)
    units: int = Field(50, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    learning_rate: float = Field(1e-3, gt=0.0)
    # "fast": the Numba engine (lstm_core.engine) trains the network; "keras": model.fit, the
    # readable reference and fallback.  The same plain Keras network either way.
    backend: Literal["fast", "keras"] = "fast"


class TrainingConfig(_Frozen):
    epochs: int = Field(20, ge=1)  # 0 would register an untrained network
    batch_size: int = Field(32, ge=1)
    seed: int = Field(42, ge=0)
    early_stopping_patience: int = Field(0, ge=0, description="0 disables early stopping")
    shuffle: bool = True


class EvaluationConfig(_Frozen):
    # the bands are conformal, calibrated on the validation days: there must be some
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    interval_levels: tuple[float, ...] = (0.8, 0.95)
    backtest_folds: int = Field(3, ge=0, description="0 disables the walk-forward backtest")
    backtest_epochs: int | None = Field(
        None, ge=1, description="epochs per fold; None: training.epochs (the registered setup)"
    )
    forecast_days: int = Field(5, ge=1, description="days forecast, and calibrated for")

    @field_validator("interval_levels")
    @classmethod
    def _levels_in_range(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        for level in v:
            if not 0.0 < level < 1.0:
                raise ValueError(f"interval level {level} must lie strictly between 0 and 1")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> Self:
        if 1.0 - self.val_fraction - self.test_fraction <= 0.0:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) + test_fraction ({self.test_fraction}) "
                "must leave a positive training fraction (the three must sum to 1)"
            )
        return self
