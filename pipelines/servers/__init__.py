"""Local servers on 127.0.0.1 for tests, benchmarks and the Dask fan-out: MLflow tracking, MLflow
model serving and Prefect (:mod:`.process`), and a throwaway PostgreSQL cluster
(:mod:`.postgres`)."""

from pipelines.servers.postgres import (
    POSTGRES_HOWTO,
    POSTGRES_OS_USER,
    PostgresCluster,
    postgres_bin,
    start_postgres,
)
from pipelines.servers.process import (
    BIN,
    HOST,
    ServerError,
    ServerProcess,
    child_env,
    free_port,
    http_ok,
    prefect_api,
    start_mlflow_server,
    start_model_server,
    start_prefect_server,
)

__all__ = [
    "BIN",
    "HOST",
    "POSTGRES_HOWTO",
    "POSTGRES_OS_USER",
    "PostgresCluster",
    "ServerError",
    "ServerProcess",
    "child_env",
    "free_port",
    "http_ok",
    "postgres_bin",
    "prefect_api",
    "start_mlflow_server",
    "start_model_server",
    "start_postgres",
    "start_prefect_server",
]
