"""Manual registry operations: promote a chosen version, roll back to the previous one."""

from __future__ import annotations

from pipelines import tracking
from pipelines.config import Settings
from pipelines.errors import PipelineError
from pipelines.locks import file_lock
from pipelines.promotion import Decision


def _name(settings: Settings, ticker: str) -> str:
    tracking.connect(settings)
    name = settings.registry.name_for(ticker)
    if not tracking.registered_model_exists(name):
        raise PipelineError(f"no registered model {name!r} (ticker {ticker!r})")
    return name


def _decision_lock(settings: Settings, name: str):
    """The lock flows._promote holds while deciding: one hand-over of the alias at a time,
    so racing promotions cannot record the same predecessor and break the trail."""
    return file_lock(settings.path(".locks") / f"promote-{name}.lock")


def manual_promote(settings: Settings, ticker: str, version: str, reason: str) -> str:
    name = _name(settings, ticker)
    known = {v.version for v in tracking.versions(name)}
    if str(version) not in known:
        raise PipelineError(f"{name} has no version {version} (versions: {sorted(known, key=int)})")
    why = f"manual promotion: {reason}"
    with _decision_lock(settings, name):
        tracking.record_decision(name, str(version), Decision(True, why, float("nan"), None))
        previous = tracking.set_champion(name, settings.registry.alias, str(version), why)
    return f"{name}: version {version} is now {settings.registry.alias} (was {previous or 'none'})"


def rollback(settings: Settings, ticker: str) -> str:
    """Give the alias back to the version the current champion replaced."""
    name = _name(settings, ticker)
    with _decision_lock(settings, name):
        current = tracking.champion(name, settings.registry.alias)
        if current is None:
            raise PipelineError(f"{name} has no {settings.registry.alias!r} to roll back")
        previous = current.tags.get(tracking.TAG_REPLACED)
        if not previous:
            raise PipelineError(f"{name} v{current.version} did not replace an earlier champion")
        why = f"rollback from v{current.version}"
        tracking.record_decision(name, previous, Decision(True, why, float("nan"), None))
        tracking.set_champion(name, settings.registry.alias, previous, why, remember=False)
    return f"{name}: rolled back {settings.registry.alias} from v{current.version} to v{previous}"
