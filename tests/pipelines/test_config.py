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
from pipelines.errors import ConfigError, OverrideError

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
        ("training:\n  epochs: 0\n", "training.epochs"),  # an untrained model
        ("data:\n  calendar: NYSEX\n", "data.calendar"),
        ("features:\n  lookback: 0\n", "features.lookback"),
        ("features:\n  lookbak: 5\n", "features.lookbak"),
        ("nonsense:\n  a: 1\n", "nonsense"),
        ("training:\n  epochs: many\n", "training.epochs"),
        ("model:\n  units: [1, 2]\n", "model.units"),
        ("evaluation:\n  test_fraction: 0.6\n  val_fraction: 0.5\n", "evaluation"),
        ("evaluation:\n  intervals: magic\n", "evaluation.intervals"),
        (
            "evaluation:\n  val_fraction: 0.0\n",
            "evaluation.val_fraction",
        ),  # the bands calibrate on it
        ("features:\n  target_transform: diff\n", "features.target_transform"),
        ("registry:\n  model_name: lstm\n", "registry.model_name"),
        ("schedule:\n  cron: every day\n", "schedule.cron"),
        # a cron or timezone status (cronsim, zoneinfo) or Prefect's scheduler cannot read
        ("schedule:\n  cron: '61 25 * * 1-5'\n", "schedule.cron"),
        ("schedule:\n  cron: '0 0 31 2 *'\n", "schedule.cron"),  # never fires
        ("schedule:\n  cron: '0 18 * * 5L'\n", "schedule.cron"),  # cronsim yes, Prefect no
        ("schedule:\n  cron: '0 18 ? * *'\n", "schedule.cron"),  # Prefect yes, cronsim no
        ("schedule:\n  timezone: Mars/Olympus\n", "schedule.timezone"),
        ("tuning:\n  cron: '0 3 * * 8'\n", "tuning.cron"),
        ("tuning:\n  cron: '0 3 * *'\n", "tuning.cron"),
        # a tracking URI MLflow has no store for (file stores need MLFLOW_ALLOW_FILE_STORE)
        ("tracking:\n  uri: foo://bar\n", "tracking.uri"),
        ("tracking:\n  uri: ''\n", "tracking.uri"),
        ("tracking:\n  uri: file:///tmp/mlruns\n", "tracking.uri"),
        ("tracking:\n  uri: mlruns\n", "tracking.uri"),
        # true/false (and YAML's yes/no/on/off) are not numbers
        ("training:\n  epochs: true\n", "training.epochs"),
        ("model:\n  dropout: false\n", "model.dropout"),
        ("evaluation:\n  backtest_epochs: on\n", "evaluation.backtest_epochs"),
        ("evaluation:\n  interval_levels: [0.8, yes]\n", "evaluation.interval_levels.1"),
        ("data:\n  max_daily_change: {drop: true}\n", "data.max_daily_change.drop"),
        (
            "tuning:\n  space:\n    model.units: {low: true, high: 5}\n",
            "tuning.space.model.units.low",
        ),
        ("tuning:\n  space:\n    training.epochs: {choices: [true, 5]}\n", "tuning.space"),
        # a key twice in one mapping: YAML would keep the last without a word
        ("training:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n", "training.epochs"),
        ("training:\n  epochs: 3\nmodel:\n  units: 4\ntraining:\n  seed: 1\n", "training"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert err.value.key == key
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("registry:\n  model_name: lstm\n", "registry.model_name"),
        ("tuning:\n  study: s\n", "tuning.study"),
    ],
)
def test_a_name_made_per_ticker_must_say_where_the_ticker_goes(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env={})
    assert err.value.key == key and "must contain the placeholder {ticker}" in str(err.value)


def test_a_lower_case_calendar_code_names_the_code_meant(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "data:\n  calendar: xshg\n"), env={})
    assert err.value.key == "data.calendar"
    assert err.value.problem == "unknown exchange calendar 'xshg': did you mean 'XSHG'?"


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
    # what YAML cannot read is the text as typed (YAML takes a leading * for an alias)
    crons = load_settings(path, ["schedule.cron=* * * * *", "tuning.cron=*/5 3 * * 6"], env={})
    assert (crons.schedule.cron, crons.tuning.cron) == ("* * * * *", "*/5 3 * * 6")
    with pytest.raises(ConfigError, match=r"--set features.columns=\[open: not valid YAML"):
        load_settings(path, ["features.columns=[open"], env={})


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


# Keys the template deliberately sets to another value than the built-in default (none yet):
# each would need a line in the template saying so.
TEMPLATE_DIFFERS_FROM_DEFAULT: frozenset[str] = frozenset()


def test_a_key_left_out_gets_the_value_inits_file_gives_it(tmp_path):
    # init's file calls itself the commented default: an empty file must mean the same
    # settings, key by key (any future drift between the two fails here).
    def flat(path: Path) -> dict[str, object]:
        out: dict[str, object] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = value

        settings = load_settings(path, env={})
        walk("", settings.model_dump(mode="json", exclude={"base_dir"}))
        return out

    init_project(tmp_path / "init")
    written = flat(tmp_path / "init" / "mlflow.yaml")
    empty = flat(write(tmp_path, ""))
    assert written.keys() == empty.keys()
    differ = {k: (written[k], empty[k]) for k in written if written[k] != empty[k]}
    assert differ.keys() == TEMPLATE_DIFFERS_FROM_DEFAULT, differ


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


def _number_fields(model, prefix=""):
    """Every int/float setting of `model` as a dotted key (sections walked; bools excluded)."""
    import types
    import typing

    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        leaves = typing.get_args(field.annotation) if union else (field.annotation,)
        section = [t for t in leaves if isinstance(t, type) and issubclass(t, BaseModel)]
        if section:
            yield from _number_fields(section[0], f"{prefix}{name}.")
        elif (int in leaves or float in leaves) and bool not in leaves:
            yield f"{prefix}{name}"


def test_no_number_setting_takes_a_boolean(tmp_path):
    from pipelines.config import Settings

    path = write(tmp_path, "")
    keys = list(_number_fields(Settings))
    assert "training.epochs" in keys and "data.max_daily_change.rise" in keys, keys
    assert len(keys) > 25, keys
    for key in keys:
        for raw in ("true", "false"):
            with pytest.raises(ConfigError) as err:
                load_settings(path, [f"{key}={raw}"], env={})
            assert err.value.key == key and "boolean" in err.value.problem, (key, raw)


def test_floats_still_take_exponents_that_yaml_reads_as_strings(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; pydantic turns it into the float.
    path = write(
        tmp_path, "model:\n  learning_rate: 1e-3\nevaluation:\n  interval_levels: [9e-1]\n"
    )
    s = load_settings(path, env={})
    assert s.model.learning_rate == 0.001 and s.evaluation.interval_levels == (0.9,)
    assert load_settings(path, ["model.learning_rate=5e-4"], env={}).model.learning_rate == 5e-4
    flags = load_settings(path, ["training.shuffle=false", "data.replace=yes"], env={})
    assert flags.training.shuffle is False and flags.data.replace is True


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 3\n  batch_size: 8\n  epochs: 5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value) == (
        f"{path}: training.epochs: given twice, on line 2 and line 4: keep one of them"
    )
    # a merge key (<<) is no repetition: the mapping's own key overrides the merged one
    path = write(
        tmp_path,
        "tuning:\n  space:\n    model.units: &r {low: 10, high: 100, step: 10}\n"
        "    features.lookback:\n      <<: *r\n      low: 20\n",
    )
    lookback = load_settings(path, env={}).tuning.space["features.lookback"]
    assert (lookback.low, lookback.high, lookback.step) == (20, 100, 10)


def test_schedules_and_timezones_the_scheduler_and_status_both_read(tmp_path):
    from prefect.schedules import Cron

    from pipelines.monitoring import next_cron

    for cron in ("30 18 * * 1-5", "*/15 9-17 * * MON-FRI", "0 0 L * *", "0 3 * * 6#1"):
        for tz in ("UTC", "Europe/Paris", "Asia/Shanghai"):
            text = f"schedule:\n  cron: '{cron}'\n  timezone: {tz}\ntuning:\n  cron: '{cron}'\n"
            s = load_settings(write(tmp_path, text), env={})
            assert next_cron(s)  # what `status` shows
            Cron(s.schedule.cron, timezone=s.schedule.timezone)  # what `serve` builds


def test_tracking_uris_mlflow_has_a_store_for(tmp_path):
    for uri in (
        "sqlite:///mlflow.db",
        "sqlite:////abs/mlflow.db",
        "postgresql://u@h/db",
        "postgresql+psycopg://u@h:5432/db",
        "mysql+pymysql://u@h/db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.com",
    ):
        assert (
            load_settings(write(tmp_path, ""), [f"tracking.uri={uri}"], env={}).tracking.uri == uri
        )
    # MLflow's own opt-in for its file store
    path = write(tmp_path, "tracking:\n  uri: file:///tmp/mlruns\n")
    allowed = load_settings(path, env={"MLFLOW_ALLOW_FILE_STORE": "true"})
    assert allowed.tracking.uri == "file:///tmp/mlruns"
    # from the environment: the message says where the value came from
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, ""), env={"MLFLOW_TRACKING_URI": "foo://bar"})
    assert err.value.key == "tracking.uri (from MLFLOW_TRACKING_URI)"
    assert "sqlite:///" in err.value.problem and "http(s)://" in err.value.problem


ALIASES = [
    "champion",
    "prod-2",
    "_",
    "v",
    "v3a",
    "vv3",
    "3",
    "latest2",
    "été",  # \w is Unicode in MLflow's pattern too
    "a" * 255,
    "a" * 256,
    "latest",
    "LATEST",
    "v3",
    "V12",
    "Champion!",
    "a b",
    "a.b",
    "a/b",
    "",
]


@pytest.mark.parametrize("alias", ALIASES)
def test_registry_alias_follows_exactly_mlflows_rules(tmp_path, alias):
    """The config accepts an alias exactly when MLflow 3.17's own checks do, no stricter."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
    )

    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
        mlflow_takes_it = True
    except MlflowException:
        mlflow_takes_it = False
    path = write(tmp_path, f"registry:\n  alias: '{alias}'\n")
    if mlflow_takes_it:
        assert load_settings(path, env={}).registry.alias == alias
    else:
        with pytest.raises(ConfigError) as err:
            load_settings(path, env={})
        assert str(err.value).startswith(f"{path}: registry.alias: "), err.value
        assert len(str(err.value).splitlines()) == 1


def test_keys_an_earlier_version_wrote_are_a_warning_and_their_old_options_a_refusal(
    tmp_path, caplog
):
    """Every project's mlflow.yaml held `intervals: conformal` and `mc_samples: 30` before MC
    dropout was removed, `moving_average_window: 5` before that baseline was, and `horizon: 1`
    before every model forecast one day: such a project still loads, told once to delete them."""
    from pipelines.config import loader

    text = (
        "features:\n  horizon: 1\n"
        "evaluation:\n  intervals: conformal\n  mc_samples: 30\n  moving_average_window: 5\n"
        "  backtest_folds: 1\n"
    )
    path = write(tmp_path, text)
    caplog.set_level("WARNING", logger="pipelines")
    for _ in range(2):
        assert load_settings(path, env={}).evaluation.backtest_folds == 1
    assert caplog.messages == [
        f"{path}: evaluation.intervals is no longer read (the bands are always split "
        "conformal): delete it",
        f"{path}: evaluation.mc_samples is no longer read (Monte-Carlo dropout intervals were "
        "removed): delete it",
        f"{path}: evaluation.moving_average_window is no longer read (the moving-average baseline "
        "was removed): delete it",
        f"{path}: features.horizon is no longer read (every model forecasts one day ahead): "
        "delete it",
    ]
    (tmp_path / "old").mkdir()
    refused = write(tmp_path / "old", "evaluation:\n  intervals: mc_dropout\n")
    with pytest.raises(ConfigError) as err:
        load_settings(refused, env={})
    assert err.value.key == "evaluation.intervals" and str(refused) in str(err.value)
    assert err.value.problem == loader.MC_DROPOUT_GONE
    with pytest.raises(OverrideError) as err:
        load_settings(path, ["evaluation.intervals=mc_dropout"], env={})
    assert str(err.value) == f"--set evaluation.intervals=mc_dropout: {loader.MC_DROPOUT_GONE}"
    several = write(tmp_path / "old", "features:\n  horizon: 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(several, env={})
    assert err.value.key == "features.horizon" and err.value.problem == loader.HORIZON_GONE
