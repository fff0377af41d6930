import pytest
from pydantic import ValidationError

from lstm_core.config import FeatureConfig, ModelConfig


def test_scaler_defaults_to_standard_for_log_returns_and_minmax_for_prices():
    assert FeatureConfig().scaler == "standard"
    assert FeatureConfig(scaler=None).scaler == "standard"
    assert FeatureConfig(target_transform="price").scaler == "minmax"  # the tutorial
    assert FeatureConfig(target_transform="price", scaler="standard").scaler == "standard"
    assert FeatureConfig(scaler="minmax").scaler == "minmax"


def test_two_backends_only():
    assert ModelConfig().backend == "fast"
    assert ModelConfig(backend="keras").backend == "keras"
    for gone in ("fused", "wavefront"):
        with pytest.raises(ValidationError):
            ModelConfig(backend=gone)
