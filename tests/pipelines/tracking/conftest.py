"""A copy of the session's tiny training run for each test module here, and a client on it."""

from __future__ import annotations

import pytest

from tests.pipelines.conftest import copy_of

MODEL = "test-TEST"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_tiny):
    """This module's copy of the session's tiny training run (the registry tests register
    and promote more versions)."""
    with copy_of(trained_tiny, tmp_path_factory.mktemp("tracking") / "project") as settings:
        yield settings, trained_tiny.summary.results[0]


@pytest.fixture
def client(trained):
    from mlflow import MlflowClient

    from pipelines import tracking

    tracking.connect(trained[0])
    return MlflowClient()
