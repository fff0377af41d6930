"""`lstm-pipeline`: the command line. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
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
    from pipelines.ingestion import ingest_files

    settings = _settings(args)
    reports = ingest_files(settings, args.files, ticker=args.ticker, replace=args.replace)
    for r in reports:
        print(r)
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import serve

    serve(_settings(args), tickers=args.tickers)
    return 0


COMMANDS = {
    "ingest": _cmd_ingest,
    "run": _cmd_run,
    "retrain": _cmd_retrain,
    "forecast": _cmd_forecast,
    "promote": _cmd_promote,
    "rollback": _cmd_rollback,
    "serve": _cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
