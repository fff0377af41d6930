"""Concurrency through the real CLI: racing ingestions lose nothing, racing runs promote once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.pipelines.conftest import price_frame, write_prices
from tests.reliability.conftest import (
    MODEL,
    STORED_ROWS,
    TICKER,
    cli,
    copy_project,
    figure,
    new_project,
    registry_state,
    start_cli,
    store_digest,
)

pytestmark = pytest.mark.slow  # racing CLI runs: make test-fast leaves them out

REPEATS = 3
ROWS = 1500


def test_racing_ingestions_keep_every_row_once(trained_project, tmp_path):
    full = price_frame(ROWS)  # business days from 2020: stays in the past
    ref = copy_project(trained_project.path, tmp_path / "ref", prefect=False)
    write_prices(ref / "prices" / "ALL.csv", full)
    assert cli(ref, "ingest", "prices/ALL.csv", "--ticker", "RACE").returncode == 0
    want = store_digest(ref, "RACE")
    for k in range(REPEATS):
        project = copy_project(trained_project.path, tmp_path / f"race{k}", prefect=False)
        # overlapping parts, same values on the 500 shared days
        write_prices(project / "prices" / "A.csv", full.iloc[:1000])
        write_prices(project / "prices" / "B.csv", full.iloc[500:])
        procs = [start_cli(project, "ingest", f"prices/{f}.csv", "--ticker", "RACE") for f in "AB"]
        rcs = [p.wait(timeout=300) for p in procs]
        errs = [p.stderr.read() for p in procs]
        from pipelines.store import PriceStore

        table = PriceStore(project / "data" / "store").read_table("RACE")
        dates = table.column("date").to_pylist()
        ok = rcs == [0, 0] and len(dates) == ROWS == len(set(dates))
        ok = ok and store_digest(project, "RACE") == want
        figure("concurrent", ok)
        assert rcs == [0, 0], errs
        assert len(dates) == len(set(dates)) == ROWS
        assert store_digest(project, "RACE") == want


def test_racing_runs_promote_one_consistent_champion(trained_project, tmp_path):
    project = copy_project(trained_project.path, tmp_path / "project")
    write_prices(project / "prices" / "A.csv", price_frame(130))
    write_prices(project / "prices" / "B.csv", price_frame(130))
    procs = [start_cli(project, "run", f"prices/{f}.csv", "--ticker", TICKER) for f in "AB"]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda p: p.communicate(timeout=900), procs))
    rcs = [p.returncode for p in procs]
    locked = [out + err for out, err in outs if "database is locked" in out + err]
    if locked:  # report it verbatim: this is one of the things the suite looks for
        print("DATABASE IS LOCKED:\n" + locked[0][-5000:])
    state = registry_state(project, load=False)
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {v: dict(client.get_model_version(MODEL, v).tags) for v in state.versions}
    new_versions = [v for v in state.versions if v != "1"]
    decided = all(
        "promotion.promoted" in tags[v] and "promotion.reason" in tags[v] for v in new_versions
    )
    champion = str(state.aliases.get("champion"))
    promoted = [v for v in state.versions if tags[v].get("promotion.promoted") == "true"]
    last_promoted = (
        max(promoted, key=lambda v: tags[v].get("promotion.decided_at", "")) if promoted else None
    )
    print(json.dumps({"rcs": rcs, "tags": tags, "champion": champion}, indent=1, default=str))
    ok = rcs == [0, 0] and len(new_versions) == 2 and decided and champion == last_promoted
    figure("concurrent", ok)
    # a failed ticker is reported in the run's summary on stdout, the progress on stderr
    assert rcs == [0, 0], [(o[-2000:], e[-2000:]) for o, e in outs]
    assert len(new_versions) == 2, state.versions
    assert decided, tags
    assert champion in state.versions
    assert champion == last_promoted, (champion, tags)
    assert not state.dangling_aliases


def test_first_commands_at_once_create_one_tracking_store(tmp_path):
    # Two commands that open a new project's tracking store at the same moment: MLflow creates
    # and migrates mlflow.db on first use, and two migrations at once failed one (or both)
    # with alembic's "expected to match one row" traceback. `status` is the cheapest opener.
    for k in range(REPEATS):
        project = new_project(tmp_path / f"fresh{k}")
        procs = [start_cli(project, "status") for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        rcs = [p.returncode for p in procs]
        figure("concurrent", rcs == [0, 0])
        assert rcs == [0, 0], [err[-2000:] for _, err in outs]
        assert all("no tickers in the store yet" in out for out, _ in outs), outs


def test_two_retrains_at_once_take_an_incoming_file_once_and_train_once(trained_project, tmp_path):
    """A cron `retrain` overlapping another one, with a day in the incoming folder: one of
    them ingests, archives and trains it, the other waits and finds nothing left to do. Both
    exit 0 without a traceback (the second used to die moving a file already gone), the day
    is stored once, archived once, and one version is trained on it."""
    project = copy_project(trained_project.path, tmp_path / "project")
    write_prices(project / "data" / "incoming" / f"{TICKER}.csv", price_frame(121).iloc[[120]])
    fast = ("--set", "evaluation.backtest_folds=0")
    procs = [start_cli(project, "retrain", *fast) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda p: p.communicate(timeout=600), procs))
    rcs = [p.returncode for p in procs]
    from pipelines.store import PriceStore

    stored = PriceStore(project / "data" / "store").manifest(TICKER)
    archived = sorted(p.name for p in (project / "data" / "archive").iterdir())
    state = registry_state(project, load=False)
    errs = "".join(err for _, err in outs)
    ok = rcs == [0, 0] and "Traceback" not in errs and state.versions == ["1", "2"]
    figure("concurrent", ok)
    assert rcs == [0, 0], [(o[-2000:], e[-3000:]) for o, e in outs]
    assert "Traceback" not in errs and "ERROR" not in errs, errs[-3000:]
    assert stored.rows == STORED_ROWS + 1
    assert len(archived) == 1 and archived[0].startswith(f"{TICKER}."), archived
    assert not list((project / "data" / "incoming").iterdir())
    assert state.versions == ["1", "2"], state.versions  # trained once on the new day
    ingested = [o for o, _ in outs if f"ingested {TICKER}.csv" in o]
    assert len(ingested) == 1, [o for o, _ in outs]
    assert any(f"{TICKER}: skip (unchanged since v2 was trained)" in o for o, _ in outs), outs
