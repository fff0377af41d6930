"""Hostile inputs through the real CLI: one clear error line, non-zero exit, nothing changed.

All cases run up front (a few at a time, each in its own copy of a trained project), then every
case is asserted on its own: the single stderr line names the file (or key) and the problem,
there is no traceback, and the Parquet store, the MLflow store (all rows of all tables: runs,
registered models, versions, aliases) and the artifact folder are exactly as before.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, copy_project, figure, snapshot
from tests.reliability.corpus import CASES, Case

pytestmark = pytest.mark.slow  # the real CLI once per corpus case: make test-fast leaves them out

PARALLEL = 3


def _config_for(case: Case, project: Path) -> Path:
    if case.raw_config == "@missing":
        return project / "nope.yaml"
    cfg = project / "mlflow.yaml"
    if case.raw_config is not None:
        base = cfg.read_text(encoding="utf-8")
        # keep the tiny project's tracking/store settings, replace one section
        section = case.raw_config.split(":", 1)[0].strip()
        if section.startswith("-"):
            text = case.raw_config
        else:
            kept = []
            skip = False
            for line in base.splitlines():
                if line and not line.startswith(" "):
                    skip = line.startswith(section + ":")
                if not skip:
                    kept.append(line)
            text = "\n".join(kept) + "\n" + case.raw_config
        cfg = project / "inputs" / "mlflow.yaml"
        cfg.write_text(text, encoding="utf-8")
        return cfg
    if case.config:
        cfg = project / "inputs" / "mlflow.yaml"
        cfg.write_text((project / "mlflow.yaml").read_text() + case.config, encoding="utf-8")
    return cfg


def _run_case(case: Case, trained: Path, root: Path) -> dict:
    project = copy_project(trained, root / case.id / "project", prefect=case.command == "run")
    case.materialize(project / "inputs")
    config = _config_for(case, project)
    if config.parent.name == "inputs":  # relative paths resolve against the config's folder
        text = config.read_text(encoding="utf-8") if config.exists() else None
        if text is not None and not text.lstrip().startswith("-"):
            config.write_text(
                text.replace("sqlite:///mlflow.db", f"sqlite:///{project / 'mlflow.db'}").replace(
                    "data:\n", f"data:\n  store: {project / 'data' / 'store'}\n", 1
                ),
                encoding="utf-8",
            )
    args = [a.replace("{inputs}", str(project / "inputs")) for a in case.args]
    for s in case.sets:
        args += ["--set", s]
    before = snapshot(project)
    t0 = time.monotonic()
    out = cli(project, case.command, *args, config=config, timeout=300)
    return {
        "out": out,
        "seconds": time.monotonic() - t0,
        "before": before,
        "after": snapshot(project),
    }


@pytest.fixture(scope="module")
def results(trained_project, tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("corpus")
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {c.id: pool.submit(_run_case, c, trained_project.path, root) for c in CASES}
        return {k: f.result() for k, f in futures.items()}


def test_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_cleanly(case: Case, results: dict[str, dict]) -> None:
    r = results[case.id]
    out = r["out"]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    ok = (
        out.returncode != 0
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and case.needle.lower() in lines[0].lower()
        and case.where.lower() in lines[0].lower()
        and "Traceback" not in out.stderr
        and r["before"] == r["after"]
    )
    figure("inputs", ok)
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1, out.stderr[-2000:]
    line = lines[0]
    assert line.startswith("error: "), line
    assert case.needle.lower() in line.lower(), line
    assert case.where.lower() in line.lower(), line
    assert r["before"]["files"] == r["after"]["files"], "the store or artifacts changed"
    assert r["before"]["db"] == r["after"]["db"], "the MLflow store changed"
    assert r["before"]["siblings"] == r["after"]["siblings"], "something was written outside"
