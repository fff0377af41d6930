"""Tuning benchmark: trials per minute of one Optuna study with 1 and with 2 worker processes.

    .venv/bin/python benchmarks/bench_tune.py [--trials 20] [--epochs 5] [--workers 2]
        [--rows N] [--pruner median|hyperband|none] [--tiny]

Each phase runs a fresh study (its own journal file and MLflow SQLite store in a temporary
project) on the bundled sample (data/msft.csv, ingested into that project's store) through
`pipelines.tuning.run_study`, exactly as `lstm-pipeline tune` runs it, minus the final
retraining. Timings are wall time of the whole study, worker start-up included. With the
same seed both phases draw their first candidates alike; later ones differ (two workers
sample concurrently), and so may the fraction pruned: `--pruner none` compares pure
throughput. `--tiny` searches a tiny space (1 layer of 2-8 units, lookback 5-20) for a
quick check that the benchmark runs. The last line reads `speedup: <2 workers / 1 worker>x`
(in trials per minute).
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
import logging  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=None, help="last N rows of the sample")
    parser.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    parser.add_argument("--tiny", action="store_true", help="tiny space: a quick check")
    args = parser.parse_args()
    logging.getLogger("pipelines").setLevel(logging.WARNING)

    print(
        f"bench_tune: {args.trials} trials, {args.epochs} epochs each, pruner {args.pruner}, "
        f"sample {SAMPLE.name}{f' (last {args.rows} rows)' if args.rows else ''}"
        f"{', tiny space' if args.tiny else ''}; cores {os.cpu_count()}"
    )
    results = []
    for workers in (1, args.workers):
        r = phase(workers, args)
        results.append(r)
        print(
            f"workers {r['workers']}: {r['trials']} trials in {r['seconds']:.1f} s = "
            f"{r['per_minute']:.2f} trials/min; pruned {r['pruned']:.0%}; best validation "
            f"RMSE {r['best']:.4f} vs default configuration {r['default']:.4f}",
            flush=True,
        )
    print(f"speedup: {results[1]['per_minute'] / results[0]['per_minute']:.2f}x")


if __name__ == "__main__":
    main()
