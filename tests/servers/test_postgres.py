"""A team's set-up on PostgreSQL, for real: both servers on one throwaway cluster.

`mlflow server` keeps runs and the registry in PostgreSQL (``postgresql+psycopg://``) and
proxies artifacts to a folder of its own (clients see ``mlflow-artifacts:/``); `prefect server`
keeps its state in PostgreSQL (``postgresql+asyncpg://``). The client commands run the real
CLI in folders of their own, with the server's artifact folder hidden from them (an empty
tmpfs mounted over it in a private mount namespace, where `unshare -m` is allowed), so they
can reach artifacts over HTTP only.

One cluster and one server pair serve the whole module; the tests run in file order (the
client project trained first is moved, then served).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipelines.retries import RETRY_LOG_ENV, conflict_lines, count_retries
from pipelines.servers import (
    BIN,
    ServerProcess,
    child_env,
    start_mlflow_server,
    start_prefect_server,
)
from tests.pipelines.conftest import TINY_CONFIG, price_frame, write_prices
from tests.servers.conftest import (
    FORECAST,
    RETRAIN,
    SERVERS_CONFIG,
    deployment,
    log_tail,
    wait_deployments,
)
from tests.servers.test_mlflow_server import SECOND_CLIENT
from tests.servers.test_prefect_serve import (
    _runs_of,
    _task_run_names,
    _wait_terminal,
    _wait_triggered,
)

pytestmark = pytest.mark.servers

TICKER = "TEST"
MODEL = f"test-{TICKER}"
ROWS = 120
FANOUT_TICKERS = [f"T{i:02d}" for i in range(8)]
FANOUT_WORKERS = 4


@dataclass
class Stack:
    mlflow: ServerProcess
    prefect: ServerProcess
    artifacts: Path  # the tracking server's --artifacts-destination


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory) -> Stack:
    """Both servers on the PostgreSQL cluster, started at once; both stopped at the end."""
    started: dict[str, ServerProcess] = {}
    root = tmp_path_factory.mktemp("pg-servers")
    try:
        started["mlflow"] = start_mlflow_server(
            root / "mlflow",
            backend_store_uri=postgres.url("mlflow", "psycopg"),
            artifacts_destination=root / "shared-artifacts",
            wait=False,
        )
        started["prefect"] = start_prefect_server(
            root / "prefect", database_url=postgres.url("prefect", "asyncpg"), wait=False
        )
        for server in started.values():
            server.wait_healthy(timeout=240)
        yield Stack(started["mlflow"], started["prefect"], root / "shared-artifacts")
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def pg_prefect_api(stack):
    """This process talks to the PostgreSQL-backed Prefect server while the module runs."""
    import mlflow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = stack.prefect.url
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect.url}):
            yield stack.prefect.url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


# ----------------------------------------------------------------- the client's view


def _can_hide(folder: Path) -> bool:
    marker = folder / ".visible"
    marker.write_text("x")
    try:
        out = subprocess.run(
            _hidden(folder, ["test", "!", "-e", str(marker)]),
            capture_output=True,
            timeout=30,
            check=False,
        )
        return out.returncode == 0
    except OSError:
        return False
    finally:
        marker.unlink()


def _hidden(folder: Path, cmd: list[str]) -> list[str]:
    """`cmd` in a private mount namespace where `folder` is an empty tmpfs."""
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "sh", str(folder), *cmd]


@pytest.fixture(scope="module")
def client_cmd(stack):
    """Build a client command line: hidden from the artifact folder where the OS allows it."""
    hide = shutil.which("unshare") is not None and _can_hide(stack.artifacts)
    if not hide:
        import warnings

        warnings.warn(
            "unshare -m is not allowed here: client commands can see the artifact folder "
            "(the mlflow-artifacts:/ checks still hold)",
            stacklevel=1,
        )

    def build(*cmd: str) -> list[str]:
        return _hidden(stack.artifacts, list(cmd)) if hide else list(cmd)

    return build


def _client_env(stack: Stack, project: Path, **extra: str) -> dict[str, str]:
    return child_env(
        {
            "MLFLOW_TRACKING_URI": stack.mlflow.url,
            "PREFECT_API_URL": stack.prefect.url,
            "PREFECT_HOME": str(project / ".prefect"),
            "PYTHONWARNINGS": "ignore",
            **extra,
        }
    )


def _cli(client_cmd, stack, project: Path, *args: str, timeout: float = 600):
    return subprocess.run(
        client_cmd(str(BIN / "lstm-pipeline"), *args),
        cwd=project,
        env=_client_env(stack, project),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def client_project(stack, pg_prefect_api, client_cmd, tmp_path_factory) -> dict:
    """`lstm-pipeline run` from a client folder: trains, logs, registers, promotes over HTTP."""
    project = tmp_path_factory.mktemp("client") / "project"
    project.mkdir()
    (project / "mlflow.yaml").write_text(SERVERS_CONFIG, encoding="utf-8")
    write_prices(project / "prices" / f"{TICKER}.csv", price_frame(ROWS))
    out = _cli(
        client_cmd,
        stack,
        project,
        "run",
        "--config",
        "mlflow.yaml",
        "--set",
        "evaluation.backtest_folds=0",
        "--set",
        "tracking.experiment=pg-client",
        f"prices/{TICKER}.csv",
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
    return {"path": project, "stdout": out.stdout}


def test_client_trains_registers_promotes_over_http_only(stack, client_project, client_cmd):
    from mlflow import MlflowClient

    assert "CHAMPION" in client_project["stdout"], client_project["stdout"]
    assert "mlflow-artifacts:/" in client_project["stdout"], client_project["stdout"]
    assert "View run" not in client_project["stdout"], client_project["stdout"]  # MLflow's own
    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["promotion.promoted"] == "true"
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    # The client wrote nothing of MLflow's locally; the server's folder holds the artifacts.
    project = client_project["path"]
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
    assert list(stack.artifacts.rglob("MLmodel")), "the model's files are not on the server"
    assert any(stack.artifacts.rglob("test_predictions.png"))

    # A fresh Python client in yet another folder loads the champion over HTTP.
    from pipelines.store import PriceStore

    other = project.parent / "elsewhere"
    other.mkdir()
    recent = PriceStore(project / "data" / "store").load(TICKER).tail(30)
    recent.to_csv(other / "recent.csv", index=False)
    out = subprocess.run(
        client_cmd(sys.executable, "-c", SECOND_CLIENT, run.info.run_id, MODEL, "recent.csv"),
        cwd=other,
        env=_client_env(stack, other),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["status"] == "FINISHED" and loaded["rows"] >= 1
    assert all(v == v and v > 0 for v in loaded["values"])


def test_moved_project_still_forecasts_with_the_champion(stack, client_project, client_cmd):
    old = client_project["path"]
    new = old.parent / "moved-project"
    subprocess.run(["mv", str(old), str(new)], check=True)
    client_project["path"] = new  # later tests serve the moved project
    assert not old.exists()
    out = _cli(client_cmd, stack, new, "forecast", "--config", "mlflow.yaml", "--ticker", TICKER)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
    frame = pd.read_parquet(new / "data" / "forecasts" / f"{TICKER}.parquet")
    assert len(frame) == 3  # evaluation.forecast_days
    assert set(frame["version"]) == {"1"}
    assert frame.select_dtypes("number").gt(0).all().all(), frame


# ----------------------------------------------------------------- Prefect on PostgreSQL


def test_serve_on_postgres_runs_from_the_api_and_from_an_event(
    stack, client_project, client_cmd, pg_prefect_api
):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    project = client_project["path"]
    env = _client_env(stack, project, PREFECT_RUNNER_POLL_FREQUENCY="1")
    served = ServerProcess(
        name="lstm-pipeline serve",
        args=client_cmd(str(BIN / "lstm-pipeline"), "serve", "--config", "mlflow.yaml"),
        url=stack.prefect.url,
        health_url=stack.prefect.url + "/health",
        log_path=project.parent / "serve.log",
        env=env,
        cwd=project,
    ).start()
    try:
        wait_deployments(served, stack.prefect)
        assert deployment(FORECAST).id
        client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)

        # 1. a run triggered through the API retrains on a new file in data/incoming
        full = price_frame(ROWS + 20)
        write_prices(project / "data" / "incoming" / f"{TICKER}.csv", full.iloc[115:130])
        flow_run = _wait_terminal(run_deployment(RETRAIN, timeout=0).id)
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{log_tail(served)}"
        assert {"ingest", "train", "register", "promote"} <= _task_run_names(flow_run.id)
        assert client.get_model_version(MODEL, "2").tags["data.rows"] == "130"

        # 2. `lstm-pipeline ingest` emits prices.updated; the served deployment reacts
        retrain = deployment(RETRAIN)
        before = {r.id for r in _runs_of(retrain.id)}
        new = project / "new" / f"{TICKER}.csv"
        write_prices(new, full.iloc[125:140])
        out = _cli(
            client_cmd,
            stack,
            project,
            "ingest",
            "--config",
            "mlflow.yaml",
            str(new),
            "--ticker",
            TICKER,
        )
        assert out.returncode == 0 and "+10 new" in out.stdout, out.stdout + out.stderr[-3000:]
        run = _wait_triggered(retrain.id, before, served, 180)
        assert run.state.is_completed(), f"{run.state}\n{log_tail(served)}"
        assert "train" in _task_run_names(run.id)
        assert client.get_model_version(MODEL, "3").tags["data.rows"] == "140"
    finally:
        served.signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            served.proc.wait(60)
        served.stop()


# ----------------------------------------------------------------- many workers at once


@pytest.fixture(scope="module")
def fanned_out(stack, pg_prefect_api, tmp_path_factory):
    """8 tiny tickers fanned out over 4 Dask worker processes, retries counted in a file."""
    from prefect_dask import DaskTaskRunner

    from pipelines.config import load_settings
    from pipelines.flows import fan_out, training_flow
    from pipelines.tasks import ingest_file

    root = tmp_path_factory.mktemp("pg-fanout")
    (root / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    settings = load_settings(
        root / "mlflow.yaml",
        [
            f"tracking.uri={stack.mlflow.url}",
            "tracking.experiment=pg-fanout",
            "evaluation.backtest_folds=0",
            "runtime.task_runner=dask",
            f"runtime.dask_workers={FANOUT_WORKERS}",
        ],
        env={},
    )
    for seed, ticker in enumerate(FANOUT_TICKERS, start=1):
        csv = write_prices(root / "prices" / f"{ticker}.csv", price_frame(ROWS, seed=seed))
        ingest_file(settings, str(csv), ticker)
    retry_log = root / "retries.log"
    previous = os.environ.get(RETRY_LOG_ENV)
    os.environ[RETRY_LOG_ENV] = str(retry_log)  # the Dask workers inherit it
    try:
        with fan_out(settings, training_flow) as flow_obj:
            assert isinstance(flow_obj.task_runner, DaskTaskRunner)
            state = flow_obj(settings=settings, tickers=FANOUT_TICKERS, return_state=True)
    finally:
        if previous is None:
            os.environ.pop(RETRY_LOG_ENV, None)
        else:
            os.environ[RETRY_LOG_ENV] = previous
    summary = state.result(raise_on_failure=True)
    return {
        "settings": settings,
        "summary": summary,
        "flow_run_id": state.state_details.flow_run_id,
        "retry_log": retry_log,
        "root": root,
    }


def test_fan_out_on_postgres_one_run_one_version_per_ticker_no_retries(stack, fanned_out):
    from mlflow import MlflowClient
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    summary = fanned_out["summary"]
    assert summary.ok, summary.render()
    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    experiment = client.get_experiment_by_name("pg-fanout")
    found = client.search_runs([experiment.experiment_id], max_results=100)
    # a new champion's first forecast is a run of its own (kind: forecast)
    runs = [r for r in found if r.data.tags.get("kind") != "forecast"]
    assert sorted(r.data.tags["ticker"] for r in runs) == FANOUT_TICKERS  # one training run each
    assert all(r.info.status == "FINISHED" for r in runs)
    for ticker in FANOUT_TICKERS:
        [version] = client.search_model_versions(f"name = 'test-{ticker}'")
        assert version.version == "1"
        assert version.run_id in {r.info.run_id for r in runs if r.data.tags["ticker"] == ticker}
        assert client.get_model_version_by_alias(f"test-{ticker}", "champion").version == "1"

    # No retry anywhere: none noted by the pipeline, none made by Prefect, no conflict
    # logged by either server.
    retry_log = fanned_out["retry_log"]
    assert count_retries(retry_log) == 0, retry_log.read_text()
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fanned_out["flow_run_id"]]))
        )
    names = [r.name.rsplit("-", 1)[0] for r in task_runs]
    assert names.count("train-ticker") == len(FANOUT_TICKERS), names
    assert all(r.state.is_completed() for r in task_runs)
    assert [r.name for r in task_runs if r.run_count != 1] == []
    for server in (stack.mlflow, stack.prefect):
        text = server.log_path.read_text(errors="replace")
        conflicts = conflict_lines(text)
        assert conflicts == [], f"{server.name}:\n" + "\n".join(conflicts[:20])


def _trail(client, name: str) -> tuple[str, list[str], dict[str, dict[str, str]]]:
    """(champion, the champions from the current one back through `champion.replaced`, tags)."""
    model = client.get_registered_model(name)
    assert set(model.aliases) == {"champion"}, model.aliases
    tags = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
    champion = str(model.aliases["champion"])
    chain = [champion]
    while (previous := tags[chain[-1]].get("champion.replaced")) and previous not in chain:
        chain.append(previous)
    return champion, chain, tags


def test_concurrent_promotions_leave_one_champion_and_a_consistent_trail(
    stack, client_project, tmp_path
):
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_settings

    racers = 5
    name = f"race-{TICKER}"
    (tmp_path / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    overrides = ["--set", "registry.model_name=race-{ticker}"]
    settings = load_settings(
        tmp_path / "mlflow.yaml",
        [f"tracking.uri={stack.mlflow.url}", "registry.model_name=race-{ticker}"],
        env={},
    )
    tracking.connect(settings)
    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    trained = client.get_model_version(MODEL, "1")
    # Versions of a new registered model made from the client's logged model: nothing to train.
    versions = [
        tracking.register(name, trained.source, trained.run_id, {"ticker": TICKER}).version
        for _ in range(racers + 1)
    ]
    first, new = versions[0], versions[1:]

    env = child_env(
        {"MLFLOW_TRACKING_URI": stack.mlflow.url, "PREFECT_HOME": str(tmp_path / ".prefect")},
        drop=("PREFECT_API_URL",),
    )

    def promote(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "lstm-pipeline"), "promote", "--config", "mlflow.yaml", *overrides]
            + ["--ticker", TICKER, "--version", version, "--reason", f"race {version}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert promote(first).returncode == 0
    with ThreadPoolExecutor(racers) as pool:
        outs = list(pool.map(promote, new))
    assert [o.returncode for o in outs] == [0] * racers, [o.stderr[-2000:] for o in outs]

    champion, chain, tags = _trail(client, name)
    for v in versions:
        assert tags[v]["promotion.promoted"] == "true", tags[v]
        assert tags[v]["promotion.reason"] == f"manual promotion: race {v}"
        assert tags[v]["promotion.pending"] == "false"
    assert "champion.replaced_by" not in tags[champion], tags[champion]
    # Every promotion handed the alias over once: the trail from the champion back walks
    # through every promoted version to the first, and each hand-over is recorded both ways.
    assert sorted(chain, key=int) == versions, (chain, tags)
    assert chain[-1] == first
    for newer, older in zip(chain, chain[1:], strict=False):
        assert tags[older]["champion.replaced_by"] == newer, (newer, older, tags)


def test_concurrent_ingestions_into_one_store_lose_no_rows(stack, tmp_path):
    total = 1500
    full = price_frame(total)
    other = price_frame(600, seed=7)
    (tmp_path / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    parts = {
        "a.csv": ("RACE", full.iloc[:800]),
        "b.csv": ("RACE", full.iloc[400:1200]),
        "c.csv": ("RACE", full.iloc[700:]),
        "d.csv": ("OTHER", other),
    }
    for file, (_, frame) in parts.items():
        write_prices(tmp_path / "in" / file, frame)
    env = child_env(
        {"PREFECT_API_URL": stack.prefect.url, "PREFECT_HOME": str(tmp_path / ".prefect")}
    )
    procs = [
        subprocess.Popen(
            [str(BIN / "lstm-pipeline"), "ingest", "--config", "mlflow.yaml"]
            # every ingestion also emits its event to the PostgreSQL-backed server
            + ["--set", "schedule.event=prices.race", f"in/{file}", "--ticker", ticker],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for file, (ticker, _) in parts.items()
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [e[-2000:] for _, e in outs]

    from pipelines.store import PriceStore

    store = PriceStore(tmp_path / "data" / "store")
    for ticker, want in (("RACE", full), ("OTHER", other)):
        got = store.load(ticker)
        assert len(got) == len(want) == got["date"].nunique()
        assert list(got["date"].dt.strftime("%Y-%m-%d")) == list(want["Date"])
        assert got["close"].to_numpy() == pytest.approx(want["Close"].to_numpy())


def test_embedded_project_moves_to_the_server_by_retraining(stack, client_cmd, tmp_path):
    """docs/deploy.md's way over: point the project at the servers and `retrain`: every
    stored ticker without a model there is trained and registered from the store."""
    from mlflow import MlflowClient

    (tmp_path / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")  # sqlite:///mlflow.db
    write_prices(tmp_path / "prices" / f"{TICKER}.csv", price_frame(ROWS, seed=3))
    embedded = child_env({"PREFECT_HOME": str(tmp_path / ".prefect")}, drop=("PREFECT_API_URL",))
    out = subprocess.run(
        [str(BIN / "lstm-pipeline"), "ingest", "--config", "mlflow.yaml", f"prices/{TICKER}.csv"]
        + ["--ticker", TICKER],
        cwd=tmp_path,
        env=embedded,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = _cli(
        client_cmd,
        stack,
        tmp_path,
        "retrain",
        "--config",
        "mlflow.yaml",
        "--set",
        "registry.model_name=migrated-{ticker}",
        "--set",
        "evaluation.backtest_folds=0",
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-4000:]}"
    assert f"{TICKER}: retrain (no model yet)" in out.stdout, out.stdout
    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    champion = client.get_model_version_by_alias(f"migrated-{TICKER}", "champion")
    assert champion.tags["data.rows"] == str(ROWS)
    assert client.get_run(champion.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
