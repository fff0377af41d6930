"""The `tuning` section and its search space: bad keys named, the shipped default, Optuna
distributions, a candidate's settings."""

from __future__ import annotations

import pytest

from tests.pipelines.tuning.conftest import tuning_settings


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("tuning:\n  trails: 3\n", "tuning.trails"),
        ("tuning:\n  pruner: random\n", "tuning.pruner"),
        ("tuning:\n  storage: sqlite:///optuna.db\n", "tuning.storage"),
        ("tuning:\n  space:\n    model.colour: {choices: [red]}\n", "tuning.space"),
        ("tuning:\n  space:\n    features.scaler: {choices: [robust]}\n", "tuning.space"),
        ("tuning:\n  space:\n    model.units: {low: 2.5, high: 6}\n", "tuning.space"),
        ("tuning:\n  space:\n    model.dropout: {low: 0.3, high: 0.1}\n", "tuning.space"),
        ("tuning:\n  space:\n    model.dropout: {low: 0.1, high: 0.3, size: 2}\n", "tuning.space"),
        ("tuning:\n  cron: every day\n", "tuning.cron"),
    ],
)
def test_bad_tuning_config_names_the_key(tmp_path, snippet, key):
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        tuning_settings(tmp_path, snippet)
    assert key in str(err.value) and "mlflow.yaml" in str(err.value)


def test_shipped_tuning_section_is_the_default_and_holds_the_default_configuration():
    from pipelines.config import Settings, load_settings
    from pipelines.tuning import space as search_space
    from tests.conftest import REPO

    settings = load_settings(REPO / "mlflow.yaml", env={})
    assert settings.tuning == Settings().tuning
    space = settings.tuning.space
    required = {
        "features.lookback",
        "model.layers",
        "model.units",
        "model.dropout",
        "model.learning_rate",
        "training.batch_size",
        "features.scaler",
        "features.target_transform",
    }
    assert required <= set(space)
    # the configured values lie inside the space, so a new study tries them first
    values = search_space.current_values(settings)
    assert all(search_space.contains(values[k], space[k], search_space.is_int(k)) for k in space)
    assert "tuning.trials" not in settings.flat()  # training runs do not carry the search


def test_space_becomes_optuna_distributions(tmp_path):
    import optuna.distributions as d

    from pipelines.tuning import space as search_space

    settings = tuning_settings(tmp_path)
    dists = search_space.distributions(settings.tuning.space)
    assert dists["features.lookback"] == d.IntDistribution(3, 8)
    assert dists["model.units"] == d.IntDistribution(2, 6, step=2)
    assert dists["model.learning_rate"] == d.FloatDistribution(1e-3, 1e-2, log=True)
    assert dists["features.scaler"] == d.CategoricalDistribution(["minmax", "standard"])
    tuned = search_space.apply_params(
        settings, {"features.lookback": 4, "features.scaler": "standard"}
    )
    assert (tuned.features.lookback, tuned.features.scaler) == (4, "standard")
    assert tuned.model == settings.model
