"""Fan-out benchmark: N small tickers trained sequentially, then on a 2-worker local Dask cluster.

    .venv/bin/python benchmarks/bench_fanout.py [--tickers 8] [--epochs 12] [--workers 2]

Both runs go through the same training flow (ingest -> train -> evaluate -> log -> register ->
promote per ticker), against the same Prefect server (PREFECT_API_URL, or one started here
by `pipelines.servers` and stopped at the end) and the same MLflow tracking URI (default: a
SQLite file in the work folder; `--tracking-uri http://...` for a tracking server).

Fair comparison: every TensorFlow process (this one and each Dask worker) uses one intra-op
and one inter-op thread (TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=1, OMP_NUM_THREADS=1)
and has trained one throwaway ticker before timing starts (first-use costs out of the
timings). The sequential run is one ticker at a time in this process (a one-thread task
runner); the Dask run one ticker per worker at a time. The cluster's start-up and warm-up
are timed separately. The last line reads `speedup: <ratio>x`.
"""

from __future__ import annotations

import os

# Before TensorFlow is imported anywhere (Dask workers inherit the environment).
for _k, _v in {
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
    # Dask's statistical profiler samples worker stacks every 10 ms: not wanted here.
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(_k, _v)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

CONFIG = """\
tracking:
  uri: {tracking_uri}
  experiment: bench-fanout
registry:
  model_name: "{prefix}-{{ticker}}"
  promotion:
    max_worse_than_naive: 10.0
data:
  sources: []
  ticker: null
features:
  lookback: 30
model:
  layers: 1
  units: 16
  dropout: 0.1
  backend: keras
training:
  epochs: {epochs}
  batch_size: 32
  shuffle: true
evaluation:
  mc_samples: 10
  backtest_folds: 0
schedule:
  cron: "0 0 1 1 *"
runtime:
  task_runner: {runner}
  dask_address: {address}
  dask_workers: {workers}
"""


def random_walk(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    return pd.DataFrame(
        {
            "Date": pd.bdate_range("2015-01-01", periods=n).strftime("%Y-%m-%d"),
            "Open": open_.round(4),
            "High": (np.maximum(open_, close) * 1.01).round(4),
            "Low": (np.minimum(open_, close) * 0.99).round(4),
            "Close": close.round(4),
            "Volume": rng.integers(1_000, 10_000, n),
        }
    )


def warm_up(settings, rows: int) -> tuple[int, int]:
    """Get this process ready, identically in this process and in each Dask worker.

    One-thread TensorFlow, then one throwaway ticker trained end to end (outside any flow),
    so first-use costs (imports, the tracking store, model logging, plotting) stay out of
    the timed runs.
    """
    import tensorflow as tf

    from pipelines.flows import train_one
    from pipelines.tasks import ingest_file

    warnings.filterwarnings("ignore", message=".*type hints.*")  # MLflow's pyfunc advice
    with contextlib.suppress(RuntimeError):  # already set if the runtime started
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")
    ticker = f"W{os.getpid()}"
    csv = settings.path(f"warm/{ticker}.csv")
    csv.parent.mkdir(parents=True, exist_ok=True)
    random_walk(rows, seed=os.getpid()).to_csv(csv, index=False)
    ingest_file(settings, str(csv), ticker)
    train_one(settings, ticker)
    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def run_seconds(settings, summary) -> list[float]:
    """Each ticker's MLflow run duration (start to end): the branch's own work."""
    from mlflow import MlflowClient

    from pipelines.config import resolve_tracking_uri

    uri = resolve_tracking_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out = []
    for r in summary.results:
        if r.run_id:
            info = client.get_run(r.run_id).info
            out.append((info.end_time - info.start_time) / 1000)
    return out


def settings_for(root: Path, name: str, **fields):
    from pipelines.config import load_settings

    path = root / f"{name}.yaml"
    path.write_text(CONFIG.format(**fields), encoding="utf-8")
    return load_settings(path, env={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    root = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-fanout-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    logging.getLogger("pipelines").setLevel(logging.WARNING)

    from distributed import Client, LocalCluster
    from prefect.task_runners import ThreadPoolTaskRunner

    from pipelines.flows import fan_out, training_flow
    from pipelines.servers import prefect_api
    from pipelines.tasks import ingest_file

    tickers = [f"T{i:02d}" for i in range(args.tickers)]
    common = {"tracking_uri": args.tracking_uri, "epochs": args.epochs, "workers": args.workers}
    seq = settings_for(root, "sequential", prefix="seq", runner="thread", address="null", **common)
    for i, t in enumerate(tickers):
        csv = root / "prices" / f"{t}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        random_walk(args.rows, seed=i).to_csv(csv, index=False)
        ingest_file(seq, str(csv), t)

    print(
        f"{args.tickers} tickers x {args.rows} days, 1 LSTM layer x 16 units, lookback 30, "
        f"{args.epochs} epochs, batch 32, no backtest, 10 MC samples; tracking {args.tracking_uri}"
    )
    print(f"work folder: {root}")
    with prefect_api(root / ".prefect" / "bench-server") as api:
        print(f"prefect API: {api}")
        warm = settings_for(root, "warm", prefix="warm", runner="thread", address="null", **common)
        print(f"TF intra-/inter-op threads in this process: {warm_up(warm, args.rows)}")
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

        t0 = time.perf_counter()
        sequential = training_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
        summary = sequential(settings=seq, tickers=tickers)
        t_seq = time.perf_counter() - t0
        failed = [r.render(seq) for r in summary.results if r.error]
        per = run_seconds(seq, summary)
        print(
            f"sequential (1 process, one ticker at a time): {t_seq:.1f} s; "
            f"per-ticker MLflow run {min(per):.1f}-{max(per):.1f} s (mean {sum(per) / len(per):.1f})"
            + (f"  FAILED: {failed}" if failed else "")
        )

        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        )
        client = Client(cluster)
        try:
            par = settings_for(
                root,
                "dask",
                prefix="dask",
                runner="dask",
                address=cluster.scheduler_address,
                **common,
            )
            threads = client.run(warm_up, warm, args.rows)
            t_start = time.perf_counter() - t0
            print(
                f"dask cluster: {args.workers} worker processes x 1 thread, started and warmed in "
                f"{t_start:.1f} s, not counted below (TF threads per worker: "
                f"{sorted(threads.values())})"
            )
            with fan_out(par, training_flow) as fanned:
                t0 = time.perf_counter()
                summary = fanned(settings=par, tickers=tickers)
                t_par = time.perf_counter() - t0
        finally:
            client.close()
            cluster.close()
        failed = [r.render(par) for r in summary.results if r.error]
        runs = {r.run_id for r in summary.results if r.run_id}
        per = run_seconds(par, summary)
        print(
            f"dask ({args.workers} workers): {t_par:.1f} s; {len(runs)} distinct MLflow runs; "
            f"per-ticker MLflow run {min(per):.1f}-{max(per):.1f} s (mean {sum(per) / len(per):.1f})"
            + (f"  FAILED: {failed}" if failed else "")
        )
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"speedup: {t_seq / t_par:.2f}x")


if __name__ == "__main__":
    main()
