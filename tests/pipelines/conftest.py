"""Tiny projects for flow and tracking tests: a synthetic price file and a tiny model."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

TINY_CONFIG = """\
tracking:
  uri: sqlite:///mlflow.db
  experiment: tests
registry:
  model_name: "test-{ticker}"
  promotion:
    max_worse_than_naive: 10.0   # a one-epoch model is far from naive; test the mechanics
data:
  sources: [prices/TEST.csv]
  ticker: TEST
  calendar: XNYS
features:
  lookback: 5
model:
  layers: 1
  units: 4
  dropout: 0.1
  backend: keras
training:
  epochs: 1
  batch_size: 16
evaluation:
  backtest_folds: 1
  backtest_epochs: 1
  forecast_days: 3
"""


def price_frame(n: int, seed: int = 0, start: str = "2019-12-24") -> pd.DataFrame:
    """A positive random walk in the Yahoo layout, on New York trading days (the tiny
    project's data.calendar: XNYS); by default the 120th day is Tuesday 2020-06-16.

    The first n rows of a longer frame equal the shorter frame (same seed), so later
    slices of it are genuinely "newer days" of the same series.
    """
    full = 2000
    if n > full:
        raise ValueError(f"at most {full} rows")
    rng = np.random.default_rng(seed)
    close = (50 * np.exp(np.cumsum(rng.normal(0, 0.01, full))))[:n]
    open_ = close * np.exp(rng.normal(0, 0.003, full)[:n])
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    return pd.DataFrame(
        {
            "Date": trading_days(start, n),
            "Open": open_.round(4),
            "High": high.round(4),
            "Low": low.round(4),
            "Close": close.round(4),
            "Volume": rng.integers(1_000, 10_000, full)[:n],
        }
    )


def trading_days(start: str, n: int, exchange: str = "XNYS") -> list[str]:
    """The first ``n`` trading days of ``exchange`` from ``start``, ISO dates (ingest rejects
    rows on days the configured exchange was closed)."""
    import exchange_calendars

    cal = exchange_calendars.get_calendar(exchange, start="2006-01-03")
    days = cal.sessions[cal.sessions >= pd.Timestamp(start)][:n]
    if len(days) < n:
        raise ValueError(f"{exchange} knows {len(days)} trading days from {start}, not {n}")
    return list(days.strftime("%Y-%m-%d"))


def write_prices(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): to check that nothing changed."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def new_tiny_project(root: Path) -> Path:
    """A project folder with mlflow.yaml (tiny model) and 120 days of prices for TEST."""
    write_prices(root / "prices" / "TEST.csv", price_frame(120))
    (root / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    return root


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return new_tiny_project(tmp_path)


@pytest.fixture
def tiny_settings(tiny_project: Path):
    from pipelines.config import load_settings

    return load_settings(tiny_project / "mlflow.yaml", env={})


def copy_project(src: Path, dst: Path, *, prefect: bool = True) -> Path:
    """Copy a project and re-point the MLflow store's absolute artifact paths at the copy.

    MLflow records absolute artifact locations (experiments, runs, logged models, model
    versions): without the rewrite a copy would read and write the original's artifacts.
    """
    ignore = None if prefect else shutil.ignore_patterns(".prefect")
    shutil.copytree(src, dst, ignore=ignore)
    db = dst / "mlflow.db"
    if not db.exists():
        return dst
    con = sqlite3.connect(db, timeout=30)
    try:
        row = con.execute(
            "SELECT artifact_location FROM experiments WHERE artifact_location LIKE '%/mlartifacts'"
        ).fetchone()
        if row is None:
            return dst
        old = row[0].removeprefix("file://").removesuffix("/mlartifacts")
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            cols = [
                c[1]
                for c in con.execute(f'PRAGMA table_info("{table}")')
                if "CHAR" in c[2].upper() or "TEXT" in c[2].upper()
            ]
            for col in cols:
                con.execute(
                    f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE "{col}" LIKE ?',
                    (old, str(dst), f"%{old}%"),
                )
        con.commit()
    finally:
        con.close()
    return dst


def forget_mlflow_artifact_repos() -> None:
    """Drop MLflow's in-process cache of artifact repositories, keyed by run or model id.

    Copies of one project share those ids: without this, a test on a copy would read and
    write the artifacts of whichever copy (or the original) the process touched first.
    """
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()


@dataclass(frozen=True)
class Trained:
    """A tiny project after one training flow: TEST stored (120 rows), v1 the champion."""

    path: Path
    settings: Any
    summary: Any


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, prefect_harness) -> Iterator[Trained]:
    """The tiny project trained once per session by the training flow, under the Prefect
    harness. Tests only read it; a test that changes a trained project takes a copy
    (`trained_settings`). Its `.prefect` holds a Prefect database, as a project that ran a
    command does: a command run on a copy starts Prefect's API without the migrations."""
    from pipelines.config import load_settings
    from pipelines.flows import training_flow

    root = new_tiny_project(tmp_path_factory.mktemp("trained-tiny") / "project")
    settings = load_settings(root / "mlflow.yaml", env={})
    summary = training_flow(settings=settings)
    assert summary.ok, summary.render()
    (root / ".prefect").mkdir()
    shutil.copyfile(prefect_harness, root / ".prefect" / "prefect.db")
    before = tree_bytes(root)
    yield Trained(root, settings, summary)
    assert tree_bytes(root) == before, "a test changed the shared trained project: use a copy"


# For trainings in tests that are not about the walk-forward backtest: its refits cost as
# much as the training itself. The session's training (`trained_tiny`) runs it.
NO_BACKTEST = ("evaluation.backtest_folds=0",)


@contextlib.contextmanager
def copy_of(trained: Trained, dst: Path, overrides: Sequence[str] = ()) -> Iterator[Any]:
    """The settings of a copy of the trained project at ``dst``, MLflow's artifact-repository
    cache dropped before and after (the copies share run and model ids)."""
    from pipelines.config import load_settings

    project = copy_project(trained.path, dst)
    forget_mlflow_artifact_repos()
    try:
        yield load_settings(project / "mlflow.yaml", list(overrides), env={})
    finally:
        forget_mlflow_artifact_repos()


@pytest.fixture
def trained_settings(trained_tiny: Trained, tmp_path: Path):
    """The settings of this test's own copy of the trained tiny project (MLflow store,
    artifacts, Parquet store, forecast log), with `NO_BACKTEST` for the trainings to come;
    `.base_dir` is the copy's folder."""
    with copy_of(trained_tiny, tmp_path / "project", NO_BACKTEST) as settings:
        yield settings


class _Seen(logging.Handler):
    """Sets an event when the `pipelines` logger says something containing `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text, self.event = text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.fixture
def seen(caplog):
    """`seen(text)`: an event set once the `pipelines` logger says `text`."""
    caplog.set_level(logging.INFO, logger="pipelines")
    logger, handlers = logging.getLogger("pipelines"), []

    def make(text: str) -> threading.Event:
        handlers.append(_Seen(text))
        logger.addHandler(handlers[-1])
        return handlers[-1].event

    yield make
    for h in handlers:
        logger.removeHandler(h)
