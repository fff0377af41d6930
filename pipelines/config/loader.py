"""Finding, reading and checking `mlflow.yaml` (parsed and validated once).

The file is found as git finds its repository: `--config PATH`, else `LSTM_PIPELINE_CONFIG`,
else `mlflow.yaml` in the current folder or the nearest folder above it. Unknown keys, wrong
types and impossible values are errors naming the file and the key. Relative paths resolve
against the config file's folder. `MLFLOW_TRACKING_URI` and `PREFECT_API_URL` from the
environment win over the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config.checks import bool_as_number, leaves
from pipelines.config.sections import Settings
from pipelines.errors import ConfigError, OverrideError, PipelineError, os_problem

CONFIG_NAME = "mlflow.yaml"
CONFIG_ENV = "LSTM_PIPELINE_CONFIG"
# The commented default configuration `lstm-pipeline init` writes (package data; the repo's
# own mlflow.yaml is the same text, a test keeps them identical).
TEMPLATE_NAME = "mlflow.default.yaml"
MC_DROPOUT_GONE = (
    "the bands are split conformal: Monte-Carlo dropout (mc_dropout) was removed, as its "
    "80% / 95% bands held 32% / 46% of a synthetic series' test prices (docs/decisions.md); "
    "remove this setting"
)
HORIZON_GONE = (
    "a model forecasts one trading day ahead, repeated for evaluation.forecast_days days: "
    "models with several outputs were removed, as they were scored on their last output but "
    "served by their first (docs/decisions.md); remove this setting"
)
# Keys an earlier version wrote into every project's mlflow.yaml, now read by nothing: a
# warning to delete them, not an unknown key's error. (section, key) -> (why, the one value
# that still means what it did (None: any), the refusal of another value).
RETIRED = {
    ("evaluation", "intervals"): (
        "the bands are always split conformal",
        "conformal",
        MC_DROPOUT_GONE,
    ),
    ("evaluation", "mc_samples"): ("Monte-Carlo dropout intervals were removed", None, ""),
    ("evaluation", "moving_average_window"): ("the moving-average baseline was removed", None, ""),
    ("features", "horizon"): ("every model forecasts one day ahead", 1, HORIZON_GONE),
}
_SAID_RETIRED: set[tuple[Path, str]] = set()  # once per file and key in a process


def _parse_value(raw: str) -> Any:
    """A `--set` value as YAML reads it: `training.epochs=3` an int, `features.columns=[open,
    close]` a list. What YAML cannot read is the text as typed (a cron such as `* * * * *`,
    which YAML takes for an alias), unless it opens a list or mapping: that one is refused."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if raw.lstrip().startswith(("[", "{")):
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"not valid YAML ({problem})") from None
        return raw


def _apply_override(data: dict[str, Any], assignment: str) -> str:
    """Set one `--set` value in ``data``; returns the dotted key it set."""
    if "=" not in assignment:
        raise OverrideError(assignment, assignment, "expected section.key=value")
    dotted, raw = assignment.split("=", 1)
    dotted = dotted.strip()
    keys = dotted.split(".")
    if len(keys) < 2 or not all(keys):
        raise OverrideError(assignment, dotted, "expected section.key")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise OverrideError(assignment, dotted, f"{k!r} is not a section")
        node = child
    try:
        node[keys[-1]] = _parse_value(raw)
    except ValueError as exc:
        raise OverrideError(assignment, dotted, str(exc)) from None
    return dotted


def _blame(
    cfg_path: Path,
    overrides: list[tuple[str, str]],
    key: str,
    problem: str,
    named: bool = False,
) -> ConfigError:
    """The error at ``key``, named where the value came from: the last `--set` (assignment,
    dotted key) that gave it or a section or list it lies in, else the file. An error about a
    whole section in which a `--set` changed a key names the file and that option. `named`:
    the problem names the key itself (not said twice)."""
    for assignment, dotted in reversed(overrides):
        if key == dotted:
            return OverrideError(assignment, key, problem)
        if key.startswith(dotted + "."):
            return OverrideError(assignment, key, f"{key}: {problem}")
    inside = [a for a, dotted in overrides if dotted.startswith(key + ".")]
    if inside and named:  # e.g. a --set into a section that does not exist
        return OverrideError(inside[-1], key, problem)
    if inside:
        key += f" (with --set {inside[-1]})"
    return ConfigError(cfg_path, key, problem, named)


def _error_key(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(top level)"


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """`unknown key a.b`, with the closest key its section knows, if one is close."""
    from difflib import get_close_matches

    section: Any = Settings
    for part in loc[:-1]:  # down the sections (a field's model, or the model in its union)
        field = section.model_fields.get(str(part))
        models = [m for m in leaves(field.annotation) if _is_model(m)] if field else []
        section = models[0] if models else None
        if section is None:
            break
    known = [k for k in section.model_fields if k != "base_dir"] if section else []
    close = get_close_matches(str(loc[-1]), known, n=1)
    where = "".join(f"{p}." for p in loc[:-1])
    return f"unknown key {where}{loc[-1]}" + (
        f" (did you mean {where}{close[0]}?)" if close else ""
    )


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_key(
    node: yaml.Node | None, path: tuple[str, ...] = ()
) -> tuple[str, int, int] | None:
    """(dotted key, first line, repeated line) of a key given twice in one mapping, else None.

    PyYAML keeps the last of two equal keys without a word; the file must not say two things.
    """
    stack, seen_nodes = [(node, path)], set()
    while stack:
        current, where = stack.pop()
        if id(current) in seen_nodes:  # an alias to an anchor already checked
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    name, line = key_node.value, key_node.start_mark.line + 1
                    if name in lines:
                        return ".".join((*where, name)), lines[name], line
                    lines[name] = line
                    stack.append((value_node, (*where, name)))
                else:  # `<<: *defaults` may be overridden by the mapping's own keys
                    stack.append((value_node, where))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(current.value))
    return None


class ConfigNotFoundError(PipelineError):
    """No configuration file given and none in the current folder or above it."""


def find_config(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Path:
    """The project's config file: `path`, else $LSTM_PIPELINE_CONFIG, else the nearest mlflow.yaml.

    Never a file shipped with the package: an installed package has no project.
    """
    env = dict(os.environ) if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    if path is not None:
        return Path(path).expanduser().resolve()
    here = Path(cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigNotFoundError(
        f"no {CONFIG_NAME} in {here} or any folder above it (and no --config or {CONFIG_ENV}); "
        "create a project here with: lstm-pipeline init"
    )


def template_text() -> str:
    """The commented default configuration, as shipped with the package."""
    from importlib.resources import files

    return files("pipelines").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def init_project(folder: str | Path) -> list[Path]:
    """Write the default mlflow.yaml and the empty data folders it names into `folder`.

    Refuses (ConfigError, nothing written) when `folder` already holds an mlflow.yaml. An
    OS error (no permission, a read-only or virtual file system) is a PipelineError naming
    the folder and the error, and what this call had created is removed again.
    Returns what was created.
    """
    root = Path(folder).expanduser().resolve()
    made: list[Path] = []  # folders and files this call created, in order
    try:
        return _write_project(root, made)
    except OSError as exc:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        raise PipelineError(f"cannot create a project in {root}: {os_problem(exc, root)}") from None


def _write_project(root: Path, made: list[Path]) -> list[Path]:
    target = root / CONFIG_NAME
    if target.exists():
        raise ConfigError(target, "", "already exists; init never overwrites it")
    if root.exists() and not root.is_dir():
        raise ConfigError(root, "", "is not a folder")
    text = template_text()
    made.extend(reversed([p for p in (root, *root.parents) if not p.exists()]))
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CONFIG_NAME}.{os.getpid()}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:  # mode follows the umask
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)  # atomic, and fails if another init won the race
        except FileExistsError:
            raise ConfigError(target, "", "already exists; init never overwrites it") from None
        made.append(target)
    finally:
        tmp.unlink(missing_ok=True)
    created = [target]
    settings = load_settings(target, env={})
    d = settings.data
    for name in (d.store, d.incoming, d.archive, d.rejected, d.forecasts):
        folder_path = settings.path(name)
        if not folder_path.exists():
            made.extend(reversed([p for p in folder_path.parents if not p.exists()]))
            folder_path.mkdir(parents=True)
            made.append(folder_path)
            created.append(folder_path)
    return created


def load_settings(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Settings:
    """Find (see find_config), read, override, validate.

    Raises ConfigError naming the file and the key, ConfigNotFoundError when there is no file.
    """
    env = dict(os.environ) if env is None else env
    cfg_path = find_config(path, env)
    if not cfg_path.is_file():
        raise ConfigError(cfg_path, "", "configuration file not found")
    try:
        text = cfg_path.read_text(encoding="utf-8")
        twice = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"line {line + 1}" if line is not None else ""
        raise ConfigError(cfg_path, where, f"not valid YAML: {exc}".splitlines()[0]) from None
    if twice:
        key, first, again = twice
        raise ConfigError(
            cfg_path, key, f"given twice, on line {first} and line {again}: keep one of them"
        )
    if not isinstance(raw, dict):
        raise ConfigError(cfg_path, "(top level)", "expected a mapping of sections")
    given = [(assignment, _apply_override(raw, assignment)) for assignment in overrides]
    _drop_retired(cfg_path, given, raw)

    tracking = raw.setdefault("tracking", {}) if isinstance(raw.get("tracking", {}), dict) else {}
    if env.get("MLFLOW_TRACKING_URI"):
        tracking["uri"] = env["MLFLOW_TRACKING_URI"]
    runtime = raw.setdefault("runtime", {}) if isinstance(raw.get("runtime", {}), dict) else {}
    if env.get("PREFECT_API_URL"):
        runtime["prefect_api_url"] = env["PREFECT_API_URL"]

    from_env = {"tracking.uri": "MLFLOW_TRACKING_URI", "runtime.prefect_api_url": "PREFECT_API_URL"}
    bad = bool_as_number(Settings, raw, "")
    if bad:
        raise _blame(cfg_path, given, bad, "expected a number, got a boolean (true/false/yes/no)")
    try:
        settings = Settings.model_validate(
            {**raw, "base_dir": cfg_path.parent}, context={"env": env}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _error_key(first)
        if first["type"] == "extra_forbidden":  # pydantic's "Extra inputs are not permitted"
            raise _blame(cfg_path, given, key, _unknown_key(first["loc"]), named=True) from None
        # "Value error, " is pydantic's prefix for a validator's own message
        problem = first["msg"].removeprefix("Value error, ")
        if env.get(from_env.get(key, "")):
            raise ConfigError(cfg_path, f"{key} (from {from_env[key]})", problem) from None
        raise _blame(cfg_path, given, key, problem) from None
    return settings


def _drop_retired(cfg_path: Path, given: list[tuple[str, str]], raw: dict[str, Any]) -> None:
    for (section, key), (why, kept, refusal) in RETIRED.items():
        values = raw.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        value = values.pop(key)
        if kept is not None and value != kept:
            raise _blame(cfg_path, given, f"{section}.{key}", refusal)
        if (cfg_path, key) not in _SAID_RETIRED:
            _SAID_RETIRED.add((cfg_path, key))
            logging.getLogger("pipelines").warning(
                "%s: %s.%s is no longer read (%s): delete it", cfg_path, section, key, why
            )


def resolve_tracking_uri(settings: Settings) -> str:
    """Make a relative SQLite path absolute against the config folder."""
    uri = settings.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(settings.path(uri[len(prefix) :]))
    return uri
