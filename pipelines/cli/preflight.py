"""Checks that run before Prefect, TensorFlow or any write, so that bad input is one line and
exit code 2: the places a command writes, a --ticker value, the price files, the stored
tickers, `data.sources` and the tracking store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from pipelines.config import Settings, resolve_tracking_uri
from pipelines.errors import PipelineError


def _tracking_places(settings: Settings) -> list[Path]:
    uri = resolve_tracking_uri(settings)
    if not uri.startswith("sqlite:///"):
        return []  # a tracking server or database keeps its own files
    db = Path(uri.removeprefix("sqlite:///"))
    # SQLite writes its journal beside the database; the first open locks .locks/ there
    return [db, db.parent, db.parent / ".locks", settings.path(settings.tracking.artifact_location)]


def _tuning_places(settings: Settings) -> list[Path]:
    from pipelines.tuning.storage import storage_url

    url = storage_url(settings)
    return [] if "://" in url else [Path(url).parent]


def _project_id_places(settings: Settings) -> list[Path]:
    from pipelines.provenance import id_path

    path = id_path(settings)
    return [] if path.exists() else [path]  # made once, by a first training; then only read


# The places behind each name a command lists in what it writes.
PLACES: dict[str, Callable[[Settings], list[Path]]] = {
    "store": lambda s: [s.store_path],
    "incoming": lambda s: [s.path(s.data.incoming)],
    "archive": lambda s: [s.path(s.data.archive)],
    "rejected": lambda s: [s.path(s.data.rejected)],
    "forecasts": lambda s: [s.path(s.data.forecasts)],
    "locks": lambda s: [s.path(".locks")],
    # configure_environment has set it (inside the project unless the user chose another)
    "prefect": lambda s: [Path(os.environ.get("PREFECT_HOME") or s.path(".prefect"))],
    "tracking": _tracking_places,
    "tuning": _tuning_places,
    "demo": lambda s: [s.path("outputs/demo")],
    "project_id": _project_id_places,
}


def preflight_writable(settings: Settings, places: Iterable[str]) -> None:
    """Each place a command will write (names in `PLACES`) can be written, before Prefect or
    MLflow start: else one line naming it and the system's error, as `init` says it."""
    from pipelines.errors import os_problem
    from pipelines.fsio import check_writable

    for name in places:
        for path in PLACES[name](settings):
            try:
                check_writable(path)
            except OSError as exc:
                raise PipelineError(f"cannot write to {path}: {os_problem(exc, path)}") from None


def checked_ticker(ticker: str | None) -> str | None:
    """A --ticker value, checked as a ticker name (None stays None)."""
    from pipelines.ingest import validate_ticker

    return None if ticker is None else validate_ticker(ticker, source="--ticker")


def preflight_tracking(settings: Settings) -> None:
    """The tracking store answers and keeps its artifacts in the configured folder (not a
    project's moved here, nor a changed `tracking.artifact_location`), before a command
    ingests, trains or forecasts; runs that killed processes left RUNNING are marked FAILED."""
    from pipelines import tracking
    from pipelines.promotion import settle_orphaned_runs

    settle_orphaned_runs(tracking.connect(settings))


def parse_configured(settings: Settings, path: Path | str, ticker: str | None):
    """Read and validate one price file with the configured options (no Prefect, no TF)."""
    from pipelines.ingest import read_configured

    return read_configured(settings.data, path, ticker)


def check_stored(settings: Settings, tickers: tuple[str, ...] | list[str]) -> None:
    """Every ticker named has prices in the store, else one line naming the way to store them."""
    from pipelines.store import PriceStore

    store = PriceStore(settings.store_path)
    for t in tickers:
        if store.manifest(t) is None:
            hint = store.other_case(t) or (
                f"store them first with: lstm-pipeline ingest FILE --ticker {t}"
            )
            raise PipelineError(
                f"no prices stored for ticker {t!r} in {settings.store_path}: {hint}"
            )


def _largest_lookback(frame, features, evaluation) -> int:
    """The longest lookback `frame` can train with `features`' other settings (0: none)."""
    from lstm_core.backtest import untrainable

    low, high = 0, len(frame)  # trainable up to `low`, not at `high` (more rows than exist)
    while high - low > 1:
        mid = (low + high) // 2
        cfg = features.model_copy(update={"lookback": mid})
        low, high = (mid, high) if untrainable(frame, cfg, evaluation) is None else (low, mid)
    return low


def check_space(settings: Settings, config: Path | str, ticker: str, frame) -> None:
    """Every candidate of `tuning.space` can train `frame` (as a trial and the retrained best
    will): the feature settings of the space that need the most rows, by the same check as the
    configured ones. A lookback too long is named with the longest the data allow."""
    from lstm_core.backtest import untrainable
    from pipelines.errors import ConfigError
    from pipelines.tuning.space import widest_features

    key = "features.lookback"
    failed = []
    for values, features in widest_features(settings):
        problem = untrainable(frame, features, settings.evaluation)
        if problem is not None:
            failed.append((values, features, problem))
    if not failed:
        return
    if key in settings.tuning.space:
        largest, transform = min(
            (_largest_lookback(frame, f, settings.evaluation), f.target_transform)
            for _, f, _ in failed
        )
        param = settings.tuning.space[key]
        if largest > 0:
            raise ConfigError(
                config,
                "tuning.space",
                f"{key} reaches {failed[0][1].lookback}, but {ticker}'s {len(frame)} rows allow "
                f"a lookback of at most {largest} (with target_transform {transform}): lower "
                f"its {'largest choice' if param.choices else 'high'} to {largest} or less",
            )
    values, _, (step, exc) = failed[0]
    named = ", ".join(f"{k}={v}" for k, v in values.items())
    raise ConfigError(config, "tuning.space", f"cannot {step} {ticker} with {named}: {exc}")


def preflight_run(
    settings: Settings,
    config: Path | None,
    files: list[str],
    ticker: str | None,
    stored: tuple[str, ...] = (),
    space: bool = False,
) -> list[str]:
    """Check a run's input end to end before Prefect, TensorFlow or any write; returns the
    tickers checked.

    The files are parsed and planned into the store as `ingest` merges them (the store's own
    dry run: the same clashes, the same messages), and each ticker's would-be series (or each
    `stored` ticker's series) is split, scaled, windowed and cut into backtest folds as
    training will do it: too short a series, a lookback longer than the data, a constant
    series or more folds than test rows fail here with one line, and nothing is stored. With
    `space` (tune), so is every candidate of `tuning.space` (:func:`check_space`).
    """
    from lstm_core.backtest import untrainable
    from pipelines.errors import FOLDS_ADVICE, InputError
    from pipelines.store import PriceStore
    from pipelines.store.merge import tickers_of

    store = PriceStore(settings.store_path)
    check_stored(settings, stored)
    frames = {t: (str(settings.store_path), store.load(t)) for t in stored}
    parsed = [parse_configured(settings, path, ticker) for path in files]
    # a ticker's series is named by the last file that adds to it
    last_file = {t: path for path, p in zip(files, parsed, strict=True) for t in tickers_of(p)}
    for t, frame in store.preview_files(parsed, replace=settings.data.replace).items():
        frames[t] = (last_file[t], frame)
    cfg = config or "mlflow.yaml"
    for t, (path, frame) in frames.items():
        problem = untrainable(frame, settings.features, settings.evaluation)
        if problem is None:
            continue
        step, exc = problem
        if step == "train":
            raise InputError(
                path,
                f"cannot train {t} on its {len(frame)} rows with {cfg} "
                f"(features.lookback={settings.features.lookback}): {exc}",
            )
        raise InputError(
            path, f"cannot backtest {t} on its {len(frame)} rows with {cfg}: {exc}: {FOLDS_ADVICE}"
        )
    if space:
        for t, (_, frame) in frames.items():
            check_space(settings, cfg, t, frame)
    return list(frames)


def configured_sources(
    settings: Settings, config: Path | None, files: str, stored: str
) -> list[str]:
    """`data.sources` as paths; none, or a missing one, is a configuration error naming the
    way out."""
    from pipelines.errors import ConfigError

    sources = [str(settings.path(s)) for s in settings.data.sources]
    missing = [s for s in sources if not Path(s).exists()]
    if not sources or missing:
        what = f"{missing[0]} does not exist" if missing else "none configured"
        raise ConfigError(
            config,
            "data.sources",
            f"{what}; give price files ({files}) or a stored ticker ({stored})",
        )
    return sources
