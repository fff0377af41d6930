"""Start and stop local servers on 127.0.0.1: MLflow tracking, MLflow model serving, Prefect,
(a throwaway PostgreSQL cluster to back them is in :mod:`.postgres`).

Used by the end-to-end tests (tests/servers), the fan-out benchmark and the Dask fan-out
mode (which needs a real Prefect API: without one every Dask worker starts its own).

Every server runs in its own process group on a free port, with its output in a log file;
`start_*` waits until the health endpoint answers (generous timeouts, the log's tail in the
error) and `stop()` terminates the whole group (SIGTERM, then SIGKILL), also on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the virtualenv's bin: mlflow, prefect, uvicorn, lstm-pipeline

# Quiet, offline-friendly defaults for every child process (the caller's environment wins).
_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


class ServerError(RuntimeError):
    """A server did not start (or died); the message carries the tail of its log."""


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """os.environ + quiet defaults + `extra`, with the venv's bin first on PATH."""
    env = dict(os.environ)
    for k, v in _QUIET.items():
        env.setdefault(k, v)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for k in drop:
        env.pop(k, None)
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def no_answer_from(url: str, timeout: float) -> str | None:
    """Why a GET of `url` got no HTTP answer within `timeout` seconds (e.g. "connection
    refused", as :func:`pipelines.errors.no_answer` words it; else the error's own words);
    None when the server answered, whatever its status."""
    from pipelines.errors import no_answer

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: the caller's own requests say what is wrong
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return no_answer(exc) or str(getattr(exc, "reason", exc))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ServerProcess:
    """One started server: its process (group leader), URL, health URL and log file."""

    name: str
    args: list[str]
    url: str
    health_url: str
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env or None,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() reaches the children
            )
        finally:
            log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = 120.0, interval: float = 0.5) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc else None
                raise ServerError(
                    f"{self.name} exited with code {code} before {self.health_url} answered; "
                    f"command: {' '.join(self.args)}\nlog {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if http_ok(self.health_url):
                return self
            time.sleep(interval)
        self.stop()
        raise ServerError(
            f"{self.name} did not answer {self.health_url} within {timeout:.0f} s; "
            f"command: {' '.join(self.args)}\nlog {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def signal(self, sig: int) -> None:
        """Send `sig` to the server's whole process group."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after `timeout` seconds."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Children (uvicorn/gunicorn workers) may outlive the leader: clear the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _folder_and_port(folder: Path, port: int | None) -> tuple[Path, int]:
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, port or free_port()


def _launch(
    name: str,
    args: list[str],
    folder: Path,
    port: int,
    paths: tuple[str, str, str],
    env: dict[str, str],
    timeout: float,
    wait: bool,
) -> ServerProcess:
    """Start ``args`` in ``folder``; ``paths``: the URL's path, the health check's, the log's
    file name.  With ``wait``, return once healthy (stopped again if it never is)."""
    url_path, health_path, log_name = paths
    server = ServerProcess(
        name=name,
        args=args,
        url=f"http://{HOST}:{port}{url_path}",
        health_url=f"http://{HOST}:{port}{health_path}",
        log_path=folder / log_name,
        env=env,
        cwd=folder,
    )
    server.start()
    if not wait:  # the caller calls wait_healthy() (e.g. to start several at once)
        return server
    try:
        return server.wait_healthy(timeout)
    except BaseException:
        server.stop()
        raise


def start_mlflow_server(
    workdir: Path,
    port: int | None = None,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    backend_store_uri: str | None = None,
    artifacts_destination: Path | None = None,
) -> ServerProcess:
    """`mlflow server` with a SQLite backend and a local artifact root under `workdir`.

    One worker and no job runners (2 processes, ~0.5 GB). Clients write artifacts
    directly to the local root (same machine), as with a shared file system.

    `backend_store_uri` replaces the SQLite file (e.g. ``postgresql+psycopg://...``);
    `artifacts_destination` makes the server proxy artifacts to that folder: runs record
    ``mlflow-artifacts:/`` locations and clients need HTTP only.
    """
    workdir, port = _folder_and_port(workdir, port)
    if artifacts_destination is not None:
        artifacts = Path(artifacts_destination).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        storage = ["--artifacts-destination", str(artifacts)]
    else:
        artifacts = workdir / "artifacts"
        artifacts.mkdir(exist_ok=True)
        storage = ["--default-artifact-root", artifacts.as_uri()]
    args = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        *storage,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    environ = child_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    paths = ("", "/health", "mlflow-server.log")
    return _launch("mlflow server", args, workdir, port, paths, environ, timeout, wait)


def start_prefect_server(
    home: Path,
    port: int | None = None,
    timeout: float = 150.0,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    nice: int = 0,
    database_url: str | None = None,
) -> ServerProcess:
    """`prefect server start` with its database under `home` (its PREFECT_HOME).

    ``nice`` > 0 lowers its CPU priority (POSIX `nice`), for a server sharing the machine
    with CPU-bound work it only records. `database_url` (``postgresql+asyncpg://...``)
    replaces the SQLite database.
    """
    home, port = _folder_and_port(home, port)
    args = [
        *(["nice", "-n", str(nice)] if nice > 0 and os.name == "posix" else []),
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
        "--analytics-off",
    ]
    database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    # The server must not point at another API, nor at an ephemeral one.
    environ = child_env(
        {"PREFECT_HOME": str(home), **database, **(env or {})}, drop=("PREFECT_API_URL",)
    )
    paths = ("/api", "/api/health", "prefect-server.log")
    return _launch("prefect server", args, home, port, paths, environ, timeout, wait)


def start_model_server(
    model_uri: str,
    tracking_uri: str,
    workdir: Path,
    port: int | None = None,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> ServerProcess:
    """`mlflow models serve -m URI --env-manager local` (the venv's bin is put on PATH)."""
    workdir, port = _folder_and_port(workdir, port)
    args = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        HOST,
        "-p",
        str(port),
        "-w",
        "1",
    ]
    environ = child_env({"MLFLOW_TRACKING_URI": tracking_uri, **(env or {})})
    paths = ("", "/ping", "model-server.log")
    return _launch("mlflow models serve", args, workdir, port, paths, environ, timeout, wait)


@contextlib.contextmanager
def prefect_api(home: Path, url: str | None = None, timeout: float = 150.0) -> Iterator[str]:
    """Yield a Prefect API URL: `url`, else PREFECT_API_URL, else a server started (and
    stopped) here with its database under `home`.

    A server started here only records the runs of work on this same machine (Dask
    fan-out), so it runs at lower CPU priority (nice 10): its bookkeeping waits for idle
    cycles instead of taking them from training (benchmarks/bench_fanout.py).

    While the block runs, PREFECT_API_URL is set in os.environ (so processes started in it,
    e.g. Dask workers, inherit it) and in Prefect's settings context of this process.
    """
    previous = os.environ.get("PREFECT_API_URL")
    url = url or previous
    server = None if url else start_prefect_server(home, timeout=timeout, nice=10)
    url = url or server.url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if server is not None:
            server.stop()
