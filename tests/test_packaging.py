"""The built wheel, installed without `-e` into a fresh virtual environment, runs a project.

The fresh environment reuses the installed dependencies through a `.pth` line naming this
environment's site-packages. `.pth` files inside that folder are not processed, so the
editable install of the checkout stays invisible and `pipelines` comes from the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.pipelines.conftest import price_frame, write_prices
from tests.user_path import (
    REPO,
    TINY,
    assert_only_progress,
    checkout_state,
    cli,
    project_state,
    user_env,
)

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin` folder of a fresh venv holding only the wheel (plus the shared dependencies)."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("lstm_core", "pipelines"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = work / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, src)
    [wheel] = wheels.glob("lstm_stock_pipeline-*.whl")

    venv = work / "venv"
    _run(sys._base_executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site = Path(
        _run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (site / "_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(*pip, "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel))
    where = _run(str(python), "-I", "-c", "import pipelines; print(pipelines.__file__)").strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout
    return venv / "bin"


def test_wheel_ships_the_default_config(installed):
    text = _run(
        str(installed / "python"),
        "-I",
        "-c",
        "from pipelines.config import template_text; print(template_text(), end='')",
    )
    assert text == (REPO / "mlflow.yaml").read_text(encoding="utf-8")


def test_wheel_ships_the_sample_the_demo_trains_on_with_its_licence(installed):
    """`demo` in an `init` project reads the sample from the installed package."""
    where = _run(
        str(installed / "python"), "-I", "-c", "from pipelines.demo import sample; print(sample())"
    ).strip()
    shipped = Path(where)
    assert shipped.is_relative_to(installed.parent), shipped  # the wheel's copy
    assert not shipped.is_symlink()  # pipelines/sample/ links to data/: the wheel holds copies
    sample = REPO / "data"
    assert shipped.read_bytes() == (sample / "msft.csv").read_bytes()
    notes = (shipped.parent / "README.md").read_text(encoding="utf-8")
    assert notes == (sample / "README.md").read_text(encoding="utf-8") and "MIT" in notes
    licence = (shipped.parent / "LICENSE").read_text(encoding="utf-8")  # MIT: the notice travels
    assert licence == (sample / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Taylor G Smith" in licence


def test_installed_wheel_runs_a_project_in_an_empty_folder(installed, tmp_path):
    env = user_env(keep_pythonpath=False)
    exe = installed / "lstm-pipeline"
    before = checkout_state()
    project = tmp_path / "project"
    project.mkdir()
    prices = write_prices(tmp_path / "prices.csv", price_frame(120))

    out = cli(exe, "init", cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (project / "mlflow.yaml").read_bytes() == (REPO / "mlflow.yaml").read_bytes()
    out = cli(exe, "ingest", str(prices), "--ticker", "ACME", cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli(exe, "run", "--ticker", "ACME", *TINY, cwd=project, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CHAMPION" in out.stdout, out.stdout
    assert_only_progress(out)

    assert project_state(project) == []
    assert (project / "mlartifacts").is_dir() and any((project / "mlartifacts").rglob("*.keras"))
    assert checkout_state() == before
