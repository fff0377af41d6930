"""Where a study lives and how it is opened: the storage `tuning.storage` names (an Optuna
journal file, by default under the project, or a database URL), the sampler's seed, the pruner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import Settings

JOURNAL_FILE = ".optuna/studies.journal"


def storage_url(settings: Settings) -> str:
    """What `tuning.storage` names: a journal file (default under the project) or a URL."""
    raw = settings.tuning.storage
    if raw and "://" in raw:
        return raw
    return str(settings.path(raw or JOURNAL_FILE))


def open_storage(settings: Settings) -> Any:
    """A storage safe for concurrent writers: Optuna's journal file, or a database (RDB)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = storage_url(settings)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def recorded(settings: Settings, ticker: str) -> tuple[dict[str, Any], int] | None:
    """The ticker's study's user attributes and trial count, or None if it has no study;
    a journal file that does not exist yet is not created."""
    import optuna

    url = storage_url(settings)
    if "://" not in url and not Path(url).is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(settings)
    try:
        study_id = storage.get_study_id_from_name(settings.tuning.study_for(ticker))
    except KeyError:
        return None
    return storage.get_study_user_attrs(study_id), len(storage.get_all_trials(study_id))


def _pruner(settings: Settings) -> Any:
    import optuna

    t = settings.tuning
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs
        )
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, settings.training.epochs)
        )
    return optuna.pruners.NopPruner()


def load_study(settings: Settings, ticker: str, worker: int = 0, done: int = 0) -> Any:
    """Create the ticker's study, or load it to continue (same name, same storage).

    The sampler's seed is `tuning.seed` shifted by the worker's index and the number of
    trials already `done`: the same seed in two workers, or in a resumed study, would draw
    the same random candidates again.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = settings.tuning.seed + done + 100_003 * worker
    sampler = optuna.samplers.TPESampler(seed=seed)
    return optuna.create_study(
        study_name=settings.tuning.study_for(ticker),
        storage=open_storage(settings),
        direction="minimize",
        sampler=sampler,
        pruner=_pruner(settings),
        load_if_exists=True,
    )
