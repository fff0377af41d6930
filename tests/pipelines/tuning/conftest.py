"""What the tuning tests share: a small search space on the tiny project."""

from __future__ import annotations

from tests.pipelines.conftest import TINY_CONFIG

TUNING = """
tuning:
  trials: 3
  workers: 1
  startup_trials: 2
  warmup_epochs: 0
  space:
    features.lookback: {low: 3, high: 8}
    model.units: {low: 2, high: 6, step: 2}
    model.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
    features.scaler: {choices: [minmax, standard]}
"""


def tuning_settings(folder, extra: str = TUNING, overrides=("training.epochs=2",)):
    """The tiny project's settings in `folder`, with `extra` (by default TUNING) appended."""
    from pipelines.config import load_settings

    (folder / "mlflow.yaml").write_text(TINY_CONFIG + extra, encoding="utf-8")
    return load_settings(folder / "mlflow.yaml", list(overrides), env={})
