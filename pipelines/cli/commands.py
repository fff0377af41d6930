"""Each `lstm-pipeline` command, and `main`, which parses the arguments, runs one command and
turns a user error into one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys

from pipelines.cli.console import line_buffered_stdout, one_place, print_summary
from pipelines.cli.parser import build_parser
from pipelines.cli.preflight import (
    check_stored,
    checked_ticker,
    configured_sources,
    parse_configured,
    preflight_run,
    preflight_tracking,
    preflight_writable,
)
from pipelines.config import Settings, find_config, load_settings
from pipelines.errors import PipelineError, is_user_error

_FLOWS = ("prefect", "tracking", "locks")  # Prefect's home, MLflow, the promotion locks
# A training: a promoted model forecasts at once, and the first makes the project's id.
_TRAINS = ("forecasts", "project_id", *_FLOWS)
# Where each command writes (`preflight.PLACES`), checked before Prefect or MLflow start.
WRITES: dict[str, tuple[str, ...]] = {
    "ingest": ("store",),
    "run": ("store", *_TRAINS),
    "retrain": ("store", "incoming", "archive", "rejected", *_TRAINS),
    "forecast": ("forecasts", *_FLOWS),
    "score": _FLOWS,
    "tune": ("store", "tuning", *_TRAINS),
    "promote": ("tracking", "locks", "forecasts"),  # a new champion forecasts at once
    "rollback": ("tracking", "locks", "forecasts"),
    "demo": ("store", "demo", *_TRAINS),
    "serve": ("store", "incoming", "archive", "rejected", "tuning", *_TRAINS),
}


def _settings(args: argparse.Namespace) -> Settings:
    """The project's settings; records the config file found in `args.config_path`. The
    command checks its input next, then calls `_writable` before it writes anything."""
    from pipelines.runtime import configure_environment

    args.config_path = find_config(args.config)
    settings = load_settings(args.config_path, args.overrides)
    configure_environment(settings)
    return settings


def _writable(settings: Settings, args: argparse.Namespace) -> None:
    """The places the command writes (`WRITES`) can be written: checked after the input
    checks (which write nothing), so that a mistake in the command is named first, even in a
    read-only project, and before Prefect, MLflow or any write."""
    preflight_writable(settings, WRITES.get(args.command, ()))


def _before_flows(settings: Settings, *modules: str, tensorflow: bool = True) -> None:
    """Ready this process for flow runs, once the input has passed its checks: import
    TensorFlow and the command's `modules` while Prefect's temporary API server starts."""
    import importlib

    from pipelines.runtime import quiet_tensorflow, start_prefect_api

    api = start_prefect_api(settings)  # out of reach of Ctrl-C, so an interrupted run can end
    if tensorflow:  # before the flows import Keras: its C++ start-up lines are filtered out
        quiet_tensorflow()
    for module in modules:
        importlib.import_module(module)
    api.wait()


def _cmd_init(args: argparse.Namespace) -> int:
    from pipelines.config import init_project

    created = init_project(args.folder)
    root = created[0].parent
    print(f"created {created[0]}")
    for path in created[1:]:
        print(f"created {path.relative_to(root)}/")
    # quoted, so the line pastes into a shell whatever the folder's name holds
    print(
        f"next: cd {shlex.quote(str(root))} && lstm-pipeline ingest PRICES.csv --ticker T "
        "&& lstm-pipeline run --ticker T"
    )
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    # Deliberately light: pyarrow + pandas only, so a bad file is reported in about a second.

    from pipelines.runtime import prefect_server_url
    from pipelines.store import PriceStore, describe

    settings = _settings(args)
    ticker = checked_ticker(args.ticker)
    replace = bool(args.replace or settings.data.replace)
    store = PriceStore(settings.store_path)
    # Every file is validated, then all are merged as one: each is checked against the store
    # as the files before it leave it, and nothing is written unless every file passes.
    parsed = [parse_configured(settings, path, ticker) for path in args.files]
    _writable(settings, args)
    merged = store.merge_files(parsed, replace=replace)
    gained: dict[str, int] = {}
    for path, reports in zip(args.files, merged, strict=True):
        for report in reports:
            print(f"{path}: {describe(report)}")
            changed = report.added + report.replaced
            if changed:
                gained[report.ticker] = gained.get(report.ticker, 0) + changed
    # A warning, not a refusal: real series have suspensions, but forecasts for the missing
    # sessions cannot be scored, and the user should know before `score` says so.
    for line in store.gap_warnings(
        [r for reports in merged for r in reports], settings.data.calendar
    ):
        logging.getLogger("pipelines").warning(line)
    # A served retraining deployment listens for this (only a server can hear it).
    served = prefect_server_url() if gained else None
    if served:
        from pipelines.flows import emit_updated

        # its "Unable to connect" warning would say again what the one line below says
        logging.getLogger("prefect.events.clients").setLevel(logging.ERROR)
        try:
            emit_updated(settings, gained)
        except Exception as exc:  # the rows are stored: say what did not happen, exit 0
            print(
                f"warning: {settings.schedule.event} not sent to {served} "
                f"({exc}): the rows are stored, but no served retraining starts from them",
                file=sys.stderr,
            )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = list(dict.fromkeys(checked_ticker(t) for t in args.tickers))
    files = [str(f) for f in args.files]
    if files and len(tickers) > 1:
        raise PipelineError("with FILEs, --ticker names the one ticker they hold: give it once")
    if files:  # run FILE... [--ticker T]: ingest, then train what the files hold
        ticker = tickers[0] if tickers else None
        preflight_run(settings, args.config_path, files, ticker)
        params = {"files": files, "ticker": ticker}
    elif tickers:  # run --ticker T [--ticker U ...]: train stored tickers
        preflight_run(settings, args.config_path, [], None, stored=tuple(tickers))
        params = {"tickers": tickers}
    else:  # run: the configured sources
        sources = configured_sources(settings, args.config_path, "run FILE...", "run --ticker T")
        preflight_run(settings, args.config_path, sources, settings.data.ticker)
        params = {"files": sources, "ticker": settings.data.ticker}
    _writable(settings, args)
    preflight_tracking(settings)
    _before_flows(settings, "pipelines.flows")

    from pipelines.flows import fan_out, training_flow

    with fan_out(settings, training_flow) as flow:
        summary = flow(settings=settings, **params)
    print_summary(summary)
    return 0 if summary.ok else 1


def _cmd_retrain(args: argparse.Namespace) -> int:
    settings = _settings(args)  # first: Prefect reads its environment when imported
    _writable(settings, args)
    preflight_tracking(settings)
    _before_flows(settings, "pipelines.flows")
    from pipelines.flows import fan_out, retraining_flow

    with fan_out(settings, retraining_flow) as flow:
        summary = flow(settings=settings)
    print_summary(summary)
    if not summary.ok:
        return 1
    return 2 if summary.rejected else 0  # bad input, moved aside: the rest still ran


def _cmd_forecast(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [checked_ticker(t) for t in args.tickers] if args.tickers else None
    if args.days is not None and args.days < 1:
        raise PipelineError(f"--days {args.days}: days must be >= 1")
    if tickers is None:  # every stored ticker
        from pipelines.store import PriceStore

        tickers = PriceStore(settings.store_path).tickers()
        if not tickers:
            raise PipelineError(
                f"no prices stored in {settings.store_path}: store them first with: "
                "lstm-pipeline ingest FILE --ticker T"
            )
    _writable(settings, args)
    preflight_tracking(settings)
    _before_flows(settings, "pipelines.flows")
    from pipelines.flows import forecast_flow

    result = forecast_flow(settings=settings, tickers=tickers, days=args.days)
    if result.frames or result.errors:
        print(result.render())
    if result.refused:  # the forecasts that were made are written and printed above
        refused = "; ".join(result.refusals())
        if result.errors:  # an unexpected failure as well: that one sets the exit code
            print(f"error: {refused}", file=sys.stderr)
            return 1
        raise PipelineError(refused)
    return 1 if result.errors else 0


def _cmd_promote(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = checked_ticker(args.ticker)
    _writable(settings, args)
    preflight_tracking(settings)
    from pipelines.promotion import manual_promote

    said, moved = manual_promote(settings, ticker, args.version, args.reason)
    print(said)
    if moved:
        _first_forecast(settings, ticker)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ticker = checked_ticker(args.ticker)
    _writable(settings, args)
    preflight_tracking(settings)
    from pipelines.promotion import rollback

    print(rollback(settings, ticker))
    _first_forecast(settings, ticker)
    return 0


def _first_forecast(settings: Settings, ticker: str) -> None:
    """A champion set by hand forecasts at once, as one a run promotes, when its prices are
    stored here; the promotion stands if it cannot (`forecast` tries again)."""
    from pipelines.store import PriceStore

    if PriceStore(settings.store_path).lacks(ticker):  # a project serving, not storing
        return
    from pipelines.flows.forecast import ForecastResult, first_forecast

    if (made := first_forecast(settings, ticker)) is not None:
        frame, path = made
        print(ForecastResult(frames={ticker: frame}, paths={ticker: path}).render())


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _writable(settings, args)
    preflight_tracking(settings)
    _before_flows(settings, "pipelines.demo")
    from pipelines.demo import run_demo

    run_demo(settings, say=lambda text: print(text, flush=True), notes=not one_place())
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [checked_ticker(t) for t in args.tickers] if args.tickers else None
    for flag, value in (("--trials", args.trials), ("--timeout", args.timeout)):
        if value is not None and value <= 0:
            raise PipelineError(f"{flag}: must be positive, got {value}")
    # The flow searches stored tickers, or stores the configured sources first: check those
    # here (the configured values and the search space's), so a wrong path, or a space the
    # data cannot window, is one line and not a failed flow run.
    from pipelines.store import PriceStore
    from pipelines.tuning import check_study

    configured = settings.data.ticker
    store = PriceStore(settings.store_path)
    if not tickers and store.lacks(configured):
        sources = configured_sources(
            settings, args.config_path, "lstm-pipeline ingest FILE", "tune --ticker T"
        )
        searched = preflight_run(settings, args.config_path, sources, configured, space=True)
    else:  # the tickers the flow will search
        searched = tickers or ([configured] if configured else store.tickers())
        preflight_run(settings, args.config_path, [], None, stored=tuple(searched), space=True)
    _writable(settings, args)
    # a study's storage is opened to read it (a database makes its tables): after the check
    for ticker in searched:
        check_study(settings, ticker)
    preflight_tracking(settings)
    _before_flows(settings, "pipelines.flows.tuning")
    from pipelines.flows.tuning import tuning_flow

    summary = tuning_flow(
        settings=settings, tickers=tickers, trials=args.trials, timeout_minutes=args.timeout
    )
    print(summary.render())
    return 0 if summary.ok else 1


def _cmd_score(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = [checked_ticker(t) for t in args.tickers] if args.tickers else None
    check_stored(settings, tickers or [])
    _writable(settings, args)
    preflight_tracking(settings)
    from pipelines.runtime import prefect_server_url

    served = prefect_server_url()  # before this command's own temporary API starts
    _before_flows(settings, "pipelines.monitoring", tensorflow=False)
    from pipelines.monitoring import render_status, scoring_flow, status

    results = scoring_flow(settings=settings, tickers=tickers)
    event = settings.monitoring.event
    for r in results.values():
        if not r.event:
            continue
        if served:
            print(f"{r.ticker}: champion v{r.champion} degraded: emitted {event} to {served}")
        else:  # it went to this command's temporary API: no served retraining hears it
            print(
                f"{r.ticker}: champion v{r.champion} degraded; no Prefect server to receive "
                f"{event} (set PREFECT_API_URL); retrain it with: lstm-pipeline retrain"
            )
    print(render_status(status(settings, tickers), settings.monitoring.window_days))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    # No Prefect: the figures are computed from the forecast log, the store and the registry.
    import json

    from pipelines.monitoring import render_status, status

    settings = _settings(args)
    tickers = list(dict.fromkeys(checked_ticker(t) for t in args.tickers)) if args.tickers else None
    check_stored(settings, tickers or [])
    rows = status(settings, tickers)
    if args.json:
        print(json.dumps(rows, indent=2, default=_json_value))
    else:
        print(render_status(rows, settings.monitoring.window_days))
    return 0


def _json_value(value: object) -> object:
    return str(value)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    tickers = list(dict.fromkeys(checked_ticker(t) for t in args.tickers or [])) or None
    _writable(settings, args)
    preflight_tracking(settings)
    from pipelines.serve import serve

    config_path = str(args.config_path)
    print(
        f"serving deployments 'retraining/{'scheduled-retraining'}' (cron "
        f"'{settings.schedule.cron}' {settings.schedule.timezone}, event "
        f"'{settings.schedule.event}') and 'forecast/batch-forecast'; Ctrl-C stops"
    )
    if settings.tuning.cron:
        print(f"and 'tuning/scheduled-tuning' (cron '{settings.tuning.cron}')")
    serve(settings, config_path, args.overrides, tickers=tickers)
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


def main(argv: list[str] | None = None) -> int:
    from pipelines.runtime import cut_by_interrupt, progress_logging, quiet_interrupts

    line_buffered_stdout()
    args = build_parser().parse_args(argv)
    progress_logging()
    quiet_interrupts()  # Ctrl-C is one line, `interrupted`, below
    try:
        return COMMANDS[args.command](args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # whatever read stdout has gone (`status --json | head -1`): nothing more to tell it,
        # and Python's flush at exit must not fail again; 141, as a tool killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # What the places checked before the work did not foresee (a file inside them made
        # read-only, a mount gone read-only meanwhile): still one line naming the path.
        if not (isinstance(exc, PermissionError) or exc.errno == errno.EROFS):
            raise
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if cut_by_interrupt(exc):  # an error of a write Ctrl-C cut short: the stop is the news
            print("interrupted", file=sys.stderr)
            return 130
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
