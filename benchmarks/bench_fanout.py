"""Fan-out benchmark: N small tickers trained sequentially and on a 2-worker local Dask cluster.

    .venv/bin/python benchmarks/bench_fanout.py [--tickers 8] [--epochs 12] [--workers 2] [--rounds 2]

Both go through the same training flow (load -> train -> evaluate -> log -> register ->
promote per ticker), against the same Prefect server (PREFECT_API_URL, or one started here
by `pipelines.servers.prefect_api`, as the fan-out mode does, and stopped at the end) and the
same MLflow tracking URI (default: a SQLite file in the work folder; `--tracking-uri http://...`
for a tracking server).

Fair comparison: every TensorFlow process (this one and each Dask worker) uses one intra-op
and one inter-op thread (TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=1, OMP_NUM_THREADS=1)
and has trained one throwaway ticker before timing starts (first-use costs out of the
timings). The sequential run is one ticker at a time in this process (a one-thread task
runner); the Dask run one ticker per worker at a time. The cluster's start-up and warm-up
are timed separately. The two alternate for ``--rounds`` rounds (each phase with its own
registered-model names, so every phase does the same work), so slow drifts in the machine's
speed hit both alike. The last line reads `speedup: <total sequential / total dask>x`.

    .venv/bin/python benchmarks/bench_fanout.py --backend postgres [--tickers 8] [--workers 4]
    .venv/bin/python benchmarks/bench_fanout.py --backend sqlite

`--backend` measures the servers instead: the same Dask fan-out (default 4 worker processes)
against an `mlflow server` + `prefect server` pair backed by SQLite files, and, with
`postgres`, against a pair backed by a throwaway PostgreSQL cluster started here
(`pipelines.servers.start_postgres`, durable settings) in the same run. Both MLflow servers
proxy artifacts (`--artifacts-destination`), so only the databases differ; all servers run at
normal priority. For each backend it prints the fan-out time of every round, and the retries:
those noted by the pipeline (pipelines/retries.py), Prefect task re-runs, and lines in the
servers' logs about database conflicts (locked, duplicate key, deadlock). The last line
reads `postgres / sqlite: <ratio>x` (time on PostgreSQL over time on SQLite).
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
  calendar: null    # random_walk dates every weekday, holidays included
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


def run_spans(settings, summary) -> list[tuple[float, float]]:
    """Each ticker's MLflow run (start, end) in epoch seconds: the branch's own work."""
    from mlflow import MlflowClient

    from pipelines.config import resolve_tracking_uri

    uri = resolve_tracking_uri(settings)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out = []
    for r in summary.results:
        if r.run_id:
            info = client.get_run(r.run_id).info
            out.append((info.start_time / 1000, info.end_time / 1000))
    return out


def describe_runs(spans: list[tuple[float, float]], called: float, returned: float) -> str:
    """Per-ticker run lengths, and the flow's time before the first and after the last run."""
    per = [end - start for start, end in spans]
    lead = min(start for start, _ in spans) - called
    tail = returned - max(end for _, end in spans)
    return (
        f"per-ticker MLflow run {min(per):.1f}-{max(per):.1f} s (mean {sum(per) / len(per):.1f}); "
        f"first run began {lead:.1f} s after the call, the flow returned {tail:.1f} s after "
        "the last run ended"
    )


def timed_flow(label: str, flow_obj, settings, tickers: list[str]) -> tuple[float, object]:
    """Run the flow on `tickers`, print one line; (seconds, the flow run's id)."""
    t0, called = time.perf_counter(), time.time()
    state = flow_obj(settings=settings, tickers=tickers, return_state=True)
    seconds, returned = time.perf_counter() - t0, time.time()
    summary = state.result()
    failed = [r.render(settings) for r in summary.results if r.error]
    runs = {r.run_id for r in summary.results if r.run_id}
    print(
        f"  {label}: {seconds:.1f} s; {len(runs)} distinct MLflow runs; "
        + describe_runs(run_spans(settings, summary), called, returned)
        + (f"  FAILED: {failed}" if failed else ""),
        flush=True,
    )
    return seconds, state.state_details.flow_run_id


def settings_for(root: Path, name: str, **fields):
    from pipelines.config import load_settings

    path = root / f"{name}.yaml"
    path.write_text(CONFIG.format(**fields), encoding="utf-8")
    return load_settings(path, env={})


def ingest_tickers(root: Path, tickers: list[str], rows: int, common: dict) -> None:
    from pipelines.tasks import ingest_file

    store = settings_for(root, "ingest", prefix="ingest", runner="thread", address="null", **common)
    for i, t in enumerate(tickers):
        csv = root / "prices" / f"{t}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        random_walk(rows, seed=i).to_csv(csv, index=False)
        ingest_file(store, str(csv), t)


def local_cluster(workers: int):
    """A local Dask cluster of single-threaded worker processes, and its client."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    return cluster, Client(cluster)


def server_conflicts(*servers) -> int:
    from pipelines.retries import conflict_lines

    lines = 0
    for server in servers:
        text = server.log_path.read_text(encoding="utf-8", errors="replace")
        lines += len(conflict_lines(text))
    return lines


def prefect_reruns(flow_run_ids: list) -> int:
    """Task runs Prefect ran more than once (retries) in these flow runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
    return sum(max(0, (r.run_count or 1) - 1) for r in runs)


def fan_out_on(backend: str, args, root: Path, tickers: list[str], postgres) -> dict:
    """Servers on `backend`, a local Dask cluster pointed at them, warm-up, timed rounds.

    The settings files live in `root`, so every round trains from the one store there.
    """

    from pipelines.flows import fan_out, training_flow
    from pipelines.retries import RETRY_LOG_ENV, count_retries
    from pipelines.servers import prefect_api, start_mlflow_server, start_prefect_server

    home = root / backend
    pg = backend == "postgres"
    mlflow_server = start_mlflow_server(
        home / "mlflow",
        backend_store_uri=postgres.url("mlflow", "psycopg") if pg else None,
        artifacts_destination=home / "artifacts",
        wait=False,
    )
    prefect_server = None
    cluster = client = None
    try:
        prefect_server = start_prefect_server(
            home / "prefect",
            database_url=postgres.url("prefect", "asyncpg") if pg else None,
            wait=False,
        )
        mlflow_server.wait_healthy(240)
        prefect_server.wait_healthy(240)
        retry_log = home / "retries.log"
        os.environ[RETRY_LOG_ENV] = str(retry_log)  # before the Dask workers start
        common = {"tracking_uri": mlflow_server.url, "epochs": args.epochs, "workers": args.workers}
        with prefect_api(home, prefect_server.url):
            t0 = time.perf_counter()
            cluster, client = local_cluster(args.workers)
            address = cluster.scheduler_address
            warm = settings_for(
                root,
                f"{backend}-warm",
                prefix=f"{backend}warm",
                runner="thread",
                address="null",
                **common,
            )
            warm_up(warm, args.rows)
            client.run(warm_up, warm, args.rows)
            warm_tickers = [f"W{os.getpid()}", *(f"W{p}" for p in client.run(os.getpid).values())]
            warm_par = settings_for(
                root,
                f"{backend}-warm-dask",
                prefix=f"{backend}warmdask",
                runner="dask",
                address=address,
                **{**common, "epochs": 1},
            )
            with fan_out(warm_par, training_flow) as fanned:
                fanned(settings=warm_par, tickers=warm_tickers)
            print(
                f"{backend}: servers up, {args.workers} Dask workers started and warmed in "
                f"{time.perf_counter() - t0:.1f} s (mlflow {mlflow_server.url}, "
                f"prefect {prefect_server.url})",
                flush=True,
            )
            before = count_retries(retry_log), server_conflicts(mlflow_server, prefect_server)
            seconds, flow_runs = [], []
            for r in range(args.rounds):
                par = settings_for(
                    root,
                    f"{backend}-dask{r}",
                    prefix=f"{backend}{r}",
                    runner="dask",
                    address=address,
                    **common,
                )
                with fan_out(par, training_flow) as fanned:
                    took, run_id = timed_flow(
                        f"{backend} round {r + 1}: dask ({args.workers} workers)",
                        fanned,
                        par,
                        tickers,
                    )
                seconds.append(took)
                flow_runs.append(run_id)
            reruns = prefect_reruns(flow_runs)
        return {
            "seconds": seconds,
            "noted": count_retries(retry_log) - before[0],
            "reruns": reruns,
            "conflicts": server_conflicts(mlflow_server, prefect_server) - before[1],
        }
    finally:
        os.environ.pop(RETRY_LOG_ENV, None)
        # This process's Prefect event and log workers keep the first server's URL: flush
        # them to this backend's server and stop them, so the next backend gets new ones.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        EventsWorker.drain_all(timeout=30)
        APILogWorker.drain_all(timeout=30)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        for server in (prefect_server, mlflow_server):
            if server is not None:
                server.stop()


def compare_backends(args, root: Path, tickers: list[str]) -> None:
    from pipelines.servers import start_postgres

    backends = ["sqlite", "postgres"] if args.backend == "postgres" else ["sqlite"]
    print(
        f"{args.tickers} tickers x {args.rows} days, 1 LSTM layer x 16 units, lookback 30, "
        f"{args.epochs} epochs, batch 32, no backtest, 10 MC samples; Dask {args.workers} "
        f"worker processes x 1 thread; backends: {', '.join(backends)}"
    )
    print(f"work folder: {root}")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    postgres = start_postgres(databases=("mlflow", "prefect")) if "postgres" in backends else None
    results = {}
    try:
        for backend in backends:
            results[backend] = fan_out_on(backend, args, root, tickers, postgres)
    finally:
        if postgres is not None:
            postgres.stop()
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for backend, r in results.items():
        times = ", ".join(f"{t:.1f}" for t in r["seconds"])
        print(
            f"{backend}: fan-out {sum(r['seconds']) / len(r['seconds']):.1f} s mean over "
            f"{len(r['seconds'])} round(s) ({times}); retries: {r['noted']} noted by the "
            f"pipeline, {r['reruns']} Prefect task re-runs, {r['conflicts']} database-conflict "
            "lines in the server logs"
        )
    if len(results) == 2:
        pg, lite = (sum(results[b]["seconds"]) for b in ("postgres", "sqlite"))
        print(f"postgres / sqlite: {pg / lite:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Dask worker processes (default 2; 4 with --backend)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating sequential/dask rounds (default 2)"
    )
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgres"],
        default=None,
        help="fan out against servers on this database (postgres: compared with sqlite)",
    )
    args = parser.parse_args()
    if args.workers is None:
        args.workers = 4 if args.backend else 2

    root = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-fanout-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    logging.getLogger("pipelines").setLevel(logging.WARNING)

    from prefect.task_runners import ThreadPoolTaskRunner

    from pipelines.flows import fan_out, training_flow
    from pipelines.servers import prefect_api

    tickers = [f"T{i:02d}" for i in range(args.tickers)]
    common = {"tracking_uri": args.tracking_uri, "epochs": args.epochs, "workers": args.workers}
    ingest_tickers(root, tickers, args.rows, common)
    if args.backend:
        compare_backends(args, root, tickers)
        return

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

        sequential = training_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))

        def timed(label: str, flow_obj, settings) -> float:
            return timed_flow(label, flow_obj, settings, tickers)[0]

        t0 = time.perf_counter()
        cluster, client = local_cluster(args.workers)
        t_seq, t_par = [], []
        try:
            threads = client.run(warm_up, warm, args.rows)
            # One untimed 1-epoch flow per runner on the warm-up tickers: the first flow
            # through each runner pays one-off costs (the Dask client's first submissions,
            # pickling the task) that are not per ticker.
            warm_tickers = [
                f"W{os.getpid()}",
                *(f"W{pid}" for pid in client.run(os.getpid).values()),
            ]
            one_epoch = {**common, "epochs": 1}
            address = cluster.scheduler_address
            warm_seq = settings_for(
                root, "warm-seq", prefix="warmseq", runner="thread", address="null", **one_epoch
            )
            warm_par = settings_for(
                root, "warm-dask", prefix="warmdask", runner="dask", address=address, **one_epoch
            )
            sequential(settings=warm_seq, tickers=warm_tickers)
            with fan_out(warm_par, training_flow) as fanned:
                fanned(settings=warm_par, tickers=warm_tickers)
            print(
                f"dask cluster: {args.workers} worker processes x 1 thread, started and warmed "
                f"(plus one untimed flow per runner) in {time.perf_counter() - t0:.1f} s "
                f"(TF threads per worker: {sorted(threads.values())})"
            )
            for r in range(args.rounds):
                # Fresh registered-model names per phase: every phase does the same work.
                seq = settings_for(
                    root, f"seq{r}", prefix=f"seq{r}", runner="thread", address="null", **common
                )
                par = settings_for(
                    root, f"dask{r}", prefix=f"dask{r}", runner="dask", address=address, **common
                )
                print(f"round {r + 1} of {args.rounds}:")
                t_seq.append(timed("sequential (1 process, one ticker at a time)", sequential, seq))
                with fan_out(par, training_flow) as fanned:
                    t_par.append(timed(f"dask ({args.workers} workers)", fanned, par))
                print(f"  round speed-up: {t_seq[-1] / t_par[-1]:.2f}x", flush=True)
        finally:
            client.close()
            cluster.close()
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"total over {args.rounds} round(s): sequential {sum(t_seq):.1f} s, dask {sum(t_par):.1f} s"
    )
    print(f"speedup: {sum(t_seq) / sum(t_par):.2f}x")


if __name__ == "__main__":
    main()
