"""Tuning benchmark: trials per minute of one Optuna study with 1 and with 2 worker processes.

    .venv/bin/python benchmarks/bench_tune.py [--trials 20] [--epochs 5] [--workers 2]
        [--rows N] [--pruner median|hyperband|none] [--tiny]

Each phase runs a fresh study (its own journal file and MLflow SQLite store in a temporary
project) on the bundled sample (data/msft.csv, ingested into that project's store) through
`pipelines.tuning.run_study`, exactly as `lstm-pipeline tune` runs it, minus the final
retraining. Each phase runs in a fresh Python process, so both pay the same imports; timings
are wall time of the whole study, worker start-up included. With the
same seed both phases draw their first candidates alike; later ones differ (two workers
sample concurrently), and so may the fraction pruned: `--pruner none` compares pure
throughput. `--tiny` searches a tiny space (1 layer of 2-8 units, lookback 5-20) for a
quick check that the benchmark runs. A first phase keeps the one worker to one core: one
trial's engine already spreads a batch over the cores, and how much that gains bounds what a
second worker can add. The last line reads `speedup: <2 workers / 1 worker>x` (in trials per
minute, the one worker on every core).
"""

from __future__ import annotations

import os

for _k, _v in {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "msft.csv"

CONFIG = """\
tracking:
  uri: sqlite:///mlflow.db
  experiment: bench-tune
data:
  sources: [{sample}]
  ticker: MSFT
training:
  epochs: {epochs}
tuning:
  pruner: {pruner}
  seed: 0
"""

TINY = """\
features:
  lookback: 10
model:
  layers: 1
  units: 4
  space:
    features.lookback: {low: 5, high: 20, step: 5}
    model.units: {low: 2, high: 8, step: 2}
    model.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
    features.scaler: {choices: [minmax, standard]}
"""


def _project(folder: Path, args: argparse.Namespace):
    from pipelines.config import load_settings
    from pipelines.tasks import ingest_file

    text = CONFIG.format(sample=SAMPLE, epochs=args.epochs, pruner=args.pruner)
    if args.tiny:
        # the tiny space goes under tuning (the last section), the tiny model before it
        head, space = TINY.split("  space:\n")
        text = head + text + "  space:\n" + space
    (folder / "mlflow.yaml").write_text(text, encoding="utf-8")
    settings = load_settings(folder / "mlflow.yaml", env={})
    ingest_file(settings, str(SAMPLE), "MSFT")
    return settings


def phase(workers: int, args: argparse.Namespace) -> dict[str, float]:
    from pipelines import tuning
    from pipelines.store import PriceStore

    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        settings = _project(Path(tmp), args)
        store = PriceStore(settings.store_path)
        frame = store.load("MSFT")
        if args.rows:
            frame = frame.tail(args.rows).reset_index(drop=True)
        last = str(frame["date"].iloc[-1].date())
        result = tuning.run_study(settings, "MSFT", frame, last, args.trials, workers=workers)
    done = result.counts["complete"] + result.counts["pruned"] + result.counts["fail"]
    return {
        "workers": workers,
        "trials": result.trials_run,
        "seconds": result.seconds,
        "per_minute": 60.0 * result.trials_run / result.seconds,
        "pruned": result.counts["pruned"] / max(1, done),
        "best": result.best_value,
        "default": result.default_value,
    }


def _in_fresh_process(workers: int, one_core: bool = False) -> dict[str, float]:
    """One phase in a new interpreter: no phase inherits the other's imports or caches."""
    argv = [sys.executable, __file__, "--phase", str(workers), *sys.argv[1:]]
    if one_core:
        argv.append("--one-core")
    out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=None, help="last N rows of the sample")
    parser.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    parser.add_argument("--tiny", action="store_true", help="tiny space: a quick check")
    parser.add_argument("--phase", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("pipelines").setLevel(logging.WARNING)
    if args.phase is not None:  # the child process of one phase
        if args.one_core:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
        print(json.dumps(phase(args.phase, args)))
        return

    print(
        f"bench_tune: {args.trials} trials, {args.epochs} epochs each, pruner {args.pruner}, "
        f"sample {SAMPLE.name}{f' (last {args.rows} rows)' if args.rows else ''}"
        f"{', tiny space' if args.tiny else ''}; cores {os.cpu_count()}",
        flush=True,
    )
    results = []
    # One worker kept to one core first: how much of both cores one trial already uses
    # bounds what more workers can add.
    for workers, one_core in ((1, True), (1, False), (args.workers, False)):
        r = _in_fresh_process(workers, one_core)
        results.append(r)
        where = " on one core" if one_core else ""
        print(
            f"workers {r['workers']}{where}: {r['trials']} trials in {r['seconds']:.1f} s = "
            f"{r['per_minute']:.2f} trials/min; pruned {r['pruned']:.0%}; best validation "
            f"RMSE {r['best']:.4f} vs default configuration {r['default']:.4f}",
            flush=True,
        )
    one_core, one, two = (r["per_minute"] for r in results)
    print(
        f"one worker on both cores / on one core: {one / one_core:.2f}x; "
        f"{args.workers} workers / one worker on one core: {two / one_core:.2f}x"
    )
    print(f"speedup: {two / one:.2f}x")


if __name__ == "__main__":
    main()
