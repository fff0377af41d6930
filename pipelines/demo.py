"""`lstm-pipeline demo` (what `make run` runs): train on the bundled sample, then retrain.

The sample's last rows are held back, trained without, then dropped into the incoming
folder as a new price file, so the retraining flow has real new data to pick up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipelines.config import Settings
from pipelines.fsio import atomic_write
from pipelines.ingest import read_price_file

HELD_BACK_ROWS = 20


def run_demo(settings: Settings, say: Callable[[str], None]) -> None:
    """Each stage's summary goes to `say` as soon as the stage ends."""
    from pipelines.flows import fan_out, retraining_flow, training_flow

    source = settings.path(settings.data.sources[0])
    ticker = settings.data.ticker
    parsed = read_price_file(source, ticker=ticker)
    frame = parsed.table.to_pandas()
    head, tail = frame.iloc[:-HELD_BACK_ROWS], frame.iloc[-HELD_BACK_ROWS:]
    work = settings.path("outputs/demo")
    work.mkdir(parents=True, exist_ok=True)
    head_file = work / f"{parsed.ticker}.csv"
    _write_yahoo(head, head_file)

    say(f"== 1. training flow on {source.name} up to {head['date'].iloc[-1]}")
    with fan_out(settings, training_flow) as flow:
        summary = flow(settings=settings, files=[str(head_file)], ticker=parsed.ticker)
    say(summary.render())

    incoming = settings.path(settings.data.incoming)
    incoming.mkdir(parents=True, exist_ok=True)
    new_file = incoming / f"{parsed.ticker}.csv"
    _write_yahoo(tail, new_file)
    say(
        f"\n== 2. {len(tail)} newer days dropped into {new_file} "
        f"({tail['date'].iloc[0]}..{tail['date'].iloc[-1]}); retraining flow"
    )
    with fan_out(settings, retraining_flow) as flow:
        say(flow(settings=settings).render())
        say("\n== 3. retraining again with nothing new")
        say(flow(settings=settings).render())


def _write_yahoo(frame, path: Path) -> None:
    cols = {"date": "Date", "open": "Open", "high": "High", "low": "Low", "close": "Close"}
    out = frame[list(cols)].rename(columns=cols)
    out["Volume"] = frame["volume"].round().astype("int64")
    out["Date"] = out["Date"].astype(str)
    # incoming/ is watched: the retraining flow must never see half a file
    atomic_write(path, lambda tmp: out.to_csv(tmp, index=False), fsync=False)
