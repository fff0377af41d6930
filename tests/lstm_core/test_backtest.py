import numpy as np
import pytest

from lstm_core.backtest import FOLD_COLUMNS, fold_bounds, untrainable, walk_forward_backtest
from lstm_core.config import EvaluationConfig
from lstm_core.data import DataError
from tests.lstm_core.conftest import TINY_EVAL, TINY_FEATURES, TINY_MODEL, TINY_TRAINING, make_frame


def test_fold_bounds():
    assert fold_bounds(100, EvaluationConfig(test_fraction=0.2, backtest_folds=2)) == [
        (80, 90),
        (90, 100),
    ]
    assert fold_bounds(100, EvaluationConfig(backtest_folds=0)) == []
    with pytest.raises(DataError):
        fold_bounds(10, EvaluationConfig(test_fraction=0.1, backtest_folds=2))


def test_untrainable_names_the_step_that_fails():
    assert untrainable(make_frame(120), TINY_FEATURES, TINY_EVAL) is None
    step, exc = untrainable(make_frame(8), TINY_FEATURES, TINY_EVAL)
    assert step == "train" and isinstance(exc, DataError)
    many = TINY_EVAL.model_copy(update={"backtest_folds": 30})  # 24 test rows, 30 folds
    step, exc = untrainable(make_frame(120), TINY_FEATURES, many)
    assert step == "backtest" and "fewer than 30 backtest folds" in str(exc)


def test_walk_forward_backtest_refits_per_fold():
    df = make_frame(120)
    folds = walk_forward_backtest(df, TINY_FEATURES, TINY_EVAL, TINY_MODEL, TINY_TRAINING)
    assert list(folds.columns) == FOLD_COLUMNS
    assert list(folds["fold"]) == [1, 2]
    assert list(folds["train_rows"]) == [96, 108] and list(folds["n_test"]) == [12, 12]
    assert folds["test_start"].iloc[1] > folds["test_end"].iloc[0]
    assert np.isfinite(folds[["rmse", "naive_rmse", "skill"]].to_numpy()).all()
    np.testing.assert_allclose(folds["skill"], 1 - folds["rmse"] / folds["naive_rmse"])


@pytest.mark.parametrize(("backtest_epochs", "expected"), [(None, 3), (2, 2)])
def test_folds_retrain_the_registered_configuration(monkeypatch, backtest_epochs, expected):
    from lstm_core import train

    calls = []
    real = train.train_model

    def spy(model, X, y, X_val, y_val, cfg, callbacks=(), backend="fast"):
        calls.append((cfg, backend, X_val))
        return real(model, X, y, X_val, y_val, cfg, callbacks, backend=backend)

    monkeypatch.setattr(train, "train_model", spy)
    training = TINY_TRAINING.model_copy(update={"epochs": 3, "early_stopping_patience": 2})
    eval_cfg = TINY_EVAL.model_copy(update={"backtest_epochs": backtest_epochs})
    walk_forward_backtest(
        make_frame(120),
        TINY_FEATURES,
        eval_cfg,
        TINY_MODEL.model_copy(update={"backend": "fast"}),
        training,
    )
    assert len(calls) == 2
    for cfg, backend, X_val in calls:
        assert backend == "fast" and X_val is None
        assert cfg.epochs == expected and cfg.early_stopping_patience == 0
        assert (cfg.batch_size, cfg.seed) == (training.batch_size, training.seed)


def test_the_defaults_backtest_three_folds_for_as_many_epochs_as_training():
    cfg = EvaluationConfig()
    assert cfg.backtest_folds == 3 and cfg.backtest_epochs is None
