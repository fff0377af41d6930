"""Crash safety: SIGKILL `lstm-pipeline ingest` and `lstm-pipeline run` at seeded random points.

After each kill the store must be readable and hold either the old or the new rows (never a mix),
every registered version's model must load, and no alias may point to a missing version. A rerun
after the crash must complete normally. Runs left RUNNING by a kill and versions registered but
never decided (no ``promotion.promoted`` tag) are reported on stderr right after the kill, not
failed: no process can end them then. A later run settles both (the last test: the runs).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.pipelines.conftest import price_frame, write_prices
from tests.reliability.conftest import (
    TICKER,
    cli,
    cli_env,
    copy_project,
    figure,
    kill_group,
    registry_state,
    start_cli,
    store_digest,
    stray_temp_files,
)
from tests.user_path import prefect_server_child

pytestmark = pytest.mark.slow  # SIGKILL crash trials: make test-fast leaves them out

SEED = 20240611
INGEST_TRIALS = 14
RUN_TRIALS = 6
NEW_ROWS = 1500  # the new file: a superset of the stored 120 rows (same series)


def _new_digest(trained: Path, tmp: Path, rows: int) -> tuple[str, float]:
    """The store digest after the new file is ingested without interruption, and how long
    that ingestion took."""
    scratch = copy_project(trained, tmp / "scratch", prefect=False)
    write_prices(scratch / "prices" / "NEW.csv", price_frame(rows))
    t0 = time.monotonic()
    out = cli(scratch, "ingest", "prices/NEW.csv", "--ticker", TICKER)
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    return store_digest(scratch), seconds


def test_sigkill_ingest_leaves_old_or_new_store(trained_project, tmp_path):
    trained = trained_project.path
    old = store_digest(trained)
    new, seconds = _new_digest(trained, tmp_path, NEW_ROWS)
    rng = random.Random(SEED)
    # Most of an ingestion is interpreter start-up and imports: aim the kills at the last
    # part (parse, merge, write, rename), where a crash could do damage.
    delays = [rng.uniform(0.4 * seconds, 1.05 * seconds) for _ in range(INGEST_TRIALS)]

    def trial(i: int) -> dict:
        project = copy_project(trained, tmp_path / f"ingest{i}", prefect=False)
        write_prices(project / "prices" / "NEW.csv", price_frame(NEW_ROWS))
        proc = start_cli(project, "ingest", "prices/NEW.csv", "--ticker", TICKER)
        time.sleep(delays[i])
        finished = proc.poll() is not None
        kill_group(proc)
        after = store_digest(project)
        rerun = cli(project, "ingest", "prices/NEW.csv", "--ticker", TICKER)
        return {
            "delay": delays[i],
            "finished_before_kill": finished,
            "state": "old" if after == old else "new" if after == new else f"MIXED {after}",
            "stray_tmp": stray_temp_files(project),
            "rerun_rc": rerun.returncode,
            "rerun_err": rerun.stderr[-500:],
            "final_is_new": store_digest(project) == new,
        }

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(trial, range(INGEST_TRIALS)))
    for r in results:
        figure(
            "crash",
            r["state"] in ("old", "new") and r["rerun_rc"] == 0 and r["final_is_new"],
        )
    print(json.dumps(results, indent=1))
    states = [r["state"] for r in results]
    assert all(s in ("old", "new") for s in states), states
    assert all(r["rerun_rc"] == 0 for r in results), [r["rerun_err"] for r in results]
    assert all(r["final_is_new"] for r in results)
    # leftovers of a killed write are only ever temporary files that readers ignore
    assert all(all(".tmp" in p for p in r["stray_tmp"]) for r in results)


# Points in a run's stderr after which the kill is armed (PREFECT_LOGGING_LEVEL=INFO shows them).
MARKERS = [
    None,  # right after start: Prefect / TensorFlow start-up
    "Task run 'ingest",
    "epoch 1/1",
    "Task run 'log-run",
    "Task run 'log-model",
    "Task run 'register",
]


def _run_trial(project: Path, marker: str | None, delay: float) -> dict:
    env = cli_env(project, PREFECT_LOGGING_LEVEL="INFO")
    proc = start_cli(project, "run", "prices/NEW.csv", "--ticker", TICKER, env=env)
    seen = threading.Event()
    lines: list[str] = []

    def reader() -> None:
        for line in proc.stderr:
            lines.append(line)
            if marker is None or marker in line:
                seen.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    if marker is None:
        seen.set()
    t0 = time.monotonic()
    while not seen.is_set() and proc.poll() is None and time.monotonic() - t0 < 400:
        time.sleep(0.05)
    time.sleep(delay)
    finished = proc.poll() is not None
    kill_group(proc)
    t.join(timeout=10)
    return {
        "marker": marker,
        "delay": round(delay, 2),
        "finished_before_kill": finished,
        "rc": proc.returncode,
        "tail": "".join(lines[-3:])[-400:],
    }


@pytest.fixture(scope="module")
def killed_runs(trained_project, tmp_path_factory) -> list[dict]:
    trained = trained_project.path
    root = tmp_path_factory.mktemp("killed-runs")
    rng = random.Random(SEED + 1)
    plan = [(MARKERS[i % len(MARKERS)], rng.uniform(0.0, 2.0)) for i in range(RUN_TRIALS)]
    rng.shuffle(plan)

    def trial(i: int) -> dict:
        project = copy_project(trained, root / f"run{i}")
        write_prices(project / "prices" / "NEW.csv", price_frame(STORED_PLUS))
        out = _run_trial(project, *plan[i])
        out["project"] = str(project)
        return out

    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(trial, range(RUN_TRIALS)))


STORED_PLUS = 140  # 20 new days on top of the stored 120


def test_sigkill_run_keeps_store_and_registry_consistent(trained_project, killed_runs, tmp_path):
    trained = trained_project.path
    old = store_digest(trained)
    new, _ = _new_digest(trained, tmp_path, STORED_PLUS)
    report = []
    for r in killed_runs:
        project = Path(r["project"])
        digest = store_digest(project)
        state = registry_state(project)
        entry = {
            **{k: r[k] for k in ("marker", "delay", "finished_before_kill")},
            "store": "old" if digest == old else "new" if digest == new else "MIXED",
            "versions": state.versions,
            "aliases": state.aliases,
            "undecided_versions": state.undecided,
            "unloadable": state.unloadable,
            "dangling_aliases": state.dangling_aliases,
            "runs": state.runs,
            "stray_tmp": stray_temp_files(project),
        }
        ok = entry["store"] != "MIXED" and not state.unloadable and not state.dangling_aliases
        figure("crash", ok)
        report.append(entry)
    print(json.dumps(report, indent=1))
    for e in report:
        assert e["store"] in ("old", "new"), e
        assert not e["unloadable"], e
        assert not e["dangling_aliases"], e
        assert e["aliases"].get("champion") in e["versions"], e


def test_rerun_after_a_killed_run_completes(killed_runs):
    # the two trials killed latest in the flow: their projects are the most "dirty"
    order = sorted(killed_runs, key=lambda r: MARKERS.index(r["marker"]), reverse=True)[:2]

    def rerun(r: dict):
        project = Path(r["project"])
        return project, cli(project, "run", "prices/NEW.csv", "--ticker", TICKER)

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(rerun, order))
    for project, out in done:
        state = registry_state(project, load=False)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert state.aliases.get("champion") in state.versions
        shutil.rmtree(project / ".prefect", ignore_errors=True)


def _run_statuses(db: Path) -> dict[str, str]:
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("SELECT run_uuid, status FROM runs"))
    finally:
        con.close()


def test_a_killed_runs_mlflow_run_is_failed_by_the_next_command(trained_project, tmp_path):
    # SIGKILL leaves no chance to end the MLflow run: the next command that connects finds it
    # RUNNING with an owner process that has ended, and marks it FAILED, saying why.
    project = copy_project(trained_project.path, tmp_path / "project")
    db = project / "mlflow.db"
    before = _run_statuses(db)
    proc = start_cli(project, "run", "--ticker", TICKER)
    try:
        t0, killed = time.monotonic(), []
        while not killed and proc.poll() is None and time.monotonic() - t0 < 600:
            time.sleep(0.3)
            killed = [r for r, s in _run_statuses(db).items() if r not in before and s == "RUNNING"]
    finally:
        kill_group(proc)
    assert len(killed) == 1, proc.stderr.read()[-3000:]
    assert _run_statuses(db)[killed[0]] == "RUNNING"
    out = cli(project, "run", "--ticker", TICKER)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _run_statuses(db)
    assert after[killed[0]] == "FAILED"
    newer = [s for r, s in after.items() if r not in before and r != killed[0]]
    assert newer and set(newer) == {"FINISHED"}, after  # the training run (and its forecast)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    note = client.get_run(killed[0]).data.tags["owner.settled"]
    assert f"process {proc.pid} on" in note and "has ended" in note, note


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended, whoever reaps it


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_a_killed_commands_prefect_server_is_stopped_by_the_next_command(trained_project, tmp_path):
    # Prefect stops its temporary API server at exit; SIGKILL on the command alone leaves the
    # server running for good (225 MB each). The next command that starts one stops it.
    project = copy_project(trained_project.path, tmp_path / "project")
    proc = start_cli(project, "score")
    server = None
    try:
        t0 = time.monotonic()
        while server is None and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.2)
            server = prefect_server_child(proc.pid)
        assert server is not None, proc.communicate()[1][-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the command only, as `kill -9 PID` does
        proc.wait(timeout=30)
        time.sleep(1)
        assert _running(server)
        out = cli(project, "score")
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"stopped Prefect's temporary server (pid {server})" in out.stderr, out.stderr
        t0 = time.monotonic()
        while _running(server) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        assert not _running(server)
    finally:
        if server is not None and _running(server):
            os.kill(server, signal.SIGKILL)
