"""The model registry: registered versions, the champion alias, version tags and the
descriptions the MLflow UI shows. What to promote is decided in :mod:`pipelines.promotion`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.tracking.connection import _client

# Version tags.
TAG_PROMOTED = "promotion.promoted"
TAG_REASON = "promotion.reason"
# On a champion that lost the alias (who took it, why); removed when it holds the alias again.
TAG_REPLACED_BY = "champion.replaced_by"
TAG_REPLACED_REASON = "champion.replaced_reason"
# On a champion: the version it took the alias from (a rollback walks back through these).
TAG_REPLACED = "champion.replaced"
TAG_RUN_ID = "run_id"
# The id of the project that trained and registered the version (see provenance.project_id):
# projects sharing a tracking server share model names, this tells whose version it is.
TAG_PROJECT = "lstm.project"
# Set when a version is registered, cleared when its promotion is decided: a version still
# pending later belongs to a run that died in between.
TAG_PENDING = "promotion.pending"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


def _version(mv) -> RegisteredVersion:
    return RegisteredVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def register(name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> RegisteredVersion:
    """Create a new version of the ticker's registered model, waiting until it is READY."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    model_id = model_uri.split("/", 2)[-1] if model_uri.startswith("models:/m-") else None
    source = model_uri
    mv = client.create_model_version(
        name, source, run_id=run_id, tags={**tags, TAG_PENDING: "true"}, model_id=model_id
    )
    return _version(mv)


def champion(name: str, alias: str) -> RegisteredVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return _version(_client().get_model_version_by_alias(name, alias))
    except MlflowException:
        return None


def get_version(name: str, version: str) -> RegisteredVersion:
    return _version(_client().get_model_version(name, version))


def versions(name: str) -> list[RegisteredVersion]:
    found = _client().search_model_versions(f"name = '{name}'")
    return sorted((_version(v) for v in found), key=lambda v: int(v.version))


def registered_model_exists(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_registered_model(name)
    except MlflowException:
        return False
    return True


def tag_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set each tag; a None value removes the tag (absent is no error), so no tag reads 'None'
    and an earlier decision's value does not stay beside a later one."""
    client = _client()
    for k, v in tags.items():
        if v is None:
            client.delete_model_version_tag(name, version, k)
        else:
            client.set_model_version_tag(name, version, k, str(v))


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, version)


def set_version_description(name: str, version: str, text: str) -> None:
    _client().update_model_version(name, version, description=text)


def set_model_description(name: str, text: str) -> None:
    _client().update_registered_model(name, description=text)
