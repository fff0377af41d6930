import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lstm_core.config import EvaluationConfig, FeatureConfig, ModelConfig, TrainingConfig  # noqa: E402


def make_frame(n: int = 120, seed: int = 0, start: str = "2021-01-04") -> pd.DataFrame:
    """A random-walk OHLCV frame shaped like the Parquet store's output."""
    rng = np.random.default_rng(seed)
    close = 10.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0.0, 0.003, n))
    return pd.DataFrame(
        {
            "date": pd.bdate_range(start, periods=n),
            "open": open_,
            "high": np.maximum(open_, close) * 1.01,
            "low": np.minimum(open_, close) * 0.99,
            "close": close,
            "volume": rng.integers(1_000, 5_000, n).astype(float),
        }
    )


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()


TINY_FEATURES = FeatureConfig(lookback=5)
TINY_MODEL = ModelConfig(layers=1, units=4, backend="keras")
TINY_TRAINING = TrainingConfig(epochs=1, batch_size=16, seed=1)
TINY_EVAL = EvaluationConfig(
    val_fraction=0.2, test_fraction=0.2, backtest_folds=2, backtest_epochs=1
)
