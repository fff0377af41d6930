"""`lstm-pipeline demo` (what `make run` runs): train, forecast, score, then retrain.

The sample's last rows are held back and trained without. They then arrive one trading day
at a time (each day's file is ingested and the champion forecasts from it, into the forecast
log), the scoring flow scores every forecast whose day has come, `status` shows the live
figures, and the retraining flow picks up the new rows.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pipelines.config import Settings
from pipelines.fsio import atomic_write
from pipelines.ingest import read_price_file
from pipelines.monitoring import forecast_log, render_status, scoring_flow, status

HELD_BACK_ROWS = 20
# The bundled sample (package data, see its README.md): what the demo trains on when the
# project configures no data.sources.
SAMPLE_TICKER = "MSFT"
SAMPLE_CALENDAR = "XNYS"  # its prices are New York's, whatever the project's data.calendar


def sample() -> Path:
    from importlib.resources import files

    return Path(str(files("pipelines") / "sample" / "msft.csv"))


def run_demo(settings: Settings, say: Callable[[str], None], notes: bool = True) -> None:
    """Each stage's summary goes to `say` as soon as the stage ends (without the notes the
    flows logged when `notes` is false: the reader has seen them)."""
    if settings.data.sources:
        source, ticker = settings.path(settings.data.sources[0]), settings.data.ticker
    else:
        source, ticker = sample(), SAMPLE_TICKER
        if settings.data.calendar != SAMPLE_CALENDAR:
            say(
                f"the bundled sample is New York prices: the demo uses data.calendar "
                f"{SAMPLE_CALENDAR} for it (this project's is {settings.data.calendar or 'null'})"
            )
            data = settings.data.model_copy(update={"calendar": SAMPLE_CALENDAR})
            settings = settings.model_copy(update={"data": data})
    work = settings.path("outputs/demo")
    # its retraining takes no file the project's own incoming folder holds
    data = settings.data.model_copy(update={"incoming": str(work / "incoming")})
    settings = settings.model_copy(update={"data": data})
    # the folders this demo makes, removed again if it fails: a failed demo leaves nothing
    made = next((p for p in reversed([work, *work.parents]) if not p.exists()), None)
    try:
        _run(settings, source, ticker, work, say, notes)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


def _run(
    settings: Settings,
    source: Path,
    ticker: str | None,
    work: Path,
    say: Callable[[str], None],
    notes: bool,
) -> None:
    from pipelines.flows import fan_out, retraining_flow, training_flow

    parsed = read_price_file(source, ticker=ticker)
    frame = parsed.table.to_pandas()
    head, tail = frame.iloc[:-HELD_BACK_ROWS], frame.iloc[-HELD_BACK_ROWS:]
    work.mkdir(parents=True, exist_ok=True)
    head_file = work / f"{parsed.ticker}.csv"
    _write_yahoo(head, head_file)

    say(f"== 1. training flow on {source.name} up to {head['date'].iloc[-1]}")
    with fan_out(settings, training_flow) as flow:
        summary = flow(settings=settings, files=[str(head_file)], ticker=parsed.ticker)
    say(summary.render(notes))

    say(
        f"\n== 2. {len(tail)} held-back days arrive one a day "
        f"({tail['date'].iloc[0]}..{tail['date'].iloc[-1]}): ingest, then the champion forecasts"
    )
    logged = let_days_arrive(settings, parsed.ticker, tail, work / "days")
    say(
        f"{len(tail)} days ingested; forecast log: {logged} rows under {forecast_log(settings).root}"
    )

    say("\n== 3. scoring flow: the logged forecasts against the prices that arrived")
    scoring_flow(settings=settings)
    say(render_status(status(settings), settings.monitoring.window_days))

    say("\n== 4. retraining flow (what the cron runs): scores, then retrains on the new rows")
    # the demo's ticker only: the project's other tickers (and their calendar) are not its own
    with fan_out(settings, retraining_flow) as flow:
        say(flow(settings=settings, trigger="cron", tickers=[parsed.ticker]).render(notes))
        say("\n== 5. retraining again with nothing new")
        say(flow(settings=settings, trigger="cron", tickers=[parsed.ticker]).render(notes))
    say("\n== status (lstm-pipeline status)")
    say(render_status(status(settings), settings.monitoring.window_days))


def let_days_arrive(settings: Settings, ticker: str, days, folder: Path) -> int:
    """Ingest `days` one row at a time, each followed by a forecast run; returns log rows."""
    from pipelines.flows import forecast_flow
    from pipelines.ingest import read_configured
    from pipelines.store import PriceStore

    folder.mkdir(parents=True, exist_ok=True)
    store = PriceStore(settings.store_path)
    for i in range(len(days)):
        day = days.iloc[i : i + 1]
        path = folder / f"{ticker}-{day['date'].iloc[0]}.csv"
        _write_yahoo(day, path)
        store.merge_all(read_configured(settings.data, path, ticker))
        result = forecast_flow(settings=settings, tickers=[ticker])
        if not result.ok:
            raise RuntimeError(
                f"forecast on {day['date'].iloc[0]} failed: {result.errors or result.refused}"
            )
    return len(forecast_log(settings).read(ticker))


def _write_yahoo(frame, path: Path) -> None:
    cols = {"date": "Date", "open": "Open", "high": "High", "low": "Low", "close": "Close"}
    out = frame[list(cols)].rename(columns=cols)
    out["Volume"] = frame["volume"].round().astype("int64")
    out["Date"] = out["Date"].astype(str)
    # incoming/ is watched: the retraining flow must never see half a file
    atomic_write(path, lambda tmp: out.to_csv(tmp, index=False), fsync=False)
