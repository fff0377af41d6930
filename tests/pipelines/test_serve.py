"""pipelines.serve's Ctrl-C guarantee, in a child process (it installs a SIGINT handler)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _outages_end_with_their_test(monkeypatch):
    """An outage a test starts leaves a watcher thread that says "back" once the API answers:
    ended with its test, so that it does not speak in a later test's log (it did, under xdist)."""
    from pipelines import serve as serve_mod

    made = []
    init = serve_mod._Outage.__init__

    def tracked(self) -> None:
        init(self)
        made.append(self)

    monkeypatch.setattr(serve_mod._Outage, "__init__", tracked)
    yield
    for outage in made:
        outage.down = False  # its watcher stops at its next look, without a word


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from pipelines.serve import exit_after_interrupt
exit_after_interrupt(grace={grace})
while True:
    try:
        # inside the try: an interrupt that lands while "ready" is written is caught too
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        if not {swallow}:
            raise
        print("swallowed", flush=True)  # a runner that loses the interrupt
"""


def _interrupt(tmp_path: Path, grace: float, swallow: bool) -> tuple[int, str, float]:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), grace=grace, swallow=swallow))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out, time.monotonic() - t0
    finally:
        proc.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_swallowed_interrupt_still_ends_the_process_after_the_grace(tmp_path):
    code, out, seconds = _interrupt(tmp_path, grace=1.0, swallow=True)
    assert "swallowed" in out
    assert code == 130
    assert 1.0 <= seconds < 30


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_interrupt_raises_keyboardinterrupt_at_once(tmp_path):
    code, out, seconds = _interrupt(tmp_path, grace=120.0, swallow=False)
    assert "KeyboardInterrupt" in out
    assert code != 0 and seconds < 30  # ended by the exception, long before the timer


class _Answer503(Exception):
    class response:  # noqa: N801 - the attribute httpx's HTTPStatusError carries
        status_code = 503


@pytest.mark.parametrize(
    ("failures", "error", "calls", "raised"),
    [
        (1, _Answer503, 2, None),  # a busy server: served again, then fine
        (9, _Answer503, 1 + 5, _Answer503),  # busy for good: gives up after 5 retries
        (1, ValueError, 1, ValueError),  # anything else from a live server: raised at once
    ],
)
def test_a_busy_api_is_retried_and_other_errors_raised(monkeypatch, failures, error, calls, raised):
    import prefect

    from pipelines import serve as serve_mod

    seen = []

    def fake_serve(*deployments, **kwargs):
        seen.append(1)
        if len(seen) <= failures:
            try:
                raise error("from the API")
            except Exception as cause:  # wrapped, as Prefect's DeploymentApplyError does
                raise RuntimeError("Error while applying deployment") from cause

    monkeypatch.setattr(prefect, "serve", fake_serve)
    monkeypatch.setattr(serve_mod, "deployments", lambda *a: [])
    monkeypatch.setattr(serve_mod, "_api_healthy", lambda: True)
    monkeypatch.setattr(serve_mod.time, "sleep", lambda s: None)
    if raised is None:
        serve_mod._serve_until_stopped(None, "", None, None, retry_seconds=0.0)
    else:
        with pytest.raises(RuntimeError) as info:
            serve_mod._serve_until_stopped(None, "", None, None, retry_seconds=0.0)
        assert isinstance(info.value.__cause__, raised)
    assert len(seen) == calls


def test_the_events_stream_breaking_is_one_line_once_per_outage(monkeypatch):
    """Prefect's runner logs its events websocket's failure with a chained traceback; `serve`
    says the API is unreachable once, and once that it is back."""
    import logging

    from pipelines import serve as serve_mod

    monkeypatch.setattr(serve_mod, "outage", serve_mod._Outage())
    monkeypatch.setattr(serve_mod, "_api_healthy", lambda: False)  # back when it says so
    said: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = said.append
    ours, prefects = logging.getLogger("pipelines"), logging.getLogger(serve_mod._OBSERVER_LOGGER)
    shown: list[logging.LogRecord] = []
    seen = logging.Handler()
    seen.emit = shown.append
    saved = ours.level, prefects.level, prefects.filters[:], prefects.propagate
    ours.addHandler(catch)
    ours.setLevel(logging.INFO)
    prefects.addHandler(seen)
    prefects.propagate = False
    try:
        serve_mod._events_stream_in_one_line()
        for _ in range(2):  # it broke, and broke again before it was back: one line
            try:
                try:
                    raise ConnectionResetError(104, "Connection reset by peer")
                except ConnectionResetError as cause:
                    raise RuntimeError("received 1012 (service restart)") from cause
            except RuntimeError as exc:
                prefects.warning(
                    "The FlowRunCancellingObserver websocket failed with an exception. "
                    "Switching to polling mode until it reconnects.",
                    exc_info=exc,
                )
        prefects.info(
            "FlowRunCancellingObserver reconnected to the events stream and stopped polling."
        )
    finally:
        ours.removeHandler(catch)
        ours.setLevel(saved[0])
        prefects.removeHandler(seen)
        prefects.setLevel(saved[1])
        prefects.filters[:] = saved[2]
        prefects.propagate = saved[3]
    assert not shown  # none of Prefect's records, so no traceback
    assert [r.getMessage() for r in said] == [
        "Prefect API unreachable (RuntimeError: received 1012 (service restart)); "
        "serving again once it answers",
        "Prefect API is back: serving the deployments again",
    ]
    assert all(r.exc_info is None for r in said)


def test_a_second_serve_says_when_the_api_goes_away(monkeypatch):
    """A serve stopped (Ctrl-C) while the Prefect API was down: the next serve in the same
    process still says that the API went away, and that it is back."""
    import logging

    import prefect

    from pipelines import serve as serve_mod

    monkeypatch.setattr(serve_mod, "outage", serve_mod._Outage())
    monkeypatch.setattr(serve_mod, "deployments", lambda *a: [])
    monkeypatch.setattr(serve_mod, "_events_stream_in_one_line", lambda: None)
    monkeypatch.setattr(serve_mod._Outage, "_watch", lambda self: None)  # serve's loop looks
    polls = iter([False, False, False, True])  # down (ended there), down, then back
    monkeypatch.setattr(serve_mod, "_api_healthy", lambda: next(polls))
    serves = iter([ConnectionError("refused"), ConnectionError("refused"), None])

    def fake_serve(*deployments, **kwargs):
        if (error := next(serves)) is not None:
            raise error

    def ctrl_c(seconds: float) -> None:  # while the first serve waits for the API
        raise KeyboardInterrupt

    monkeypatch.setattr(prefect, "serve", fake_serve)
    monkeypatch.setattr(serve_mod.time, "sleep", ctrl_c)
    said: list[str] = []  # on the logger itself: whatever propagates, and where, elsewhere
    catch = logging.Handler()
    catch.emit = lambda record: said.append(record.getMessage())
    ours = logging.getLogger("pipelines")
    monkeypatch.setattr(ours, "handlers", [*ours.handlers, catch])  # as it was afterwards
    with pytest.raises(KeyboardInterrupt):
        serve_mod.serve(None, "", retry_seconds=0.0)
    assert said == ["Prefect API unreachable (refused); serving again once it answers"]
    serve_mod.serve(None, "", retry_seconds=0.0)
    assert said == [
        "Prefect API unreachable (refused); serving again once it answers",
        "Prefect API unreachable (refused); serving again once it answers",
        "Prefect API is back: serving the deployments again",
    ]


def test_the_runners_failed_polls_are_one_line_and_the_report_at_debug(monkeypatch, capsys):
    """Prefect's runner prints a report of its failed polls, tracebacks and all, then gives
    up; under `serve` the console gets the outage's one line and the report goes to DEBUG."""
    import asyncio
    import logging

    import httpx
    from prefect.runner import _scheduled_run_poller as poller

    from pipelines import serve as serve_mod

    monkeypatch.setattr(serve_mod, "outage", serve_mod._Outage())
    monkeypatch.setattr(serve_mod, "_api_healthy", lambda: False)
    monkeypatch.setattr(poller, "critical_service_loop", poller.critical_service_loop)
    said: list[logging.LogRecord] = []
    catch = logging.Handler(logging.DEBUG)
    catch.emit = said.append
    ours, runners = logging.getLogger("pipelines"), logging.getLogger(serve_mod._POLLER_LOGGER)
    saved = ours.level, runners.level
    for logger in (ours, runners):
        logger.addHandler(catch)
        logger.setLevel(logging.DEBUG)

    async def poll() -> None:
        raise httpx.ConnectError("All connection attempts failed")

    try:
        serve_mod._polls_report_in_one_line()
        serve_mod._polls_report_in_one_line()  # once is enough: not wrapped twice
        with pytest.raises(RuntimeError, match=serve_mod._GAVE_UP) as info:
            asyncio.run(poller.critical_service_loop(workload=poll, interval=0.0))
    finally:
        for logger in (ours, runners):
            logger.removeHandler(catch)
        ours.setLevel(saved[0])
        runners.setLevel(saved[1])
    assert capsys.readouterr().out == ""  # print()'s report went elsewhere
    assert serve_mod._runner_gave_up(info.value)
    shown = [r.getMessage() for r in said if r.levelno > logging.DEBUG]
    assert shown == [
        "Prefect API unreachable (httpx.ConnectError: All connection attempts failed); "
        "serving again once it answers"
    ]
    report = [r for r in said if r.levelno == logging.DEBUG]
    assert {r.name for r in report} == {serve_mod._POLLER_LOGGER}
    text = "\n".join(r.getMessage() for r in report)
    assert "Failed the last 3 attempts" in text and "Traceback" in text


def test_a_runner_that_gave_up_is_served_again_even_if_the_api_is_back(monkeypatch):
    """The runner's giving up never ends `serve`, even when the API answers again by the
    time its error arrives (it would otherwise be raised: a traceback, exit 1)."""
    from pipelines import serve as serve_mod

    monkeypatch.setattr(serve_mod, "outage", serve_mod._Outage())
    calls = []

    def fake_serve(*deployments, **kwargs):
        calls.append(kwargs["print_starting_message"])
        if len(calls) == 1:
            try:
                raise RuntimeError(serve_mod._GAVE_UP)
            except RuntimeError as exc:  # as anyio's task groups wrap it
                raise ExceptionGroup("unhandled errors in a TaskGroup", [exc]) from None

    import prefect

    monkeypatch.setattr(prefect, "serve", fake_serve)
    monkeypatch.setattr(serve_mod, "deployments", lambda *a: [])
    monkeypatch.setattr(serve_mod, "_api_healthy", lambda: True)
    serve_mod._serve_until_stopped(None, "", None, None, retry_seconds=0.0)
    assert calls == [True, False]  # served again, without Prefect's box a second time


def test_back_is_said_once_the_api_answers(monkeypatch):
    """Not when the runner's events stream reconnects: after a long outage its backoff
    delays that by minutes."""
    import logging

    from pipelines import serve as serve_mod

    answers = threading.Event()
    monkeypatch.setattr(serve_mod, "_api_healthy", answers.is_set)
    outage = serve_mod._Outage()
    outage.every = 0.01
    # this outage's lines only: another test's watcher spoke in "pipelines" meanwhile (in CI)
    outage.log = logging.getLogger("tests.outage")
    said: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda record: said.append(record.getMessage())
    outage.log.addHandler(catch)
    try:
        outage.gone("ConnectError: All connection attempts failed")
        time.sleep(0.2)
        assert outage.down and len(said) == 1
        answers.set()
        deadline = time.monotonic() + 10
        while outage.down and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        outage.log.removeHandler(catch)
    assert said == [
        "Prefect API unreachable (ConnectError: All connection attempts failed); "
        "serving again once it answers",
        "Prefect API is back: serving the deployments again",
    ]
