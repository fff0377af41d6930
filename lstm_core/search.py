"""One candidate of a hyperparameter search: train on the training part, score on the validation
part in prices.  The test part is cut off before anything is transformed or windowed, so no
candidate (and no choice among them) depends on the days the final model is tested on.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_core.config import FeatureConfig, ModelConfig, TrainingConfig
from lstm_core.data import (
    DataError,
    Preprocessor,
    SplitFrames,
    SplitWindows,
    fit_preprocessor,
    make_dataset,
)
from lstm_core.evaluate import predict_prices, rmse
from lstm_core.train import TrainResult, train_network


@dataclass(frozen=True)
class SearchData:
    """Training and validation windows of one candidate's features (no test windows)."""

    train: SplitWindows
    val: SplitWindows
    preprocessor: Preprocessor

    def val_rmse(self, model: Any) -> float:
        """RMSE in prices of ``model``'s one-pass forecasts on the validation windows."""
        predicted = predict_prices(model, self.val, self.preprocessor)
        with np.errstate(all="ignore"):
            return rmse(self.val.actual, predicted)


def search_data(frames: SplitFrames, feature_cfg: FeatureConfig) -> SearchData:
    """Window the training and validation parts only; the test rows are dropped first."""
    seen = frames.frame.iloc[: frames.val_end]
    if frames.val_end <= frames.train_end:
        raise DataError("a search needs a validation part (evaluation.val_fraction > 0)")
    pre = fit_preprocessor(frames.train, feature_cfg)
    # The validation part plays "test" of a frame that ends where validation ends.
    data = make_dataset(SplitFrames(seen, frames.train_end, frames.train_end), pre)
    return SearchData(train=data.train, val=data.test, preprocessor=pre)


def epoch_scorer(data: SearchData, report: Callable[[int, float], None]) -> Any:
    """A Keras callback reporting each epoch's validation RMSE in prices, comparable across
    candidates (scaled losses are not: scalers and transforms differ)."""
    import keras

    class _EpochScorer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = data.val_rmse(self.model)
            if logs is not None:
                logs["val_rmse"] = value
            report(epoch, value)

    return _EpochScorer()


def train_candidate(
    data: SearchData, model_cfg: ModelConfig, training_cfg: TrainingConfig, callbacks: Sequence = ()
) -> tuple[TrainResult, float]:
    """Build and train one candidate; returns the training result and its validation RMSE."""
    result = train_network(model_cfg, training_cfg, data.train, data.val, callbacks)
    return result, data.val_rmse(result.model)
