"""`lstm-pipeline`: the command line. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.config import CONFIG_ENV, Settings, find_config, load_settings
from pipelines.errors import PipelineError, is_user_error


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-pipeline",
        description="Train, track and serve LSTM daily stock-price forecasts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="start a project: the default mlflow.yaml and data/ folders")
    p.add_argument("folder", nargs="?", type=Path, default=Path("."), help="default: here")

    p = sub.add_parser("ingest", help="merge price CSVs into the Parquet store")
    _common(p)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--ticker", default=None)
    p.add_argument("--replace", action="store_true", help="let the files change stored rows")

    p = sub.add_parser(
        "run",
        help="the main job: the training flow end to end",
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
    p.add_argument("--reason", default=None, help="why, recorded with the decision")

    p = sub.add_parser("rollback", help="restore the previous champion")
    _common(p)
    p.add_argument("--ticker", required=True)

    p = sub.add_parser("demo", help="train on the bundled sample, then retrain on newer days")
    _common(p)

    p = sub.add_parser("tune", help="search hyperparameters (Optuna), retrain the best, promote")
    _common(p)
    p.add_argument("--ticker", action="append", default=None, dest="tickers")
    p.add_argument("--trials", type=int, default=None, help="trials to add (tuning.trials)")
    p.add_argument(
        "--timeout", type=float, default=None, metavar="MIN", help="time budget in minutes"
    )
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
    """The project's settings; records the config file found in `args.config_path`."""
    from pipelines.runtime import configure_environment

    args.config_path = find_config(args.config)
    settings = load_settings(args.config_path, args.overrides)
    configure_environment(settings)
    return settings


def _load_tensorflow() -> None:
    # Before the flows import Keras: TensorFlow's C++ start-up lines are filtered out.
    from pipelines.runtime import quiet_tensorflow

    quiet_tensorflow()


def _cmd_init(args: argparse.Namespace) -> int:
    from pipelines.config import init_project

    created = init_project(args.folder)
    root = created[0].parent
    print(f"created {created[0]}")
    for path in created[1:]:
        print(f"created {path.relative_to(root)}/")
    print(
        f"next: cd {root} && lstm-pipeline ingest PRICES.csv --ticker T "
        "&& lstm-pipeline run --ticker T"
    )
    return 0


def _checked_ticker(ticker: str | None) -> str | None:
    from pipelines.ingest import validate_ticker

    return None if ticker is None else validate_ticker(ticker, source="--ticker")


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
    settings: Settings,
    config: Path | None,
    files: list[str],
    ticker: str | None,
    stored: tuple[str, ...] = (),
) -> None:
    """Check a run's input end to end before Prefect, TensorFlow or any write.

    Every file is parsed and previewed against the store, and each ticker's would-be series
    (or each `stored` ticker's series) is split, scaled, windowed and cut into backtest folds
    as training will do it: too short a series, a lookback longer than the data, a constant
    series or more folds than test rows fail here with one line, and nothing is stored.
    """
    import pandas as pd

    from lstm_core import data as core_data
    from lstm_core.backtest import fold_bounds
    from pipelines.errors import FOLDS_ADVICE, InputError
    from pipelines.store import PriceStore

    store = PriceStore(settings.store_path)
    frames: dict[str, tuple[str, pd.DataFrame]] = {}
    for t in stored:
        if store.manifest(t) is None:
            raise PipelineError(
                f"no prices stored for ticker {t!r} in {settings.store_path}: "
                f"store them first with: lstm-pipeline ingest FILE --ticker {t}"
            )
        frames[t] = (str(settings.store_path), store.load(t))
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
        try:
            fold_bounds(len(split.frame), settings.evaluation)
        except core_data.DataError as exc:
            raise InputError(
                path,
                f"cannot backtest {t} on its {len(frame)} rows with {cfg}: {exc}: {FOLDS_ADVICE}",
            ) from None


def _configured_sources(
    settings: Settings, config: Path | None, files: str, stored: str
) -> list[str]:
    """`data.sources` as paths; a missing one is a configuration error naming the way out."""
    sources = [str(settings.path(s)) for s in settings.data.sources]
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        from pipelines.errors import ConfigError

        raise ConfigError(
            config,
            "data.sources",
            f"{missing[0]} does not exist; give price files ({files}) or a stored ticker "
            f"({stored})",
        )
    return sources


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = list(dict.fromkeys(_checked_ticker(t) for t in args.tickers))
    files = [str(f) for f in args.files]
    if files and len(tickers) > 1:
        raise PipelineError("with FILEs, --ticker names the one ticker they hold: give it once")
    if files:  # run FILE... [--ticker T]: ingest, then train what the files hold
        ticker = tickers[0] if tickers else None
        _preflight_run(settings, args.config_path, files, ticker)
        params = {"files": files, "ticker": ticker}
    elif tickers:  # run --ticker T [--ticker U ...]: train stored tickers
        _preflight_run(settings, args.config_path, [], None, stored=tuple(tickers))
        params = {"tickers": tickers}
    else:  # run: the configured sources
        sources = _configured_sources(settings, args.config_path, "run FILE...", "run --ticker T")
        _preflight_run(settings, args.config_path, sources, settings.data.ticker)
        params = {"files": sources, "ticker": settings.data.ticker}
    _load_tensorflow()

    from pipelines.flows import fan_out, training_flow

    with fan_out(settings, training_flow) as flow:
        summary = flow(settings=settings, **params)
    print(summary.render())
    return 0 if summary.ok else 1


def _cmd_retrain(args: argparse.Namespace) -> int:
    settings = _settings(args)  # first: Prefect reads its environment when imported
    _load_tensorflow()
    from pipelines.flows import fan_out, retraining_flow

    with fan_out(settings, retraining_flow) as flow:
        summary = flow(settings=settings)
    print(summary.render())
    if not summary.ok:
        return 1
    return 2 if summary.rejected else 0  # bad input, moved aside: the rest still ran


def _cmd_forecast(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [_checked_ticker(t) for t in args.tickers]
    if args.days is not None and args.days < 1:
        raise PipelineError(f"--days {args.days}: days must be >= 1")
    _load_tensorflow()
    from pipelines.flows import forecast_flow

    result = forecast_flow(settings=settings, tickers=tickers, days=args.days)
    if result.frames or result.errors:
        print(result.render())
    if result.refused:  # the forecasts that were made are written and printed above
        refused = "; ".join(f"{t}: {m}" for t, m in result.refused.items())
        if result.errors:  # an unexpected failure as well: that one sets the exit code
            print(f"error: {refused}", file=sys.stderr)
            return 1
        raise PipelineError(refused)
    return 1 if result.errors else 0


def _cmd_promote(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    from pipelines.promotion import manual_promote

    print(manual_promote(settings, ticker, args.version, args.reason))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = _checked_ticker(args.ticker)
    from pipelines.promotion import rollback

    print(rollback(settings, ticker))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _load_tensorflow()
    from pipelines.demo import run_demo

    run_demo(settings, say=lambda text: print(text, flush=True))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [_checked_ticker(t) for t in args.tickers] if args.tickers else None
    for flag, value in (("--trials", args.trials), ("--timeout", args.timeout)):
        if value is not None and value <= 0:
            raise PipelineError(f"{flag}: must be positive, got {value}")
    # The flow searches stored tickers, or stores the configured sources first: check those
    # here, so a wrong path is one line and not a failed flow run.
    from pipelines.store import PriceStore

    configured = settings.data.ticker
    if tickers:
        _preflight_run(settings, args.config_path, [], None, stored=tuple(tickers))
    elif configured and PriceStore(settings.store_path).manifest(configured) is None:
        sources = _configured_sources(
            settings, args.config_path, "lstm-pipeline ingest FILE", "tune --ticker T"
        )
        _preflight_run(settings, args.config_path, sources, configured)
    _load_tensorflow()
    from pipelines.flows.tuning import tuning_flow

    summary = tuning_flow(
        settings=settings, tickers=tickers, trials=args.trials, timeout_minutes=args.timeout
    )
    print(summary.render())
    return 0 if summary.ok else 1


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
    from pipelines.serve import serve

    config_path = str(args.config_path)
    print(
        f"serving deployments 'retraining/{'scheduled-retraining'}' (cron "
        f"'{settings.schedule.cron}' {settings.schedule.timezone}, event "
        f"'{settings.schedule.event}') and 'forecast/batch-forecast'; Ctrl-C stops"
    )
    if settings.tuning.cron:
        print(f"and 'tuning/scheduled-tuning' (cron '{settings.tuning.cron}')")
    serve(settings, config_path, args.overrides, tickers=args.tickers)
    return 0


COMMANDS = {
    "init": _cmd_init,
    "ingest": _cmd_ingest,
    "run": _cmd_run,
    "retrain": _cmd_retrain,
    "forecast": _cmd_forecast,
    "promote": _cmd_promote,
    "rollback": _cmd_rollback,
    "serve": _cmd_serve,
    "tune": _cmd_tune,
    "demo": _cmd_demo,
    "score": _cmd_score,
    "status": _cmd_status,
}


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (main may run again, redirected)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _progress_logging() -> None:
    # Step and epoch progress on stderr; Prefect's own chatter stays at WARNING.
    logger = logging.getLogger("pipelines")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
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
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
