"""Reliability fixtures: a trained tiny project, the real CLI in a subprocess, snapshots.

Every check here goes through the installed `lstm-pipeline` entry point, the way a user runs it.
The expensive part, one real training run, happens once per session (`trained_project`); tests
work on copies of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pipelines.conftest import TINY_CONFIG, copy_project, price_frame, write_prices

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).with_name("lstm-pipeline")
TICKER = "TEST"
MODEL = f"test-{TICKER}"
STORED_ROWS = 120

# The suite's figures, printed by benchmarks/bench_reliability.py: category -> tried / ok.
FIGURES: dict[str, dict[str, int]] = {
    k: {"tried": 0, "ok": 0} for k in ("inputs", "crash", "concurrent", "faults")
}


def figure(kind: str, ok: bool) -> None:
    FIGURES[kind]["tried"] += 1
    FIGURES[kind]["ok"] += int(bool(ok))


def cli_env(project: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(k, None)
    env.update(
        PREFECT_HOME=str(project / ".prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def cli(
    project: Path,
    *args: str,
    config: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cfg = ["--config", str(config or project / "mlflow.yaml")]
    return subprocess.run(
        [str(BIN), args[0], *cfg, *args[1:]],
        cwd=project,
        env=env or cli_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the CLI in its own process group (so a kill takes its Prefect server too)."""
    return subprocess.Popen(
        [str(BIN), args[0], "--config", str(project / "mlflow.yaml"), *args[1:]],
        cwd=project,
        env=env or cli_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group we started (the CLI and its ephemeral Prefect server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------- snapshots


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_rows(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table of the MLflow SQLite store (sorted): runs, models, aliases..."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    finally:
        con.close()


def snapshot(project: Path) -> dict[str, object]:
    """The project's durable state: every file but inputs/.prefect/db (hashed), the db's rows."""
    files = {}
    for p in sorted(project.rglob("*")):
        rel = p.relative_to(project)
        if rel.parts[0] in ("inputs", ".prefect") or rel.name.startswith("mlflow.db"):
            continue
        files[str(rel)] = _hash(p) if p.is_file() else "dir"
    # anything written next to the project (an escaping ticker) shows up here
    siblings = sorted(p.name for p in project.parent.iterdir())
    return {"files": files, "db": db_rows(project / "mlflow.db"), "siblings": siblings}


# ------------------------------------------------------------------------------- invariants


@dataclass
class RegistryState:
    versions: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    undecided: list[str] = field(default_factory=list)  # no promotion.promoted tag
    unloadable: dict[str, str] = field(default_factory=dict)
    dangling_aliases: dict[str, str] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)  # status -> count


def registry_state(project: Path, *, load: bool = True) -> RegistryState:
    """Read the registry through MlflowClient; optionally load every version's model."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking

    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    state = RegistryState()
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            state.runs[run.info.status] = state.runs.get(run.info.status, 0) + 1
    try:
        model = client.get_registered_model(MODEL)
    except mlflow.exceptions.MlflowException:
        return state
    found = client.search_model_versions(f"name = '{MODEL}'")
    state.versions = sorted((str(v.version) for v in found), key=int)
    state.aliases = {k: str(v) for k, v in (model.aliases or {}).items()}
    for v in found:
        if tracking.TAG_PROMOTED not in (v.tags or {}):
            state.undecided.append(str(v.version))
    for alias, version in state.aliases.items():
        if str(version) not in state.versions:
            state.dangling_aliases[alias] = str(version)
    if load:
        from lstm_core.predictor import Forecaster

        for v in state.versions:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    folder = tracking.download_forecaster(MODEL, v, Path(tmp))
                    Forecaster.load(folder)
                except Exception as exc:  # noqa: BLE001 - reported, then asserted on
                    state.unloadable[v] = f"{type(exc).__name__}: {exc}"[:300]
    return state


def store_digest(project: Path, ticker: str = TICKER) -> str | None:
    """The stored ticker's content digest, after checking the file is readable and consistent."""
    from pipelines.store import PriceStore, table_digest

    store = PriceStore(project / "data" / "store")
    manifest = store.manifest(ticker)
    if manifest is None:
        return None
    table = store.read_table(ticker)
    digest = table_digest(table)
    assert digest == manifest.digest, "Parquet rows do not match their manifest"
    assert table.num_rows == manifest.rows
    return digest


def stray_temp_files(project: Path) -> list[str]:
    store = project / "data" / "store"
    return (
        sorted(str(p.relative_to(project)) for p in store.rglob("*.tmp")) if store.exists() else []
    )


# ------------------------------------------------------------------------------- the project


def new_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    write_prices(root / "prices" / f"{TICKER}.csv", price_frame(STORED_ROWS))
    return root


@dataclass
class Trained:
    path: Path
    run_seconds: float


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Trained:
    """One real `lstm-pipeline run`: TEST stored (120 rows) and test-TEST v1 the champion."""
    project = tmp_path_factory.mktemp("trained") / "project"
    reuse = os.environ.get("RELIABILITY_REUSE_TRAINED")  # development only: skip the run
    if reuse and (Path(reuse) / "mlflow.db").exists():
        return Trained(copy_project(Path(reuse), project), float("nan"))
    new_project(project)
    t0 = time.monotonic()
    out = cli(project, "run", f"prices/{TICKER}.csv")
    seconds = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    return Trained(project, seconds)
