"""Was a registered version trained on this project's prices and exchange calendar?

Projects that share a tracking server share the registered model `registry.model_name`
names for a ticker: without a check, one project would forecast with a champion another
project trained on other prices, dating its forecasts on another exchange's sessions.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import tracking
from pipelines.config import Settings
from pipelines.store import table_digest


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


def _calendar(name: str | None) -> str:
    return name or "null"


def not_trained_here(
    settings: Settings,
    ticker: str,
    version: tracking.RegisteredVersion,
    table: pa.Table,
    challenger: str | None = None,
) -> tuple[str, str] | None:
    """Why `version` cannot forecast this project's `ticker`, as (state word, one line):
    FOREIGN, trained on other prices than those stored here (another project's model of the
    same name); CALENDAR, trained on these prices with another `data.calendar`, whose
    sessions its forecasts would fall on. None: neither, as far as its run's parameters and
    data tags tell. `challenger`: a version of the same model trained here, which the line
    says is not promoted over `version` (a project does not replace another's champion)."""
    label = f"{version.name} v{version.version}"
    params = tracking.run_params(version.run_id) if version.run_id else {}
    theirs, ours = params.get("data.calendar") or None, settings.data.calendar
    other_calendar = "data.calendar" in params and theirs != ours
    run = f"lstm-pipeline run --ticker {ticker}"
    by_hand = f"lstm-pipeline promote --ticker {ticker} --version {challenger or 'N'}"
    names = (
        "give this project model names of its own with registry.model_name (e.g. "
        f'"myproject-{{ticker}}") and train them: {run}'
    )
    if trained_days_changed(table, version):
        last = version.tags[tracking.TAG_DATA_LAST_DATE]
        rows = version.tags.get(tracking.TAG_DATA_ROWS, "?")
        here = rows_through(table, last).num_rows
        cal = (
            (f" (data.calendar {_calendar(theirs)})", f" (data.calendar {_calendar(ours)})")
            if other_calendar
            else ("", "")
        )
        what = (
            f"{label} was trained on {rows} rows through {last}{cal[0]}, not on the {here} "
            f"rows of {ticker} stored here through that day{cal[1]}: it is not this project's "
            "model (another project's on the same tracking server, or stored days replaced "
            "since)"
        )
        if challenger is None:
            return "FOREIGN", (
                f"{what}: {names}; or, if v{version.version} is this project's own, promote "
                f"by hand a version trained here (one does not challenge it): {by_hand}"
            )
        return "FOREIGN", (
            f"{what}, so {version.name} v{challenger}, trained here, does not challenge it "
            f"and is not promoted: {names}; or, if v{version.version} is this project's own, "
            f"promote v{challenger} by hand: {by_hand}"
        )
    if other_calendar:
        theirs, ours = _calendar(theirs), _calendar(ours)
        what = (
            f"{label} was trained on these prices with data.calendar {theirs}, this "
            f"project's is {ours}"
        )
        if challenger is None:
            return "CALENDAR", (
                f"{what}: its forecasts would fall on {theirs} sessions: forecast with the "
                f"calendar it was trained with (data.calendar: {theirs} in mlflow.yaml, or "
                f"--set data.calendar={theirs}), or train it again with {ours} and promote that "
                f"version by hand (one trained here does not challenge it): {run}, then "
                f"{by_hand}"
            )
        return "CALENDAR", (
            f"{what}, so {version.name} v{challenger}, trained here with {ours}, does not "
            f"challenge it and is not promoted: if this project changed its data.calendar, "
            f"promote v{challenger} by hand: {by_hand}; if v{version.version} is another "
            f"project's, {names}"
        )
    return None
