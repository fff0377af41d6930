"""What every section shares: the frozen, strict base, and the checks more than one place
makes (a cron expression, a name made per ticker; true/false given to a number, for the
loader and the search space)."""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def valid_cron(v: str) -> str:
    """A cron expression both readers of it accept: `status` (cronsim) and Prefect's scheduler."""
    if len(v.split()) != 5:
        raise ValueError(
            f"{v!r} is not a cron expression: it has five fields (minute hour day month weekday)"
        )
    from cronsim import CronSim, CronSimError

    try:
        CronSim(v, dt.datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"{v!r} is not a valid cron expression: {exc}") from None
    day, weekday = v.upper().split()[2::2]
    # cronsim reads these, Prefect's scheduler (croniter) refuses them
    if "W" in day or "L" in weekday:
        raise ValueError(
            f"{v!r}: the scheduler does not take W in the day field or L in the weekday field"
        )
    return v


def has_ticker(v: str) -> str:
    """A name made per ticker (a registered model's, a study's) says where the ticker goes."""
    if "{ticker}" not in v:
        raise ValueError("must contain the placeholder {ticker}")
    return v


def leaves(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (`int | None` -> int, NoneType), else itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(leaf for arg in typing.get_args(annotation) for leaf in leaves(arg))
    return (annotation,)


def bool_as_number(annotation: Any, value: Any, key: str) -> str | None:
    """The dotted key where `value` gives true/false to a number field of `annotation`.

    Pydantic reads true as 1 for an int or float field (`epochs: true` trains one epoch);
    YAML also reads yes/no/on/off as booleans. Walks sections, lists and mappings.
    """
    alternatives = leaves(annotation)
    if isinstance(value, bool):
        numeric = int in alternatives or float in alternatives
        return key if numeric and bool not in alternatives else None
    for leaf in alternatives:
        origin, args = typing.get_origin(leaf), typing.get_args(leaf)
        if isinstance(leaf, type) and issubclass(leaf, BaseModel) and isinstance(value, dict):
            for name, field in leaf.model_fields.items():
                if name in value:
                    where = f"{key}.{name}" if key else name
                    hit = bool_as_number(field.annotation, value[name], where)
                    if hit:
                        return hit
        elif origin in (tuple, list) and isinstance(value, list | tuple) and args:
            for i, item in enumerate(value):
                if origin is list or (len(args) == 2 and args[1] is Ellipsis):
                    item_type = args[0]
                else:
                    item_type = args[i] if i < len(args) else None
                hit = bool_as_number(item_type, item, f"{key}.{i}")
                if hit:
                    return hit
        elif origin is dict and isinstance(value, dict) and len(args) == 2:
            for k, item in value.items():
                hit = bool_as_number(args[1], item, f"{key}.{k}")
                if hit:
                    return hit
    return None
