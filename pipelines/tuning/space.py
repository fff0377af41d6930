"""A search space from `tuning.space`: Optuna distributions, candidates drawn from them, and
the settings a candidate stands for."""

from __future__ import annotations

from typing import Any

from lstm_core.config import FeatureConfig, ModelConfig, TrainingConfig
from pipelines.config import SearchParam, Settings

SECTIONS = {"features": FeatureConfig, "model": ModelConfig, "training": TrainingConfig}
_SHORT = {
    "lookback": "lb",
    "layers": "L",
    "units": "u",
    "dropout": "do",
    "learning_rate": "lr",
    "batch_size": "bs",
    "scaler": "",
    "target_transform": "",
}


# ---------------------------------------------------------------- the search space


def is_int(key: str) -> bool:
    section, _, name = key.partition(".")
    default = SECTIONS[section].model_fields[name].default
    return isinstance(default, int) and not isinstance(default, bool)


def distribution(key: str, param: SearchParam) -> Any:
    """The Optuna distribution of one `tuning.space` entry."""
    import optuna.distributions as d

    if param.choices is not None:
        return d.CategoricalDistribution(list(param.choices))
    if is_int(key):
        step = int(param.step) if param.step is not None else 1
        return d.IntDistribution(int(param.low), int(param.high), log=param.log, step=step)
    return d.FloatDistribution(param.low, param.high, log=param.log, step=param.step)


def distributions(space: dict[str, SearchParam]) -> dict[str, Any]:
    return {key: distribution(key, param) for key, param in space.items()}


def suggest(trial: Any, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Draw one candidate: `{dotted setting: value}`."""
    out: dict[str, Any] = {}
    for key, dist in distributions(space).items():
        kind = type(dist).__name__
        if kind == "CategoricalDistribution":
            out[key] = trial.suggest_categorical(key, dist.choices)
        elif kind == "IntDistribution":
            out[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            out[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return out


def apply_params(settings: Settings, params: dict[str, Any]) -> Settings:
    """`settings` with the candidate's values, each changed section validated again."""
    updates: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        updates.setdefault(section, {})[name] = value
    sections = {
        section: SECTIONS[section].model_validate(
            {**getattr(settings, section).model_dump(), **values}
        )
        for section, values in updates.items()
    }
    return settings.model_copy(update=sections)


def current_values(settings: Settings) -> dict[str, Any]:
    """The configured value of every searched setting (the default configuration)."""
    out = {}
    for key in settings.tuning.space:
        section, _, name = key.partition(".")
        out[key] = getattr(getattr(settings, section), name)
    return out


def contains(value: Any, param: SearchParam, is_int: bool) -> bool:
    if param.choices is not None:
        return value in param.choices
    if not (param.low <= value <= param.high):
        return False
    if param.step is None:
        return not is_int or float(value) == int(value)
    steps = (value - param.low) / param.step
    return abs(steps - round(steps)) < 1e-9


def widest_features(settings: Settings) -> list[tuple[dict[str, Any], FeatureConfig]]:
    """The candidates' feature settings that need the most rows, each with the searched values
    it takes: every searched `features` range at its high end (the longest lookback),
    with each searched choice of the others (a transform that consumes a row, a scaler)."""
    import itertools

    options: list[list[tuple[str, Any]]] = []
    for key, param in settings.tuning.space.items():
        if not key.startswith("features."):
            continue
        if param.choices is None:
            options.append([(key, int(param.high) if is_int(key) else param.high)])
        elif all(isinstance(c, int | float) and not isinstance(c, bool) for c in param.choices):
            options.append([(key, max(param.choices))])
        else:
            options.append([(key, c) for c in param.choices])
    out = []
    for combo in itertools.product(*options):
        values = dict(combo)
        out.append((values, apply_params(settings, values).features))
    return out


def trial_name(number: int, params: dict[str, Any]) -> str:
    """A short run name after the parameters, e.g. `#3 lb30 2x32 do0.12 lr3.1e-03 bs32 minmax`."""
    parts = [f"#{number}"]
    values = {k.partition(".")[2]: v for k, v in params.items()}
    if "layers" in values and "units" in values:
        parts.append(f"{values.pop('layers')}x{values.pop('units')}")
    for name, v in values.items():
        if isinstance(v, float):
            text = f"{v:.1e}" if name == "learning_rate" else f"{v:.3g}"
        else:
            text = str(v)
        parts.append(f"{_SHORT.get(name, name + '=')}{text}")
    return " ".join(parts)


def describe(p: SearchParam) -> str:
    if p.choices is not None:
        return "choices " + ",".join(str(c) for c in p.choices)
    text = f"{p.low:g}..{p.high:g}"
    if p.step is not None:
        text += f" step {p.step:g}"
    return text + (" log" if p.log else "")
