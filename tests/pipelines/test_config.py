from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import DEFAULT_CONFIG, load_settings, resolve_tracking_uri
from pipelines.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlflow.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_config_is_valid_and_matches_the_tutorial():
    s = load_settings(DEFAULT_CONFIG, env={})
    assert s.features.lookback == 60
    assert s.features.columns == ("open",)
    assert s.features.target == "open"
    assert (s.model.layers, s.model.units, s.model.dropout) == (4, 50, 0.2)
    assert (s.training.epochs, s.training.batch_size) == (20, 32)
    assert s.registry.name_for("MSFT") == "lstm-MSFT"


def test_stable_key_names_are_all_present():
    flat = load_settings(DEFAULT_CONFIG, env={}).flat()
    for key in [
        "tracking.uri",
        "tracking.experiment",
        "registry.model_name",
        "data.store",
        "data.incoming",
        "features.lookback",
        "features.columns",
        "features.target",
        "features.target_transform",
        "model.layers",
        "model.units",
        "model.dropout",
        "training.epochs",
        "training.batch_size",
        "training.seed",
        "evaluation.test_fraction",
        "schedule.cron",
    ]:
        assert key in flat, key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  epochs: -1\n", "training.epochs"),
        ("features:\n  lookback: 0\n", "features.lookback"),
        ("features:\n  lookbak: 5\n", "features.lookbak"),
        ("nonsense:\n  a: 1\n", "nonsense"),
        ("training:\n  epochs: many\n", "training.epochs"),
        ("model:\n  units: [1, 2]\n", "model.units"),
        ("evaluation:\n  test_fraction: 0.6\n  val_fraction: 0.5\n", "evaluation"),
        ("evaluation:\n  intervals: magic\n", "evaluation.intervals"),
        ("evaluation:\n  val_fraction: 0.0\n", "evaluation"),  # conformal needs validation
        ("features:\n  target_transform: diff\n", "features.target_transform"),
        ("registry:\n  model_name: lstm\n", "registry.model_name"),
        ("schedule:\n  cron: every day\n", "schedule.cron"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert err.value.key == key
    assert str(path) in str(err.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "a: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_overrides_parse_yaml_scalars_and_lists(tmp_path):
    path = write(tmp_path, "")
    s = load_settings(
        path,
        ["training.epochs=3", "features.columns=[open, close]", "registry.promotion.metric=mase"],
        env={},
    )
    assert s.training.epochs == 3
    assert s.features.columns == ("open", "close")
    assert s.registry.promotion.metric == "mase"
    with pytest.raises(ConfigError) as err:
        load_settings(path, ["training.epochs"], env={})
    assert "section.key=value" in str(err.value)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    s = load_settings(write(tmp_path, "data:\n  store: st\n"), env={})
    assert s.store_path == tmp_path / "st"
    assert resolve_tracking_uri(s) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, "tracking:\n  uri: sqlite:///x.db\n")
    s = load_settings(
        path,
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "PREFECT_API_URL": "http://h/api"},
    )
    assert s.tracking.uri == "http://127.0.0.1:5999"
    assert s.runtime.prefect_api_url == "http://h/api"


def test_connecting_to_mlflow_does_not_leak_into_the_next_settings(tmp_path, monkeypatch):
    from pipelines import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = load_settings(write(tmp_path, "tracking:\n  experiment: a\n"))
    tracking.connect(first)
    other = tmp_path / "other"
    other.mkdir()
    second = load_settings(write(other, ""))
    assert resolve_tracking_uri(second) == f"sqlite:///{other / 'mlflow.db'}"
