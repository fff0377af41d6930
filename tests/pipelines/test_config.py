from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import (
    CONFIG_ENV,
    ConfigNotFoundError,
    find_config,
    init_project,
    load_settings,
    resolve_tracking_uri,
    template_text,
)
from pipelines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
REPO_CONFIG = REPO / "mlflow.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlflow.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_config_is_valid_and_matches_the_tutorial():
    s = load_settings(REPO_CONFIG, env={})
    assert s.features.lookback == 60
    assert s.features.columns == ("open",)
    assert s.features.target == "open"
    assert (s.model.layers, s.model.units, s.model.dropout) == (4, 50, 0.2)
    assert (s.training.epochs, s.training.batch_size) == (20, 32)
    assert s.registry.name_for("MSFT") == "lstm-MSFT"


def test_stable_key_names_are_all_present():
    flat = load_settings(REPO_CONFIG, env={}).flat()
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


def test_the_package_ships_the_repos_config_byte_for_byte():
    # `lstm-pipeline init` writes the package's copy; `make run` reads the repo's.
    assert template_text().encode("utf-8") == REPO_CONFIG.read_bytes()


def test_config_is_found_in_the_nearest_folder_then_env_then_explicit(tmp_path):
    project = tmp_path / "project"
    deep = project / "data" / "incoming"
    deep.mkdir(parents=True)
    cfg = write(project, "")
    assert find_config(env={}, cwd=deep) == cfg
    assert find_config(env={}, cwd=project) == cfg
    (tmp_path / "other").mkdir()
    other = write(tmp_path / "other", "")
    assert find_config(env={CONFIG_ENV: str(other)}, cwd=deep) == other
    explicit = tmp_path / "explicit.yaml"
    assert find_config(explicit, env={CONFIG_ENV: str(other)}, cwd=deep) == explicit
    s = load_settings(env={}, path=find_config(env={}, cwd=deep))
    assert s.base_dir == project and s.store_path == project / "data" / "store"


def test_no_config_anywhere_names_init(tmp_path):
    with pytest.raises(ConfigNotFoundError) as err:
        find_config(env={}, cwd=tmp_path)
    message = str(err.value)
    assert "lstm-pipeline init" in message and str(tmp_path) in message
    assert "\n" not in message


def test_init_writes_the_template_and_the_data_folders_and_never_overwrites(tmp_path):
    created = init_project(tmp_path / "new")
    cfg = tmp_path / "new" / "mlflow.yaml"
    assert created[0] == cfg and cfg.read_text(encoding="utf-8") == template_text()
    s = load_settings(cfg, env={})
    for name in (s.data.store, s.data.incoming, s.data.archive, s.data.rejected):
        assert (tmp_path / "new" / name).is_dir(), name
    cfg.write_text("# mine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists"):
        init_project(tmp_path / "new")
    assert cfg.read_text(encoding="utf-8") == "# mine\n"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["data", "mlflow.yaml"]
