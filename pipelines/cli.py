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

    p = sub.add_parser("score", help="score logged forecasts against the prices that arrived")
    _common(p)
    p.add_argument("--ticker", action="append", default=None, dest="tickers")

    p = sub.add_parser("status", help="one line per ticker: champion, data, live figures")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = sub.add_parser("serve", help="serve the retraining and forecast deployments")
    _common(p)
    p.add_argument("--tickers", nargs="*", default=None, help="tickers for the forecast flow")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from pipelines.runtime import configure_environment

    settings = load_settings(args.config, args.overrides)
    configure_environment(settings)
    return settings


def _checked_ticker(ticker: str | None) -> str | None:
    from pipelines.ingest import InvalidTickerError, validate_ticker

    if ticker is None:
        return None
    try:
        return validate_ticker(ticker)
    except InvalidTickerError as exc:
        raise PipelineError(f"--ticker: {exc}") from None


def _parse(settings: Settings, path: Path | str, ticker: str | None):
    """Read and validate one price file with the configured options (no Prefect, no TF)."""
    from pipelines.ingest import read_configured

    return read_configured(settings.data, path, ticker)


def _cmd_ingest(args: argparse.Namespace) -> int:
    # Deliberately light: pyarrow + pandas only, so a bad file is reported in about a second.
    import os

    from pipelines.store import PriceStore, describe

    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    replace = bool(args.replace or settings.data.replace)
    store = PriceStore(settings.store_path)
    # Every file is validated (and checked against the store) before any is merged.
    parsed = [_parse(settings, path, ticker) for path in args.files]
    for p in parsed:
        store.preview_all(p, replace=replace)
    for path, p in zip(args.files, parsed, strict=True):
        for report in store.merge_all(p, replace=replace):
            print(f"{path}: {describe(report)}")
            # A served retraining deployment listens for this (only a server can hear it).
            if report.added + report.replaced and os.environ.get("PREFECT_API_URL"):
                from pipelines.flows import emit_updated

                emit_updated(settings, report.ticker, report.added + report.replaced)
    return 0


def _preflight_run(
    settings: Settings, config: Path | None, files: list[str], ticker: str | None
) -> None:
    """Check a run's input end to end before Prefect, TensorFlow or any write.

    Every file is parsed and previewed against the store, and each ticker's would-be series
    is split, scaled and windowed as training will do it: too short a series, a lookback
    longer than the data or a constant series fail here with one line, and nothing is stored.
    """
    import pandas as pd

    from lstm_core import data as core_data
    from pipelines.errors import InputError
    from pipelines.store import PriceStore

    store = PriceStore(settings.store_path)
    frames: dict[str, tuple[str, pd.DataFrame]] = {}
    for path in files:
        parsed = _parse(settings, path, ticker)
        for t, frame in store.preview_all(parsed, replace=settings.data.replace).items():
            if t in frames:  # several files for one ticker: their union (first wins)
                both = pd.concat([frames[t][1], frame], ignore_index=True)
                frame = both.drop_duplicates("date").sort_values("date", ignore_index=True)
            frames[t] = (path, frame)
    cfg = config or "mlflow.yaml"
    for t, (path, frame) in frames.items():
        try:
            split = core_data.split_frame(frame, settings.evaluation)
            pre = core_data.fit_preprocessor(split.train, settings.features)
            core_data.make_dataset(split, pre)
        except core_data.DataError as exc:
            raise InputError(
                path,
                f"cannot train {t} on its {len(frame)} rows with {cfg} "
                f"(features.lookback={settings.features.lookback}): {exc}",
            ) from None


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    files = [str(f) for f in args.files] or None
    if files is None:
        check_files = [str(settings.path(s)) for s in settings.data.sources]
        check_ticker = ticker or settings.data.ticker
    else:
        check_files, check_ticker = files, ticker
    _preflight_run(settings, args.config, check_files, check_ticker)

    from pipelines.flows import fan_out, training_flow

    with fan_out(settings, training_flow) as flow:
        summary = flow(settings=settings, files=files, ticker=ticker)
    print(summary.render())
    return 0 if summary.ok else 1


def _cmd_retrain(args: argparse.Namespace) -> int:
    settings = _settings(args)  # first: Prefect reads its environment when imported
    from pipelines.flows import fan_out, retraining_flow

    with fan_out(settings, retraining_flow) as flow:
        summary = flow(settings=settings)
    print(summary.render())
    return 0 if summary.ok else 1


def _cmd_forecast(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [_checked_ticker(t) for t in args.tickers]
    from pipelines.flows import forecast_flow

    result = forecast_flow(settings=settings, tickers=tickers, days=args.days)
    print(result.render())
    return 0 if result.ok else 1


def _cmd_promote(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    from pipelines.registry import manual_promote

    print(manual_promote(settings, ticker, args.version, args.reason))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    from pipelines.registry import rollback

    print(rollback(settings, ticker))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from pipelines.demo import run_demo

    run_demo(settings, say=lambda text: print(text, flush=True))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [_checked_ticker(t) for t in args.tickers] if args.tickers else None
    from pipelines.monitoring import render_status, scoring_flow, status

    results = scoring_flow(settings=settings, tickers=tickers)
    for r in results.values():
        if r.event:
            print(
                f"{r.ticker}: champion v{r.champion} degraded: emitted {settings.monitoring.event}"
            )
    print(render_status(status(settings), settings.monitoring.window_days))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    # No Prefect: the figures are computed from the forecast log, the store and the registry.
    import json

    from pipelines.monitoring import render_status, status

    settings = _settings(args)
    rows = status(settings)
    if args.json:
        print(json.dumps(rows, indent=2, default=_json_value))
    else:
        print(render_status(rows, settings.monitoring.window_days))
    return 0


def _json_value(value: object) -> object:
    return str(value)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from pipelines.config import DEFAULT_CONFIG
    from pipelines.serve import serve

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
    "score": _cmd_score,
    "status": _cmd_status,
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
