"""The command line's grammar: every command of `lstm-pipeline` with its arguments and help."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines import DISTRIBUTION
from pipelines.config import CONFIG_ENV


def _version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "(not installed)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default: ${CONFIG_ENV}, else mlflow.yaml in the current "
        "folder or the nearest folder above it)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )


def _command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` opens with a description (default: its one-line summary,
    as `lstm-pipeline --help` lists it)."""
    return sub.add_parser(
        name, help=summary, description=description or f"{summary[0].upper()}{summary[1:]}."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-pipeline",
        description="Train, track and serve LSTM daily stock-price forecasts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "init", "start a project: the default mlflow.yaml and data/ folders")
    p.add_argument("folder", nargs="?", type=Path, default=Path("."), help="default: here")

    p = _command(sub, "ingest", "merge price CSVs into the Parquet store")
    _common(p)
    p.add_argument("files", nargs="+", type=Path, help="price CSVs (stored all or none)")
    p.add_argument(
        "--ticker", default=None,
        help="the files' ticker (default: a ts_code/ticker/symbol column, else the file name)",
    )  # fmt: skip
    p.add_argument("--replace", action="store_true", help="let the files change stored rows")

    p = _command(
        sub,
        "run",
        "the main job: the training flow end to end",
        description="run FILE... ingests the files, then trains the tickers they hold; "
        "run --ticker T [--ticker U ...] trains stored tickers; run alone ingests data.sources "
        "and trains.",
    )
    _common(p)
    p.add_argument("files", nargs="*", type=Path, help="price CSVs to ingest first")
    p.add_argument(
        "--ticker", action="append", default=[], dest="tickers",
        help="with FILEs: their one ticker; alone: a stored one (repeatable)",
    )  # fmt: skip

    p = _command(sub, "retrain", "ingest new files from data.incoming and retrain")
    _common(p)

    p = _command(sub, "forecast", "forecast the next trading days with the champion")
    _common(p)
    p.add_argument(
        "--ticker",
        action="append",
        default=None,
        dest="tickers",
        help="a stored ticker (repeatable; default: every one)",
    )
    p.add_argument(
        "--days", type=int, default=None,
        help="trading days ahead, 1 to evaluation.forecast_days (default: that)",
    )  # fmt: skip

    p = _command(sub, "promote", "set the champion alias to a chosen version")
    _common(p)
    p.add_argument("--ticker", required=True, help="a ticker with registered versions")
    p.add_argument("--version", required=True, help="the version to make champion")
    p.add_argument("--reason", default=None, help="why, recorded with the decision")

    p = _command(sub, "rollback", "restore the previous champion")
    _common(p)
    p.add_argument("--ticker", required=True, help="the ticker whose champion to roll back")

    p = _command(sub, "demo", "train on the bundled sample, then retrain on newer days")
    _common(p)

    p = _command(sub, "tune", "search hyperparameters (Optuna), retrain the best, promote")
    _common(p)
    p.add_argument(
        "--ticker", action="append", default=None, dest="tickers",
        help="a ticker to tune (repeatable; default: data.ticker, else every stored one)",
    )  # fmt: skip
    p.add_argument("--trials", type=int, default=None, help="trials to add (tuning.trials)")
    p.add_argument(
        "--timeout", type=float, default=None, metavar="MIN", help="time budget in minutes"
    )
    p = _command(sub, "score", "score logged forecasts against the prices that arrived")
    _common(p)
    p.add_argument(
        "--ticker", action="append", default=None, dest="tickers",
        help="a stored ticker (repeatable; default: every one)",
    )  # fmt: skip

    p = _command(sub, "status", "one line per ticker: champion, data, live figures")
    _common(p)
    p.add_argument(
        "--ticker", action="append", default=None, dest="tickers",
        help="a stored ticker (repeatable; default: every one)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = _command(sub, "serve", "serve the retraining and forecast deployments")
    _common(p)
    p.add_argument(
        "--ticker", action="append", default=None, dest="tickers",
        help="a ticker the forecast (and tuning) deployment serves (repeatable; default: every "
        "stored one)",
    )  # fmt: skip
    return parser
