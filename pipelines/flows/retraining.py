"""The retraining flow: new price files from the incoming folder, live scores, and a retrain
of each ticker whose data changed or whose champion decays."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lstm_core.backtest import untrainable
from pipelines import artifacts, monitoring, provenance, tasks, tracking
from pipelines.config import Settings
from pipelines.errors import PipelineError
from pipelines.flows.common import (
    Summary,
    TickerResult,
    end_run,
    publish_results,
    resolve_settings,
    run_name,
)
from pipelines.flows.training import map_tickers, train_one
from pipelines.fsio import file_lock
from pipelines.store import Manifest, PriceStore, as_frame, describe

log = logging.getLogger("pipelines")


def _move(src: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    dst = folder / f"{src.stem}.{stamp}{src.suffix}"
    shutil.move(str(src), dst)
    return dst


def _write_error(rejected: Path, incoming: Path, exc: Exception) -> None:
    """`<rejected copy>.error.txt`: the error, naming the copy beside it (the incoming path
    is gone, and the next file of that name there is another one), and where it came from."""
    text = str(exc).replace(str(incoming), str(rejected))
    note = f"(moved here by retrain from {incoming})"
    rejected.with_name(rejected.name + ".error.txt").write_text(
        f"{text}\n{note}\n", encoding="utf-8"
    )


class StoredRows:
    """A ticker's manifest and rows for one retrain decision, each read from the store at
    most once: the decision's checks and then the training it starts share them."""

    def __init__(self, store: PriceStore, ticker: str) -> None:
        self.store, self.ticker = store, ticker

    @functools.cached_property
    def manifest(self) -> Manifest | None:
        return self.store.manifest(self.ticker)

    @functools.cached_property
    def table(self) -> pa.Table:
        return self.store.read_table(self.ticker)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        return as_frame(self.table)


def _too_few_rows(settings: Settings, stored: StoredRows, rows: int) -> str | None:
    """Why the stored series cannot be trained yet (None: it can), without training."""
    problem = untrainable(stored.frame, settings.features, settings.evaluation)
    return None if problem is None else f"{rows} rows, too few to train: {problem[1]}"


def needs_training(
    settings: Settings, ticker: str, stored: StoredRows | None = None
) -> tuple[bool, str]:
    """Has the ticker gained enough rows, or had a day it was trained on replaced, since its
    champion was trained (or, when the champion is another project's, this project's latest
    version)? Or was its latest version trained with another `data.calendar`?

    A version already trained on exactly the stored data (promoted or refused) means there
    is nothing new to learn from, so a refused challenger is not retrained again and again.
    A series too short to train (a new ticker's first days) waits for more rows. `stored`
    keeps what the checks read, for the training to reuse.
    """
    if stored is None:
        stored = StoredRows(PriceStore(settings.store_path), ticker)
    manifest = stored.manifest
    if manifest is None:
        return False, "no data"
    name = settings.registry.name_for(ticker)
    every = tracking.versions(name) if tracking.registered_model_exists(name) else []
    # another project's versions of the same name were trained on its prices, not these
    known = provenance.not_others(settings, every)
    if not known:
        short = _too_few_rows(settings, stored, manifest.rows)
        first = "no version trained in this project yet" if every else "no model yet"
        return (False, short) if short else (True, first)
    latest = known[-1]
    if (theirs := provenance.other_calendar(settings, latest)) is not None:
        # its forecasts fall on another exchange's sessions (`forecast` refuses them): the
        # same rows, trained on this project's calendar
        short = _too_few_rows(settings, stored, manifest.rows)
        ours = provenance.calendar_name(settings.data.calendar)
        why = f"v{latest.version} was trained with data.calendar {theirs}, this project's is {ours}"
        return (False, short) if short else (True, why)
    if latest.tags.get(tracking.TAG_DATA_DIGEST) == manifest.digest:
        return False, f"unchanged since v{latest.version} was trained"
    champion = tracking.champion(name, settings.registry.alias)
    basis = next((v for v in known if champion and v.version == champion.version), latest)
    trained_rows = int(basis.tags.get(tracking.TAG_DATA_ROWS, "0") or 0)
    gained = manifest.rows - trained_rows
    last = basis.tags.get(tracking.TAG_DATA_LAST_DATE)
    since = f"v{basis.version} ({last})"
    why = f"gained {gained} row(s) since {since}"
    if gained < settings.data.min_new_rows:
        if not provenance.trained_days_changed(stored.table, basis):
            return False, f"{why}, need {settings.data.min_new_rows}"
        # a stored day replaced (ingest --replace, data.replace): not the data it learnt from
        why = (
            f"stored days through {last} changed since v{basis.version} was trained on them "
            f"(gained {gained} row(s))"
        )
    short = _too_few_rows(settings, stored, manifest.rows)
    return (False, short) if short else (True, why)


def _decide(
    settings: Settings, ticker: str, stored: StoredRows, degraded: list[str] | None
) -> tuple[bool, str, str]:
    """Retrain `ticker`? With the reason (new_data | degraded) and why, in words.

    `degraded`: the live figures its champion failed (None: it holds). A degraded champion
    is retrained even without enough new rows, but never on data a version was trained on.
    """
    stale, why = needs_training(settings, ticker, stored)
    if stale or not degraded:
        return stale, "new_data", why
    if why.startswith("unchanged since"):
        return False, "new_data", f"degraded, but {why}"
    return True, "degraded", "champion degraded: " + "; ".join(degraded)


def retrain_one(
    settings: Settings,
    ticker: str,
    trigger: str,
    degraded: list[str] | None,
    decided: StoredRows,
) -> TickerResult:
    """Retrain `ticker` if it still needs it once no other retraining of it runs.

    Two retrainings at once (cron and event, two `retrain`s) both decide from the same store
    and registry; under the ticker's lock, held through registration and promotion, the
    decision is taken again, so the second sees the version the first registered and skips
    (`TickerResult.skipped`). `decided`: the rows the first decision read, used again unless
    the store changed meanwhile. Other tickers' retrainings go on beside it.
    """
    name = settings.registry.name_for(ticker)
    lock = settings.path(".locks") / f"retrain-{name}.lock"
    with file_lock(lock, waiting=f"{ticker}: waiting for another retraining of {ticker}"):
        stored = decided
        now = decided.store.manifest(ticker)
        if now is None or decided.manifest is None or now.digest != decided.manifest.digest:
            stored = StoredRows(decided.store, ticker)
        stale, reason, why = _decide(settings, ticker, stored, degraded)
        if not stale or stored.manifest is None:
            return TickerResult(ticker=ticker, skipped=why)
        tags = {"retrain.trigger": trigger, "retrain.reason": reason, "retrain.detail": why[:5000]}
        return train_one(settings, ticker, run_tags=tags, prices=(stored.frame, stored.manifest))


retrain_ticker = task(retrain_one, name="retrain-ticker", cache_policy=NO_CACHE)


def _take_incoming(settings: Settings, summary: Summary) -> None:
    """Ingest each file of the incoming folder, then move it to the archive (or, refused, to
    the rejected folder).

    Listing, ingesting and moving are one critical section under the folder's lock, so two
    retrainings at once (cron and event, two `retrain`s) never take the same file: the second
    waits, then finds the folder emptied. A holder killed midway releases the lock with its
    process and leaves its file in the folder (it is moved only once its rows are stored);
    the next retraining ingests it again, which stores nothing twice, and moves it.
    """
    incoming = settings.path(settings.data.incoming)
    lock = settings.path(".locks") / "incoming.lock"
    with file_lock(lock, waiting=f"waiting for another retraining to finish with {incoming}"):
        files = (
            sorted(p for p in incoming.glob("*.csv") if p.is_file()) if incoming.is_dir() else []
        )
        for path in files:
            try:
                [reports] = tasks.ingest_cached(settings, [str(path)], None)
            except PipelineError as exc:
                dst = _move(path, settings.path(settings.data.rejected))
                _write_error(dst, path, exc)
                summary.note(f"rejected {path.name}: {exc}")
                summary.rejected.append(path.name)
                continue
            # Only once the rows are safely in the store does the file leave the folder.
            _move(path, settings.path(settings.data.archive))
            for r in reports:
                summary.note(f"ingested {path.name}: {describe(r)}")
            store = PriceStore(settings.store_path)
            for line in store.gap_warnings(reports, settings.data.calendar):
                log.warning(line)


@flow(name="retraining", flow_run_name="retrain")
def retraining_flow(
    settings: Settings | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    trigger: str = "manual",
    tickers: list[str] | None = None,
) -> Summary:
    """Ingest new files from the incoming folder, score the live forecasts, then retrain
    the tickers whose data changed or whose champion has degraded.

    `trigger` (cron | new_data | degraded | manual) is what started the run; each retrained
    ticker's MLflow run records it and its own reason (new_data | degraded) with the figures.
    `tickers`: only these stored tickers are scored and considered (default: every one).
    """
    settings = resolve_settings(settings, config_path, overrides)
    tracking.connect(settings)  # a store that cannot be used stops before a file is moved
    summary = Summary(settings)
    _take_incoming(settings, summary)
    # The champion already decays: the scoring below decides on it, so no event is emitted.
    store = PriceStore(settings.store_path)
    considered = [t for t in store.tickers() if tickers is None or t in tickers]
    live = monitoring.score_all(settings, None if tickers is None else considered, emit=False)
    branches: dict[str, dict[str, Any]] = {}
    for ticker in considered:
        stored = StoredRows(store, ticker)
        score = live.get(ticker)
        degraded = list(score.verdict.reasons) if score and score.verdict.degraded else None
        stale, _, why = _decide(settings, ticker, stored, degraded)
        summary.note(f"{ticker}: {'retrain' if stale else 'skip'} ({why})")
        if stale:  # the rows the decision read go along: not read again
            branches[ticker] = {"trigger": trigger, "degraded": degraded, "decided": stored}
    if not branches:
        summary.note("nothing changed: no ticker to retrain")
        artifacts.name_run("retrain: nothing to do")
        return summary
    artifacts.name_run(run_name("retrain", settings, list(branches)))
    results = map_tickers(settings, list(branches), retrain_ticker, branches)
    for r in results:
        if r.skipped is not None:
            summary.note(f"{r.ticker}: skip ({r.skipped})")
    summary.results = [r for r in results if r.skipped is None]
    if summary.results:
        publish_results(settings, "retraining", summary.results)
    end_run(summary.render(notes=False))
    return summary
