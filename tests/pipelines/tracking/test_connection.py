"""A tracking server that stops answering in the middle of a command: MLflow's client errors
become one ServerStopped line naming the server and why (the CLI's end-to-end check is in
tests/reliability/test_server_faults.py)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def no_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")


def _get_run(uri: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(uri, uri).get_run("0" * 32)


def test_a_refused_connection_is_one_line_naming_the_server(no_retries, monkeypatch):
    from pipelines.tracking import ServerStopped, server_answers

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr("pipelines.tracking.connection._tracking_uri", lambda: uri)
    with pytest.raises(ServerStopped) as caught, server_answers():
        _get_run(uri)
    # urllib3's NewConnectionError is a ConnectTimeoutError: the socket's reason wins
    assert str(caught.value).startswith(
        f"tracking server {uri} stopped answering (connection refused); start it again"
    )
    assert caught.value.__suppress_context__  # one line: no chained traceback
    # a task's error passing another task's decorator keeps the server and reason
    with pytest.raises(ServerStopped) as again, server_answers():
        server_answers()(_get_run)(uri)
    assert (again.value.uri, again.value.reason) == (uri, "connection refused")


def test_server_stopped_says_whose_run_and_what_is_left_and_pickles():
    """The line the training's caller words (flows.training.map_tickers), the same after a
    Dask worker sends it back pickled."""
    import pickle

    from pipelines.tracking import ServerStopped

    said = ServerStopped("http://h:1", "connection refused", "A's run", "nothing was registered")
    assert str(said).startswith(
        "tracking server http://h:1 stopped answering during A's run (connection refused): "
        "nothing was registered; start it again"
    )
    back = pickle.loads(pickle.dumps(said))
    assert type(back) is ServerStopped and str(back) == str(said)
    assert (back.uri, back.reason) == (said.uri, said.reason)


def test_a_server_that_accepts_but_never_answers_is_no_answer_in_time(no_retries, monkeypatch):
    from pipelines.tracking import ServerStopped, server_answers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setattr("pipelines.tracking.connection._tracking_uri", lambda: uri)
        late = pytest.raises(ServerStopped, match=r"stopped answering \(no answer in time\)")
        with late, server_answers():
            _get_run(uri)


def test_the_health_probe_and_the_client_word_a_dropped_connection_alike(no_retries, monkeypatch):
    """One classifier (pipelines.errors.no_answer): a server that accepts and hangs up is
    "connection reset" to the /health probe before a command (servers.process.no_answer_from)
    and to MLflow's client in the middle of one (ServerStopped)."""
    import threading

    from pipelines.servers.process import no_answer_from
    from pipelines.tracking import ServerStopped, server_answers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.2)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        done = threading.Event()

        def hang_up() -> None:
            while not done.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:  # a timeout: look at `done` again
                    continue
                with conn:
                    conn.recv(65536)  # the request, never answered

        server = threading.Thread(target=hang_up, daemon=True)
        server.start()
        try:
            assert no_answer_from(f"{uri}/health", timeout=5) == "connection reset"
            monkeypatch.setattr("pipelines.tracking.connection._tracking_uri", lambda: uri)
            dropped = pytest.raises(ServerStopped, match=r"stopped answering \(connection reset\)")
            with dropped, server_answers():
                _get_run(uri)
        finally:
            done.set()
            server.join()


def test_other_errors_pass_through():
    from pipelines.errors import PipelineError
    from pipelines.tracking import server_answers

    with pytest.raises(ValueError), server_answers():
        raise ValueError("not the server's")
    with pytest.raises(PipelineError, match="bad input"), server_answers():
        raise PipelineError("bad input")
    with pytest.raises(KeyboardInterrupt), server_answers():
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "call", ["start_run", "log_params", "log_dataset", "end_run", "artifact_uri"]
)
def test_every_call_of_a_training_run_names_a_server_that_stopped(no_retries, tmp_path, call):
    """Not only the tasks: the run's own MLflow calls in flows.training.train_one say so too."""
    import mlflow
    import pandas as pd

    from pipelines import tracking
    from pipelines.config import load_settings
    from tests.pipelines.conftest import TINY_CONFIG

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    (tmp_path / "mlflow.yaml").write_text(TINY_CONFIG, encoding="utf-8")
    settings = load_settings(tmp_path / "mlflow.yaml", env={})
    frame = pd.DataFrame({"date": pd.to_datetime(["2020-01-02"]), "open": [1.0]})
    calls = {
        "start_run": lambda: tracking.start_run(settings, "1", "TEST", {}),
        "log_params": lambda: tracking.log_params("0" * 32, settings),
        "log_dataset": lambda: tracking.log_dataset(
            "0" * 32, frame, source="x", digest="d", name="n"
        ),
        "end_run": lambda: tracking.end_run("0" * 32, True),
        "artifact_uri": lambda: tracking.artifact_uri("0" * 32),
    }
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.raises(tracking.ServerStopped, match="connection refused"):
            calls[call]()
    finally:
        mlflow.set_tracking_uri(previous)
