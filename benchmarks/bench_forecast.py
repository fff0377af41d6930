"""Wall seconds of one `lstm-pipeline forecast` as a user runs it, start-up included.

Usage:  .venv/bin/python benchmarks/bench_forecast.py [--runs 3]

Untimed set-up in a temporary folder: `lstm-pipeline init`, 150 days of the bundled sample
(data/msft.csv) ingested as MSFT, and a one-epoch tiny model trained and promoted with `run`.
Then `lstm-pipeline forecast --ticker MSFT` runs as a subprocess `--runs` times, from the
project folder, with the user's environment (none of the CLI's quiet defaults preset). Each
run's seconds are printed, then the median. Most of a forecast's time is start-up: Prefect's
temporary API server and importing TensorFlow, MLflow and Prefect.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "lstm-pipeline"
TICKER = "MSFT"
DAYS = 150
TINY = [
    f"--set={kv}"
    for kv in (
        "features.lookback=5",
        "model.layers=1",
        "model.units=4",
        "model.backend=keras",
        "training.epochs=1",
        "training.batch_size=16",
        "evaluation.backtest_folds=0",
        "registry.promotion.max_worse_than_naive=10",  # promoted whatever its score
    )
]
# The CLI's quiet defaults and a configured API or store would change what is timed.
_USER_UNSET = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "LSTM_PIPELINE_CONFIG",
    "TF_CPP_MIN_LOG_LEVEL",
    "PREFECT_LOGGING_LEVEL",
)


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"lstm-pipeline {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in _USER_UNSET}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = (ROOT / "data" / "msft.csv").read_text(encoding="utf-8").splitlines()
        prices = root / "msft.csv"
        prices.write_text("\n".join([lines[0], *lines[-DAYS:]]) + "\n", encoding="utf-8")
        _cli("init", "project", cwd=root, env=env)
        project = root / "project"
        _cli("ingest", str(prices), "--ticker", TICKER, cwd=project, env=env)
        print("training the tiny model (untimed) ...", flush=True)
        _cli("run", "--ticker", TICKER, *TINY, cwd=project, env=env)
        seconds = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            _cli("forecast", "--ticker", TICKER, cwd=project, env=env)
            seconds.append(time.perf_counter() - t0)
            print(f"run {i + 1}: {seconds[-1]:.2f} s", flush=True)
    print(f"median: {statistics.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
