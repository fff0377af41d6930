"""Tuning (Optuna studies): one parent run per study and ticker, each trial a nested run
under it, and the link between the parent and the retrained best configuration's run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipelines.run_owner import owner_tags
from pipelines.tracking.connection import _client
from pipelines.tracking.registry import RegisteredVersion, get_version, tag_version
from pipelines.tracking.runs import TAG_KIND, library_versions, log_figures, log_metrics, log_table

TAG_PARENT = "mlflow.parentRunId"  # what makes a run nested under another in the UI
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_TRIAL_STATE = "optuna.state"
TAG_TUNED_BY = "tuning.parent_run_id"
TAG_TUNED_RUN = "tuning.final_run_id"
TAG_TUNED_VERSION = "tuning.registered_version"  # on the parent: the version it registered
TAG_TUNED_TRIAL = "tuning.trial"  # on that version: the study's trial it retrained
# A trial cut short by Ctrl-C is FAILED as any interrupted run; its state tag says why.
TRIAL_STATUS = {
    "complete": "FINISHED",
    "pruned": "KILLED",
    "fail": "FAILED",
    "interrupted": "FAILED",
}


def start_tuning_run(
    experiment_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    """The parent run of one study and ticker; trials become its nested runs."""
    from mlflow.entities import Param

    tags = {**tags, TAG_KIND: "tuning", **owner_tags()}
    tags.update({f"lib.{k}": v for k, v in library_versions().items()})
    run_id = _client().create_run(experiment_id, run_name=name, tags=tags).info.run_id
    batch = [Param(k, "" if v is None else str(v)) for k, v in params.items()]
    for i in range(0, len(batch), 100):
        _client().log_batch(run_id, params=batch[i : i + 100])
    return run_id


def reopen_run(run_id: str, experiment_id: str) -> bool:
    """Mark an earlier parent run running again (a resumed study); False if it is gone."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return False
    from mlflow.entities import RunTag

    # its owner now: set before it runs again, so no one takes it for the old owner's orphan
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner_tags().items()])
    client.update_run(run_id, status="RUNNING")
    return True


def start_trial_run(
    experiment_id: str,
    parent_run_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
) -> str:
    """One trial as a child run of the study's parent run, with the trial's parameters."""
    from mlflow.entities import Param

    client = _client()
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={**tags, TAG_PARENT: parent_run_id, TAG_KIND: "tuning-trial", **owner_tags()},
    )
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def end_trial_run(run_id: str, state: str, note: str = "") -> None:
    """Record the trial's state (complete, pruned, fail, interrupted) as a tag and a run status."""
    client = _client()
    client.set_tag(run_id, TAG_TRIAL_STATE, state)
    if note:
        client.set_tag(run_id, "optuna.note", note[:5000])
    client.set_terminated(run_id, TRIAL_STATUS[state])


def finish_tuning_run(
    run_id: str,
    name: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, Any],
    figures: Mapping[str, Any],
    trials: pd.DataFrame,
) -> None:
    """Best parameters and value, counts, Optuna's plots and the trials table on the parent."""
    client = _client()
    log_metrics(run_id, metrics)
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
    log_figures(run_id, figures)
    log_table(run_id, trials, "optuna/trials.csv")
    client.update_run(run_id, name=name)
    client.set_terminated(run_id, "FINISHED")


def link_tuned_run(
    parent_run_id: str, run_id: str, model_name: str, version: str | None, trial: int
) -> None:
    """Tie the retrained best configuration's run and the study's parent run together; the
    registered version records the trial it retrained."""
    client = _client()
    client.set_tag(run_id, TAG_TUNED_BY, parent_run_id)
    client.set_tag(parent_run_id, TAG_TUNED_RUN, run_id)
    if version is not None:
        tag_version(model_name, version, {TAG_TUNED_TRIAL: trial})
        client.set_tag(parent_run_id, TAG_TUNED_VERSION, version)


def last_tuned_version(parent_run_id: str, model_name: str) -> RegisteredVersion | None:
    """The version the study's last retrained best configuration was registered as, if any
    (and if it still exists)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        version = client.get_run(parent_run_id).data.tags.get(TAG_TUNED_VERSION)
        return get_version(model_name, version) if version else None
    except MlflowException:
        return None
