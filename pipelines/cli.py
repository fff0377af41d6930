"""`lstm-pipeline`: the command line. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines.config import Settings, load_settings
from pipelines.errors import PipelineError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="configuration file (mlflow.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-pipeline",
        description="Train, track and serve LSTM daily stock-price forecasts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="merge price CSVs into the Parquet store")
    _common(p)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--ticker", default=None)
    p.add_argument("--replace", action="store_true", help="let the files change stored rows")

    p = sub.add_parser("run", help="the main job: the training flow end to end")
    _common(p)
    p.add_argument("files", nargs="*", type=Path, help="price CSVs (default: data.sources)")
    p.add_argument("--ticker", default=None)

    p = sub.add_parser("retrain", help="ingest new files from data.incoming and retrain")
    _common(p)

    p = sub.add_parser("forecast", help="forecast the next trading days with the champion")
    _common(p)
    p.add_argument("--ticker", action="append", required=True, dest="tickers")
    p.add_argument("--days", type=int, default=None)

    p = sub.add_parser("promote", help="set the champion alias to a chosen version")
    _common(p)
    p.add_argument("--ticker", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--reason", default="manual promotion")

    p = sub.add_parser("rollback", help="restore the previous champion")
    _common(p)
    p.add_argument("--ticker", required=True)

    p = sub.add_parser("demo", help="train on the bundled sample, then retrain on newer days")
    _common(p)

    p = sub.add_parser("serve", help="serve the retraining and forecast deployments")
    _common(p)
    p.add_argument("--tickers", nargs="*", default=None, help="tickers for the forecast flow")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from pipelines.runtime import configure_environment

    settings = load_settings(args.config, args.overrides)
    configure_environment(settings)
    return settings


def _cmd_ingest(args: argparse.Namespace) -> int:
    import os

    from pipelines.flows import describe, emit_updated
    from pipelines.tasks import ingest_file

    settings = _settings(args)
    for path in args.files:
        for report in ingest_file(settings, str(path), args.ticker, args.replace or None):
            print(f"{path}: {describe(report)}")
            # A served retraining deployment listens for this (only a server can hear it).
            if report.added + report.replaced and os.environ.get("PREFECT_API_URL"):
                emit_updated(settings, report.ticker, report.added + report.replaced)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.flows import training_flow

    settings = _settings(args)
    files = [str(f) for f in args.files] or None
    summary = training_flow(settings=settings, files=files, ticker=args.ticker)
    print(summary.render())
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from pipelines.flows import retraining_flow

    summary = retraining_flow(settings=_settings(args))
    print(summary.render())
    return 0 if summary.ok else 1


def _cmd_forecast(args: argparse.Namespace) -> int:
    from pipelines.flows import forecast_flow

    settings = _settings(args)
    result = forecast_flow(settings=settings, tickers=args.tickers, days=args.days)
    print(result.render())
    return 0 if result.ok else 1


def _cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.registry import manual_promote

    print(manual_promote(_settings(args), args.ticker, args.version, args.reason))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipelines.registry import rollback

    print(rollback(_settings(args), args.ticker))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    print(run_demo(_settings(args)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.config import DEFAULT_CONFIG
    from pipelines.serve import serve

    settings = _settings(args)
    config_path = str((args.config or DEFAULT_CONFIG).resolve())
    print(
        f"serving deployments 'retraining/{'scheduled-retraining'}' (cron "
        f"'{settings.schedule.cron}' {settings.schedule.timezone}, event "
        f"'{settings.schedule.event}') and 'forecast/batch-forecast'; Ctrl-C stops"
    )
    serve(settings, config_path, args.overrides, tickers=args.tickers)
    return 0


COMMANDS = {
    "ingest": _cmd_ingest,
    "run": _cmd_run,
    "retrain": _cmd_retrain,
    "forecast": _cmd_forecast,
    "promote": _cmd_promote,
    "rollback": _cmd_rollback,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
}


def _is_data_error(exc: Exception) -> bool:
    """Errors the core raises for unusable data: reported like bad input, no traceback."""
    from lstm_core.data import DataError
    from lstm_core.train import TrainingDivergedError

    return isinstance(exc, DataError | TrainingDivergedError)


def _progress_logging() -> None:
    # Step and epoch progress on stderr; Prefect's own chatter stays at WARNING.
    logger = logging.getLogger("pipelines")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _progress_logging()
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if not _is_data_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
