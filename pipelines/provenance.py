"""Whose is a registered version: this project's, or another's on the same tracking server?

Projects that share a tracking server share the registered model `registry.model_name`
names for a ticker: without a check, one project would forecast with a champion another
project trained on other prices, dating its forecasts on another exchange's sessions, and its
trainings would challenge (and could replace) the champion another project serves.

What decides is the version's `lstm.project` tag, the id of the project that registered it
(:func:`project_id`); a version registered before projects had ids is judged by what it was
trained on instead: the stored rows through its last date, and its `data.calendar`.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import tracking
from pipelines.config import Settings
from pipelines.errors import PipelineError
from pipelines.fsio import atomic_write, file_lock
from pipelines.store import table_digest

# Beside mlflow.yaml, the file that makes a folder a project: not in data/, which a user may
# empty to ingest again (or share between projects), and hidden from `rm *`.
ID_FILE = ".lstm-project"
_ID = re.compile(r"[0-9a-f]{32}")


def id_path(settings: Settings) -> Path:
    return settings.path(ID_FILE)


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not _ID.fullmatch(text):
        raise PipelineError(
            f"{path}: {text[:40]!r} is not a project id (32 hexadecimal digits, written when "
            "this project first registered a model): put back the id it held (the lstm.project "
            "tag of a version this project registered), or remove the file to start a new id "
            "(this project's earlier champions then count as another project's)"
        )
    return text


def project_id(settings: Settings, create: bool = False) -> str | None:
    """This project's id, made once (`create`) when it first registers a version; None while
    it has none. Read-only commands (status, forecast) do not make it."""
    path = id_path(settings)
    found = _read_id(path)
    if found is not None or not create:
        return found
    # two first trainings at once must not each write an id of their own
    with file_lock(settings.path(".locks") / "project-id.lock"):
        found = _read_id(path)
        if found is None:
            found = uuid.uuid4().hex
            atomic_write(path, f"{found}\n".encode())
    return found


def whose(
    settings: Settings, version: tracking.RegisteredVersion
) -> Literal["this", "other"] | None:
    """Whose version: "this" project's, an "other" project's (its `lstm.project` tag names
    another id), or None when it has no tag (registered before projects had ids)."""
    tagged = version.tags.get(tracking.TAG_PROJECT)
    if not tagged:
        return None
    return "this" if tagged == project_id(settings) else "other"


def not_others(
    settings: Settings, versions: Sequence[tracking.RegisteredVersion]
) -> list[tracking.RegisteredVersion]:
    """`versions` less those another project registered (an untagged one stays, as it did
    before projects had ids): what this project's own "since the last version" counts on."""
    return [v for v in versions if whose(settings, v) != "other"]


def _own_names(ticker: str) -> str:
    return (
        "give this project model names of its own with registry.model_name (e.g. "
        f'"myproject-{{ticker}}") and train them: lstm-pipeline run --ticker {ticker}'
    )


def _theirs(settings: Settings, version: tracking.RegisteredVersion) -> str:
    ours = project_id(settings)
    return (
        f"its lstm.project tag is {version.tags[tracking.TAG_PROJECT]}, this project's id "
        + (f"is {ours}" if ours else "is not made yet")
        + f" ({id_path(settings)})"
    )


def name_taken(
    settings: Settings,
    ticker: str,
    versions: Sequence[tracking.RegisteredVersion],
    challenger: str,
) -> str | None:
    """Why `challenger`, trained here, does not become the champion of a model that has none
    when another project registered versions of it: the alias was deleted (or never won), and
    the name is that project's too. None: no version is another project's, the name is free."""
    other = next((v for v in versions if whose(settings, v) == "other"), None)
    if other is None:
        return None
    name = other.name
    return (
        f"{name} has no champion, and v{other.version} is another project's model "
        f"({_theirs(settings, other)}), so {name} v{challenger}, trained here, does not take "
        f"the name: {_own_names(ticker)}; or, if {name} is this project's to use, promote "
        f"v{challenger} by hand: lstm-pipeline promote --ticker {ticker} --version {challenger}"
    )


def others_champion(
    settings: Settings, ticker: str, champion: tracking.RegisteredVersion
) -> str | None:
    """Why a hand (promote, rollback) does not move the alias away from `champion`: it is
    another project's, the model that project serves. None: this project's, or untagged, or
    one that took the alias from this project's champion (as a hand in the other project
    could before): this project takes it back."""
    if whose(settings, champion) != "other":
        return None
    replaced = champion.tags.get(tracking.TAG_REPLACED)
    earlier = [v for v in tracking.versions(champion.name) if v.version == replaced]
    if earlier and whose(settings, earlier[0]) == "this":
        return None
    label = f"{champion.name} v{champion.version}"
    return (
        f"{label} is another project's champion ({_theirs(settings, champion)}), so the alias "
        f"stays on it: promote in that project, or {_own_names(ticker)}"
    )


def rows_through(table: pa.Table, last: str) -> pa.Table:
    """The stored rows up to and including the ISO date `last`."""
    through = pa.scalar(dt.date.fromisoformat(last), pa.date32())
    return table.filter(pc.less_equal(table["date"], through))


def digest_through(table: pa.Table, last: str) -> str:
    """The digest of the stored rows up to `last`: rows added after that day leave it as it
    was, a day replaced up to it changes it."""
    return table_digest(rows_through(table, last))


def trained_days_changed(table: pa.Table, version: tracking.RegisteredVersion) -> bool:
    """Do the stored days up to `version`'s last training date differ from the ones it was
    trained on (its data digest)?"""
    last = version.tags.get(tracking.TAG_DATA_LAST_DATE)
    digest = version.tags.get(tracking.TAG_DATA_DIGEST)
    if not last or not digest:
        return False
    return digest_through(table, last) != digest


def calendar_name(name: str | None) -> str:
    """A `data.calendar` as the lines name it ("null" for none)."""
    return name or "null"


def other_calendar(settings: Settings, version: tracking.RegisteredVersion) -> str | None:
    """The `data.calendar` `version` was trained with ("null" for none) when it is not this
    project's, whose sessions its forecasts would fall on; None when it is the same (or the
    version's run does not say)."""
    params = tracking.run_params(version.run_id) if version.run_id else {}
    theirs = params.get("data.calendar") or None
    if "data.calendar" not in params or theirs == settings.data.calendar:
        return None
    return calendar_name(theirs)


def not_trained_here(
    settings: Settings,
    ticker: str,
    version: tracking.RegisteredVersion,
    stored: Callable[[], pa.Table | None],
    challenger: str | None = None,
) -> tuple[str, str] | None:
    """Why `version` is not this project's to forecast with or to challenge, as (state word,
    one line): FOREIGN, another project's (by its `lstm.project` tag; untagged, trained on
    other prices than those stored here); CALENDAR, trained with another `data.calendar`, whose
    sessions its forecasts would fall on. None: this project's, as far as its tags tell.
    `stored()` reads the ticker's stored rows (None: none here), called only for a version
    without the tag.

    `challenger`: a version trained here that would challenge `version`. This project's own
    champion is challenged whatever changed since (stored days replaced, the calendar), an
    other's never: a project does not replace the champion another serves."""
    label = f"{version.name} v{version.version}"
    owner = whose(settings, version)
    run = f"lstm-pipeline run --ticker {ticker}"
    by_hand = f"lstm-pipeline promote --ticker {ticker} --version {challenger or 'N'}"
    names = _own_names(ticker)
    refused = (  # the FOREIGN lines' word on the challenger
        f", so {version.name} v{challenger}, trained here, does not challenge it and is not "
        "promoted"
        if challenger is not None
        else ""
    )
    if owner == "other":
        what = f"{label} is another project's model: {_theirs(settings, version)}"
        return "FOREIGN", f"{what}{refused}: {names}"
    if owner == "this" and challenger is not None:
        return None
    theirs, ours = other_calendar(settings, version), calendar_name(settings.data.calendar)
    # this project's own champion after `ingest --replace`: forecasts as a model does on
    # any new rows (and the ticker retrains: see flows.retraining)
    table = stored() if owner is None else None
    if table is not None and trained_days_changed(table, version):
        last = version.tags[tracking.TAG_DATA_LAST_DATE]
        rows = version.tags.get(tracking.TAG_DATA_ROWS, "?")
        here = rows_through(table, last).num_rows
        cal = (f" (data.calendar {theirs})", f" (data.calendar {ours})") if theirs else ("", "")
        what = (
            f"{label} was trained on {rows} rows through {last}{cal[0]}, not on the {here} "
            f"rows of {ticker} stored here through that day{cal[1]}: it is not this project's "
            "model (another project's on the same tracking server, or stored days replaced "
            "since)"
        )
        promote = (
            f"promote v{challenger} by hand"
            if challenger is not None
            else "promote by hand a version trained here (one does not challenge it)"
        )
        return "FOREIGN", (
            f"{what}{refused}: {names}; or, if v{version.version} is this project's own, "
            f"{promote}: {by_hand}"
        )
    if theirs is None:
        return None
    what = (
        f"{label} was trained on these prices with data.calendar {theirs}, this project's is {ours}"
    )
    if owner == "this" or challenger is None:
        # its own new version challenges it; an untagged one's does not: promote it by hand
        retrain = (
            f"train it again with {ours}: {run}"
            if owner == "this"
            else f"train it again with {ours} and promote that version by hand (one trained "
            f"here does not challenge it): {run}, then {by_hand}"
        )
        return "CALENDAR", (
            f"{what}: its forecasts would fall on {theirs} sessions: forecast with the "
            f"calendar it was trained with (data.calendar: {theirs} in mlflow.yaml, or --set "
            f"data.calendar={theirs}), or {retrain}"
        )
    return "CALENDAR", (
        f"{what}, so {version.name} v{challenger}, trained here with {ours}, does not "
        f"challenge it and is not promoted: if this project changed its data.calendar, "
        f"promote v{challenger} by hand: {by_hand}; if v{version.version} is another "
        f"project's, {names}"
    )
