"""What a flow run shows in the Prefect UI: its name and its table/link artifacts.

Outside a flow run (a task called with ``.fn`` in a test, a plain script) these do nothing:
there is no run to name or to attach an artifact to.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("pipelines")


def _flow_run_id() -> Any:
    from prefect.runtime import flow_run

    return flow_run.id


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only: `live-msft`."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def name_run(name: str) -> None:
    """Rename the current flow run once what it does is known (e.g. after ingestion)."""
    run_id = _flow_run_id()
    if run_id is None:
        return
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=name)
    except Exception as exc:  # a name is a convenience: never fail the run over it
        log.warning("could not rename the flow run to %r: %s", name, exc)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    if _flow_run_id() is None or not rows:
        return
    from prefect.artifacts import create_table_artifact

    clean = [{k: _cell(v) for k, v in row.items()} for row in rows]
    try:
        create_table_artifact(clean, key=key, description=description)
    except Exception as exc:  # what the UI shows must never fail the work it describes
        log.warning("could not publish the Prefect artifact %r: %s", key, exc)


def link(key: str, url: str, text: str, description: str) -> None:
    if _flow_run_id() is None:
        return
    from prefect.artifacts import create_link_artifact

    try:
        create_link_artifact(url, link_text=text, key=key, description=description)
    except Exception as exc:
        log.warning("could not publish the Prefect artifact %r: %s", key, exc)
